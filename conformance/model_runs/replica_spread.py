"""How far each rank's copy of replicated tensors is from TP rank 0's (or data-parallel rank 0's), measured
on the ranks.

One broadcast of rank 0's tensors (flattened) and one MAX all-reduce of the per-name differences over the
tensor-parallel (or data-parallel) group: every rank learns, per name, `max |rank r - rank 0|` over all ranks (0.0 exactly
when every copy is bit-identical; NaN where they differ counts as infinity). A collective: every rank
calls it with the same names and shapes.
"""

from __future__ import annotations

import math

import torch


def replica_spreads(tensors: dict[str, torch.Tensor], over_data_parallel: bool = False) -> dict[str, float]:
    """`{name: max |rank r - rank 0|}` over the TP group, or with `over_data_parallel` over the
    data-parallel group (the ranks holding the same TP shard; with expert parallelism, the EP ranks)."""
    import torch.distributed as dist
    from neuronx_distributed.parallel_layers import parallel_state

    if not tensors:
        return {}
    if over_data_parallel:
        group = parallel_state.get_data_parallel_group()
        size = parallel_state.get_data_parallel_size()
    else:
        group = parallel_state.get_tensor_model_parallel_group()
        size = parallel_state.get_tensor_model_parallel_size()
    if size == 1:
        return dict.fromkeys(tensors, 0.0)
    names = list(tensors)
    local = torch.cat([tensors[name].detach().reshape(-1).to(torch.float64) for name in names])
    first = local.clone()
    dist.broadcast(first, src=dist.get_global_rank(group, 0), group=group)
    difference = (local - first).abs()
    same = (local == first) | (local.isnan() & first.isnan())
    difference = torch.where(same, torch.zeros_like(difference), difference.nan_to_num(nan=math.inf))
    spreads = torch.stack(
        [part.max() if part.numel() else part.new_zeros(()) for part in _split(difference, tensors, names)]
    )
    dist.all_reduce(spreads, op=dist.ReduceOp.MAX, group=group)
    return {name: float(value) for name, value in zip(names, spreads)}


def _split(
    flat: torch.Tensor, tensors: dict[str, torch.Tensor], names: list[str]
) -> tuple[torch.Tensor, ...]:
    return flat.split([tensors[name].numel() for name in names])
