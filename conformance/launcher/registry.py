"""Live pools, one per (world_size, device, env, worker_init), reused across calls and closed at exit."""

from __future__ import annotations

import atexit
import os
import threading
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass

from conformance.launcher.pool import SHUTDOWN_GRACE_S, RankPool
from conformance.launcher.source_map import SourceMap

MAX_LIVE_WORKERS = 16
"""Idle pools hold a torch interpreter per rank; beyond this many workers the least recently used go."""

STARTUP_TIMEOUT_S = 180.0
"""Budget for spawning a pool (import torch, rendezvous, worker_init), separate from the call's timeout."""


@dataclass(frozen=True)
class PoolKey:
    world_size: int
    device: str
    env: tuple[tuple[str, str], ...]
    worker_init: str | None
    """Digest of the cloudpickled worker_init, so equal hooks share a pool and different ones do not."""


_pools: OrderedDict[PoolKey, RankPool] = OrderedDict()
_retiring: list[RankPool] = []
"""Pools asked to exit (evicted, or their process group was destroyed) and not yet reaped."""
_owner_pid = os.getpid()
_atexit_registered = False

lock = threading.RLock()
"""Held for the whole of a call: ranks of different pools would only fight over the same cores."""


def pool_for(key: PoolKey, init_payload: bytes | None, init_source: SourceMap | None = None) -> RankPool:
    """The live pool for `key`, started now if there is none (call with `lock` held)."""
    global _atexit_registered
    _reap_retiring()
    pool = _pools.get(key)
    if pool is not None:
        dead = pool.dead_workers()
        if not dead:
            _pools.move_to_end(key)
            return pool
        warnings.warn(
            f"rank pool {key.world_size}x{key.device}: workers {dead} (rank: exit code) died while idle, "
            "after an earlier call; replacing the pool",
            RuntimeWarning,
            stacklevel=3,
        )
        discard(key, kill=True)
    _evict_for(key.world_size)
    pool = RankPool(key.world_size, key.device, dict(key.env), init_payload)
    pool.start(STARTUP_TIMEOUT_S, init_source)
    _pools[key] = pool
    if not _atexit_registered:
        atexit.register(shutdown_pools)
        _atexit_registered = True
    return pool


def discard(key: PoolKey, *, kill: bool) -> None:
    """Forget the pool for `key`: kill it now (after a failure), or ask it to exit without waiting.

    A pool asked to exit is reaped by a later `pool_for`, killed if it takes longer than SHUTDOWN_GRACE_S.
    """
    pool = _pools.pop(key, None)
    if pool is None:
        return
    if kill:
        pool.kill()
    else:
        pool.request_shutdown()
        _retiring.append(pool)


def shutdown_pools() -> None:
    """Close every pool: workers leave the process group and exit, stragglers are killed. Idempotent."""
    with lock:
        if os.getpid() != _owner_pid:  # a forked child must not shut down its parent's workers
            return
        pools = [*_pools.values(), *_retiring]
        _pools.clear()
        _retiring.clear()
        for pool in pools:  # all at once: each worker takes a moment to unload torch
            pool.request_shutdown()
        deadline = time.monotonic() + SHUTDOWN_GRACE_S
        for pool in pools:
            pool.finish_shutdown(deadline)


def pool_pids() -> list[int]:
    """Process ids of every live worker, pools in least-recently-used order, ranks in order within each."""
    with lock:
        return [pid for pool in _pools.values() for pid in pool.pids]


def _reap_retiring() -> None:
    now = time.monotonic()
    for pool in list(_retiring):
        exited = len(pool.dead_workers()) == pool.world_size
        if exited or now - (pool.shutdown_requested_at or now) > SHUTDOWN_GRACE_S:
            pool.kill()  # reaps the processes and frees the pipes, store and files
            _retiring.remove(pool)


def _evict_for(world_size: int) -> None:
    live = sum(p.world_size for p in _pools.values())
    while _pools and live + world_size > MAX_LIVE_WORKERS:
        key = next(iter(_pools))
        live -= key.world_size
        discard(key, kill=False)


def _forget_in_child() -> None:
    # The pools belong to the parent. Keep them referenced but unused: dropping them would run destructors
    # on pipes and a TCPStore whose threads did not survive the fork.
    global _pools, _retiring, _owner_pid, lock
    _inherited.append((_pools, _retiring))
    _pools, _retiring = OrderedDict(), []
    _owner_pid = os.getpid()
    lock = threading.RLock()


_inherited: list[tuple[OrderedDict[PoolKey, RankPool], list[RankPool]]] = []


os.register_at_fork(after_in_child=_forget_in_child)
