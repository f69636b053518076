"""Tensor-parallel layers (`neuronx_distributed.parallel_layers.layers`).

PLACEHOLDER: only `create_local_weight` is here yet; the layers are being written.
"""

from __future__ import annotations

import torch

from .parallel_state import get_tensor_model_parallel_rank, get_tensor_model_parallel_size
from .utils import divide


def create_local_weight(
    full_weight: torch.Tensor,
    partition_dim: int,
    per_partition_size: int,
    stride: int,
    out_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """This TP rank's shard of `full_weight`, by NxD's strided rule.

    The full tensor is cut along `partition_dim` into chunks of `per_partition_size / stride`; rank r takes
    chunks r, r + T, r + 2T, ... and concatenates them. So local index j of rank r is global index
    `(r + (j // c) * T) * c + j % c` with `c = per_partition_size / stride`. Rank and T are the global TP
    rank and size. `out_weight`, when given, is written in place (always, deviation NXD-16).
    """
    world = get_tensor_model_parallel_size()
    rank = get_tensor_model_parallel_rank()
    chunk = divide(per_partition_size, stride)
    pieces = torch.split(full_weight, chunk, dim=partition_dim)
    if len(pieces) != world * stride or pieces[-1].shape[partition_dim] != chunk:
        raise AssertionError(
            f"dimension {partition_dim} of size {full_weight.shape[partition_dim]} does not hold "
            f"{world} x {per_partition_size} (tensor parallel size x per-partition size)"
        )
    local = torch.cat(pieces[rank::world], dim=partition_dim)
    if out_weight is None:
        return local
    with torch.no_grad():
        out_weight.copy_(local)
    return out_weight
