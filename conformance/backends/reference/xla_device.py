"""The "xla" device of optimum-neuron's released code, mapped to the rank's own device.

Released models create tensors on `device="xla"` (Llama's recomputed causal mask) and the host moves models
to `xm.xla_device()`. On the reference backend such a device is the rank's device: cpu with gloo, the rank's
GPU with nccl. `XlaDeviceOnRank` is a torch function mode that rewrites every "xla" device argument of a
torch call (factory functions, `Tensor.to`, ...) to that device, inside the block where it is active; torch
itself is not patched. `tensor_parallel_run` activates it around each call on the ranks.
"""

from __future__ import annotations

import re
from typing import Any

import torch
import torch.distributed as dist
from torch.overrides import TorchFunctionMode

_XLA_DEVICE = re.compile(r"xla(:\d+)?")


def rank_device() -> torch.device:
    """This rank's device: its GPU when the default group runs nccl, else the cpu."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _is_xla(value: Any) -> bool:
    if isinstance(value, torch.device):
        return value.type == "xla"
    return isinstance(value, str) and _XLA_DEVICE.fullmatch(value) is not None


class XlaDeviceOnRank(TorchFunctionMode):
    """Within the block, an "xla" device argument of any torch call means `device` (default: the rank's)."""

    def __init__(self, device: torch.device | None = None) -> None:
        super().__init__()
        self.device = device if device is not None else rank_device()

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        args = tuple(self.device if _is_xla(arg) else arg for arg in args)
        if kwargs and _is_xla(kwargs.get("device")):
            kwargs = {**kwargs, "device": self.device}
        return func(*args, **(kwargs or {}))
