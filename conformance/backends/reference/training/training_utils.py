"""Small training helpers of the host (`optimum.neuron.models.training.training_utils`)."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from ..torch_xla.utils.checkpoint import checkpoint as xla_checkpoint

_HOST_PACKAGE = __name__.rsplit(".", 1)[0]


def checkpoint_with_kwargs(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Activation checkpointing of `fn(*args, **kwargs)`: keyword arguments are bound with a partial.

    As the real host, through torch_xla's checkpoint (the reference backend's, `..torch_xla.utils.checkpoint`):
    reentrant, the RNG state restored for the recomputation, and a segment none of whose tensor inputs
    requires grad gives no gradient to the parameters inside it.
    """
    return xla_checkpoint(functools.partial(fn, **kwargs), *args)


def is_custom_modeling_model(model: torch.nn.Module) -> bool:
    """Whether `model` (or the base model of a PEFT model) is a training model of this host package."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    module = inspect.getmodule(type(base))
    return module is not None and module.__name__.startswith(_HOST_PACKAGE)


def is_logging_process() -> bool:
    """True on the rank that logs: DP rank 0, TP rank 0, last PP stage (or without torch.distributed)."""
    if not dist.is_initialized():
        return True
    from ..neuronx_distributed.parallel_layers import parallel_state

    if not parallel_state.model_parallel_is_initialized():
        return dist.get_rank() == 0
    return (
        parallel_state.get_data_parallel_rank() == 0
        and parallel_state.get_tensor_model_parallel_rank() == 0
        and parallel_state.get_pipeline_model_parallel_rank()
        == parallel_state.get_pipeline_model_parallel_size() - 1
    )
