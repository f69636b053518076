"""NXS031's helper: the slices of a per-head attention bias that belong to this rank's heads."""

import torch
from neuronx_distributed.parallel_layers.parallel_state import (
    get_tensor_model_parallel_rank,
    get_tensor_model_parallel_size,
)
from neuronx_distributed.parallel_layers.utils import divide


def heads_of_rank(bias: torch.Tensor, num_heads: int) -> torch.Tensor:
    """The slices of `bias` that belong to this rank's attention heads.

    `bias` holds one slice per head along its first dimension, alone `(heads, ...)` or after the batch
    `(batch * heads, ...)`. The attention's heads are sharded contiguously over the tensor-parallel ranks:
    rank r computes heads [r * heads / T, (r + 1) * heads / T) and adds their slices only.
    """
    if bias.shape[0] % num_heads != 0:
        raise ValueError(
            f"the attention bias of shape {tuple(bias.shape)} holds no slice per head of {num_heads} heads "
            "along its first dimension"
        )
    per_rank = divide(num_heads, get_tensor_model_parallel_size())
    start = get_tensor_model_parallel_rank() * per_rank
    by_head = bias.reshape(-1, num_heads, *bias.shape[1:])
    return by_head[:, start : start + per_rank].reshape(-1, *bias.shape[1:])
