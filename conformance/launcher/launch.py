"""`run_on_ranks`: run one function on every rank of a local torch.distributed job and gather the results."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Mapping
from typing import Any

from conformance.launcher import registry
from conformance.launcher.environment import checked_extra_env
from conformance.launcher.errors import DeviceUnavailable
from conformance.launcher.messages import Call, encode_call
from conformance.launcher.source_map import dumps_with_source_map

DEVICES = ("cpu", "cuda")


def run_on_ranks(
    fn: Callable[..., Any],
    world_size: int,
    *args: Any,
    timeout: float = 120.0,
    device: str = "cpu",
    env: Mapping[str, str] | None = None,
    worker_init: Callable[[], object] | None = None,
    before: Callable[[], object] | None = None,
    after: Callable[[], object] | None = None,
    **kwargs: Any,
) -> list[Any]:
    """Run ``fn(*args, **kwargs)`` once on each of `world_size` ranks; return the results in rank order.

    Each rank is a spawned process with torchrun's variables set (RANK, LOCAL_RANK, WORLD_SIZE,
    LOCAL_WORLD_SIZE, GROUP_RANK=0, MASTER_ADDR=127.0.0.1, MASTER_PORT, TORCHELASTIC_RUN_ID, ...),
    ``OMP_NUM_THREADS=1`` unless `env` says otherwise, plus `env`; the default process group is already
    initialised (gloo on cpu, nccl on cuda with one GPU per rank).

    `fn`, the arguments, `worker_init`, `before` and `after` travel with cloudpickle: closures and lambdas
    go by value, module-level functions by reference (their module must import in a fresh interpreter).
    Return values must pickle; tensors in them come back detached, on CPU and compact (a slice does not
    bring its whole storage along).

    Workers are pooled per (world_size, device, env, worker_init) and reused by later calls, so the process
    group and anything a call leaves in module state survive between calls. Use the hooks to reset it:
    ``before()`` runs on every rank before `fn`, ``after()`` after it (even when `fn` raises).
    ``worker_init()`` runs once per rank when the pool starts, after the process group is up; pools are
    keyed by its cloudpickled bytes, so equal callables (an equal functools.partial too) share a pool.

    `timeout` bounds the call itself; starting a new pool has its own budget (`registry.STARTUP_TIMEOUT_S`).
    If any rank raises, dies or is still running at the timeout, the pool is killed (children included)
    and `RankError`, `RankCrashed` or `RankTimeout` is raised within about `timeout` + 2 s; the next call
    starts a fresh pool. Calls are serialised across threads. Arguments for `fn` that share a name with
    this function's keywords must be bound with functools.partial. Workers are spawned, so they import the
    caller's main module again: a script that calls this needs an ``if __name__ == "__main__":`` guard.

    Raises ValueError/TypeError for bad arguments and `DeviceUnavailable` when ``device="cuda"`` but fewer
    than `world_size` GPUs are visible.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {fn!r}")
    if not isinstance(world_size, int) or isinstance(world_size, bool) or world_size < 1:
        raise ValueError(f"world_size must be a positive int, got {world_size!r}")
    if not timeout > 0:
        raise ValueError(f"timeout must be positive, got {timeout!r}")
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    extra_env = checked_extra_env(env)
    if device == "cuda":
        _require_gpus(world_size)

    payload, source = encode_call(Call(fn=fn, args=args, kwargs=kwargs, before=before, after=after))
    init_payload, init_source = (None, None) if worker_init is None else dumps_with_source_map(worker_init)
    key = registry.PoolKey(
        world_size=world_size,
        device=device,
        env=tuple(sorted(extra_env.items())),
        worker_init=None if init_payload is None else hashlib.sha256(init_payload).hexdigest(),
    )
    label = f"{_name_of(fn)}()"
    with registry.lock:
        pool = registry.pool_for(key, init_payload, init_source)
        try:
            outcome = pool.run(payload, timeout=timeout, label=label, source=source)
        except BaseException:  # rank failures have killed the pool already; Ctrl-C and the like have not
            registry.discard(key, kill=True)
            raise
        if outcome.group_lost:  # fn destroyed the default group: the pool cannot serve another call
            registry.discard(key, kill=False)
    return [outcome.values[rank] for rank in range(world_size)]


def _name_of(fn: Callable[..., Any]) -> str:
    while isinstance(fn, functools.partial):
        fn = fn.func
    return getattr(fn, "__qualname__", type(fn).__qualname__)


def _require_gpus(world_size: int) -> None:
    import torch

    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if available < world_size:
        raise DeviceUnavailable(
            f"device='cuda' needs one GPU per rank: {world_size} ranks, {available} GPU(s) visible. "
            "Use device='cpu' (gloo) or fewer ranks."
        )
