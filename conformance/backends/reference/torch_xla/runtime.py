"""`torch_xla.runtime` (`xr`): the process facts optimum-neuron's host asks for, from torch.distributed."""

from __future__ import annotations

import torch.distributed as dist

from .core.xla_model import get_local_ordinal, get_ordinal


def global_ordinal() -> int:
    """The global rank."""
    return get_ordinal()


def local_ordinal() -> int:
    """The rank on this host."""
    return get_local_ordinal()


def world_size() -> int:
    """The number of ranks."""
    return dist.get_world_size() if dist.is_initialized() else 1
