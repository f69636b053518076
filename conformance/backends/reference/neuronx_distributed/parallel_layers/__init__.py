"""Tensor-parallel building blocks (`neuronx_distributed.parallel_layers`).

Exports what NxD's package exports for model code: the four TP-region mappings and the vocab-parallel
cross entropy.
"""

from .loss_functions import parallel_cross_entropy
from .mappings import (
    copy_to_tensor_model_parallel_region,
    gather_from_tensor_model_parallel_region,
    reduce_from_tensor_model_parallel_region,
    scatter_to_tensor_model_parallel_region,
)

__all__ = [
    "copy_to_tensor_model_parallel_region",
    "gather_from_tensor_model_parallel_region",
    "parallel_cross_entropy",
    "reduce_from_tensor_model_parallel_region",
    "scatter_to_tensor_model_parallel_region",
]
