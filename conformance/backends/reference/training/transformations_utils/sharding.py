"""This tensor-parallel rank's shard of full tensors: NxD's strided split and the fused-linear layout."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from neuronx_distributed.parallel_layers.layers import create_local_weight
from neuronx_distributed.parallel_layers.parallel_state import get_tensor_model_parallel_size


def create_local_weight_with_padding(
    full_weight: torch.Tensor,
    partition_dim: int,
    stride: int,
    out_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """This TP rank's shard of `full_weight` along `partition_dim`, by NxD's strided rule.

    The name is optimum-neuron's; nothing is padded. A dimension that does not split into
    `tp_size * stride` equal pieces is a ValueError naming the sizes (deviation ON-05): the released
    function gives the last rank a shorter shard, which fails later with a shape mismatch.
    """
    tp_size = get_tensor_model_parallel_size()
    size = full_weight.shape[partition_dim]
    if size % (tp_size * stride):
        raise ValueError(
            f"dimension {partition_dim} of size {size} does not split into {tp_size} tensor-parallel shards "
            f"of {stride} equal pieces each (deviation ON-05: uneven shards are not padded); pick a tensor "
            "parallel size that divides it"
        )
    return create_local_weight(full_weight, partition_dim, size // tp_size, stride, out_weight=out_weight)


def create_local_fused_weight(
    tp_rank: int,
    tp_size: int,
    individual_weights: Sequence[torch.Tensor],
    partition_dim: int,
    fuse_axis: int,
    out_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """`cat_i(shard_r(W_i))` along `fuse_axis`, where shard r is chunk r of `W_i` along `partition_dim`.

    This is the layout of a fused column-parallel layer (`gate_up_proj`: rows `[gate_r ; up_r]`), the
    same one NxD's strided init gives. Every weight must split into `tp_size` equal chunks (ON-05).
    """
    pieces = []
    for index, weight in enumerate(individual_weights):
        size = weight.shape[partition_dim]
        if size % tp_size:
            raise ValueError(
                f"fused weight {index}: dimension {partition_dim} of size {size} does not split into "
                f"{tp_size} equal tensor-parallel shards (deviation ON-05)"
            )
        chunk = size // tp_size
        pieces.append(weight.narrow(partition_dim, tp_rank * chunk, chunk))
    with torch.no_grad():
        return torch.cat(pieces, dim=fuse_axis, out=out_weight)
