"""Run a function on the ranks of a tensor-parallel mesh with a backend active.

This is what tests and checks call: it starts (or reuses) the rank processes through the launcher,
activates the backend in each, builds the model-parallel groups, runs the function and tears the groups
down again, whether the function passed or failed.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .backends import activate
from .launcher import run_on_ranks

RANK_LOG_LEVEL_ENV = "NXD_SCAFFOLD_RANK_LOG_LEVEL"
"""When set (e.g. ``ERROR``), log records below that level are dropped on the ranks: a conformance run keeps
its progress display readable and reports what matters in its results instead."""


def on_rank(
    backend: str,
    tp_size: int,
    pp_size: int,
    ep_size: int,
    fn: Callable[..., Any],
    *args: Any,
    **kwargs: Any,
) -> Any:
    """What every rank runs under either launcher: `fn(*args, **kwargs)` with the backend active, the
    model-parallel groups built (and torn down afterwards) and, on the reference backend, "xla" device
    arguments mapped to the rank's device. Bind the first five arguments with functools.partial."""
    level = os.environ.get(RANK_LOG_LEVEL_ENV)
    if level:
        logging.disable(logging.getLevelName(level.upper()) - 1)
    activate(backend)
    from neuronx_distributed.parallel_layers import parallel_state

    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=tp_size,
        pipeline_model_parallel_size=pp_size,
        expert_model_parallel_size=ep_size,
    )
    try:
        with _xla_device_on_rank(backend):
            return fn(*args, **kwargs)
    finally:
        parallel_state.destroy_model_parallel()


def _xla_device_on_rank(backend: str) -> contextlib.AbstractContextManager[object]:
    """On the reference backend, "xla" device arguments mean the rank's device (released optimum-neuron code
    creates tensors there); on Trainium the device is real."""
    if backend != "reference":
        return contextlib.nullcontext()
    from .backends.reference.xla_device import XlaDeviceOnRank

    return XlaDeviceOnRank()


def run_tensor_parallel(
    fn: Callable[..., Any],
    tp_size: int,
    *args: Any,
    world_size: int | None = None,
    pp_size: int = 1,
    ep_size: int = 1,
    backend: str = "reference",
    timeout: float = 120.0,
    device: str = "cpu",
    repo: Path | None = None,
    host: str = "reference",
    **kwargs: Any,
) -> list[Any]:
    """`fn(*args, **kwargs)` on every rank of a `world_size` mesh; results in rank order.

    `world_size` defaults to `tp_size * pp_size * ep_size`. With `ep_size > 1` the experts of NxD's MoE
    layers are split over expert-parallel ranks, which are data-parallel ranks as well (NxD's layout); a
    `TrainingNeuronConfig` created inside `fn` keeps these groups, as optimum-neuron's does.

    The reference backend runs on the kit's pooled launcher; the neuron backend on torchrun with the xla
    process group (`backends.neuron_launch`, the one place that knows what differs on Trainium), its ranks
    importing the training host of the optimum-neuron checkout `repo`. On the reference backend `host`
    chooses the kit's host (`reference`) or the host modules of the checkout `repo` (`checkout`).
    """
    world_size = world_size or tp_size * pp_size * ep_size
    if backend == "neuron":
        from .backends.neuron_launch import run_with_torchrun

        return run_with_torchrun(
            functools.partial(on_rank, backend, tp_size, pp_size, ep_size, fn),
            world_size,
            *args,
            timeout=timeout,
            repo=repo,
            **kwargs,
        )
    return run_on_ranks(
        functools.partial(on_rank, backend, tp_size, pp_size, ep_size, fn),
        world_size,
        *args,
        timeout=timeout,
        device=device,
        worker_init=functools.partial(activate, backend, *((repo, host) if host == "checkout" else ())),
        **kwargs,
    )
