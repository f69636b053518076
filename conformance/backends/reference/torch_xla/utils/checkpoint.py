"""`torch_xla.utils.checkpoint.checkpoint`: activation checkpointing as torch_xla does it, on torch.

torch_xla's checkpoint is torch's reentrant implementation plus an XLA optimization barrier on the saved
inputs (the barrier only stops the XLA compiler from fusing the recomputation away; it changes no value).
So here it is `torch.utils.checkpoint.checkpoint(..., use_reentrant=True)`, with torch_xla's contract:
`use_reentrant` defaults to True and False is refused, the only keyword is `preserve_rng_state` (default
True: the recomputation draws the same dropout masks), and, as on Trainium, a segment none of whose tensor
inputs requires grad gives no gradient to the parameters inside it.

The reentrant backward recomputes `function` inside autograd, where the torch function mode that maps the
"xla" device to the rank's (`xla_device.XlaDeviceOnRank`) is not active; the segment therefore runs under
its own `XlaDeviceOnRank`, so that a tensor created on "xla" during the recomputation lands on the rank's
device as it did in the forward.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch.utils.checkpoint

from ...xla_device import XlaDeviceOnRank


def checkpoint(function: Callable[..., Any], *args: Any, use_reentrant: bool = True, **kwargs: Any) -> Any:
    """`function(*args)` with its activations recomputed in the backward pass (torch_xla's signature)."""
    preserve_rng_state = kwargs.pop("preserve_rng_state", True)
    if kwargs:
        raise ValueError("Unexpected keyword arguments: " + ",".join(kwargs))
    if not use_reentrant:
        raise ValueError("XLA currently does not support use_reentrant==False")

    def on_the_rank_device(*inputs: Any) -> Any:
        with XlaDeviceOnRank():
            return function(*inputs)

    return torch.utils.checkpoint.checkpoint(
        on_the_rank_device, *args, use_reentrant=True, preserve_rng_state=preserve_rng_state
    )
