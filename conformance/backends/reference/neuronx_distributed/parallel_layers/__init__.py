"""Tensor-parallel building blocks (`neuronx_distributed.parallel_layers`).

Exports what NxD's package exports, where this backend implements it: the parallel layers, the four
TP-region mappings, the vocab-parallel cross entropy, gradient clipping, mesh initialisation and the
parameter-attribute helpers (not the legacy `load`/`save`, the XLA RNG tracker or the device helpers).
"""

from . import parallel_state
from .grads import clip_grad_norm
from .layers import ColumnParallelLinear, ParallelEmbedding, RowParallelLinear
from .loss_functions import parallel_cross_entropy
from .mappings import (
    copy_to_tensor_model_parallel_region,
    gather_from_tensor_model_parallel_region,
    reduce_from_tensor_model_parallel_region,
    scatter_to_tensor_model_parallel_region,
)
from .parallel_state import initialize_model_parallel
from .utils import (
    copy_tensor_model_parallel_attributes,
    set_defaults_if_not_set_tensor_model_parallel_attributes,
    set_tensor_model_parallel_attributes,
)

__all__ = [
    "ColumnParallelLinear",
    "ParallelEmbedding",
    "RowParallelLinear",
    "clip_grad_norm",
    "copy_tensor_model_parallel_attributes",
    "copy_to_tensor_model_parallel_region",
    "gather_from_tensor_model_parallel_region",
    "initialize_model_parallel",
    "parallel_cross_entropy",
    "parallel_state",
    "reduce_from_tensor_model_parallel_region",
    "scatter_to_tensor_model_parallel_region",
    "set_defaults_if_not_set_tensor_model_parallel_attributes",
    "set_tensor_model_parallel_attributes",
]
