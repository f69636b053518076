"""Per-rank tensors gathered on rank 0 (a collective every rank calls)."""

from __future__ import annotations

from typing import Any

import torch


def gather_to_rank_0(tensors: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]] | None:
    """Every rank's tensor dict on rank 0 (rank order), None elsewhere.

    One flat tensor gather when all ranks hold the same names and shapes (NxD layers shard evenly);
    pickled objects otherwise, which is several times slower.
    """
    import torch.distributed as dist

    layout = [(name, tuple(tensor.shape)) for name, tensor in tensors.items()]
    layouts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(layouts, layout)
    root = dist.get_rank() == 0
    if any(other != layout for other in layouts):
        found: list[Any] | None = [None] * dist.get_world_size() if root else None
        dist.gather_object(tensors, found, dst=0)
        return found
    flat = torch.cat([t.reshape(-1) for t in tensors.values()]) if tensors else torch.zeros(0)
    buffers = [torch.empty_like(flat) for _ in layouts] if root else None
    dist.gather(flat, buffers, dst=0)
    if buffers is None:
        return None
    sizes = [t.numel() for t in tensors.values()]
    return [
        {name: part.view(shape) for (name, shape), part in zip(layout, buffer.split(sizes))}
        for buffer in buffers
    ]
