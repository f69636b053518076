"""Local ranks taking turns at a memory-heavy step (`TrainingNeuronConfig.num_local_ranks_per_step`, NxD's
`save_checkpoint(num_workers=...)`); shared by the reference NxD and the reference host.

Loading and saving read or write whole files per rank; running them a few local ranks at a time bounds
the host memory they use together. Every rank meets every barrier, so none hangs when another fails.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

import torch.distributed as dist


def local_topology() -> tuple[int, int]:
    """(local rank, local world size) as torchrun exports them, else the global ones."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    return int(os.environ.get("LOCAL_RANK", rank)), int(os.environ.get("LOCAL_WORLD_SIZE", world))


def barrier() -> None:
    """`dist.barrier()` when a process group exists; nothing in a single process."""
    if dist.is_initialized():
        dist.barrier()


def by_rank_groups(ranks_per_step: int, fn: Callable[[], Any]) -> Any:
    """Run `fn` on the local ranks `ranks_per_step` at a time (all at once if <= 0), every rank meeting at a
    barrier after each step. An exception is re-raised after the last barrier, so other ranks never hang here.
    """
    local_rank, local_world = local_topology()
    step = ranks_per_step if ranks_per_step > 0 else local_world
    result, error = None, None
    for worker in range(math.ceil(local_world / step)):
        if local_rank // step == worker:
            try:
                result = fn()
            except BaseException as exc:  # re-raised below, once every rank has passed the barriers
                error = exc
        barrier()
    if error is not None:
        raise error
    return result
