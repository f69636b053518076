"""`torch_xla.core.xla_model` (`xm`): the helpers optimum-neuron's model and host code call, on torch.

The "xla" device is the rank's own device (cpu with gloo, the rank's GPU with nccl); ordinals and the world
come from torch.distributed (a process without it is rank 0 of 1); `mark_step` has no graph to cut, and
`rendezvous` is a barrier over the default group.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from ...xla_device import rank_device


def xla_device(n: int | None = None, devkind: str | None = None) -> torch.device:
    """The rank's device (torch_xla: this process's XLA device; `n` and `devkind` are not supported)."""
    if n is not None or devkind is not None:
        raise NotImplementedError("the reference backend has one device per rank: call xla_device()")
    return rank_device()


def get_ordinal() -> int:
    """The global rank."""
    return dist.get_rank() if dist.is_initialized() else 0


def get_local_ordinal() -> int:
    """The rank on this host (torchrun's LOCAL_RANK)."""
    return int(os.environ.get("LOCAL_RANK", get_ordinal()))


def mark_step(wait: bool = False) -> None:
    """Nothing to do: eager torch has no pending graph."""
    del wait


def rendezvous(tag: str, payload: bytes = b"", replicas: list[int] | None = None) -> list[bytes]:
    """A barrier over every rank (torch_xla returns the payloads; callers here pass none)."""
    del tag
    if replicas:
        raise NotImplementedError("the reference backend's rendezvous joins every rank")
    if dist.is_initialized():
        dist.barrier()
    return [payload]
