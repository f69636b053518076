"""Run a function on N local ranks with torch.distributed initialised, like torchrun, for tests.

    from conformance.launcher import run_on_ranks

    def check():
        import torch, torch.distributed as dist
        t = torch.tensor([dist.get_rank()])
        dist.all_reduce(t)
        return t.item()

    assert run_on_ranks(check, 4) == [6, 6, 6, 6]

Rank workers are pooled and reused between calls; `shutdown_pools` (also run at exit) ends them. A rank
that raises, dies or hangs becomes `RankError`, `RankCrashed` or `RankTimeout` (all `RankCallFailed`,
a RuntimeError) and the pool is killed. See `run_on_ranks` for the full contract.
"""

from conformance.launcher.errors import (
    DeviceUnavailable,
    LaunchError,
    RankCallFailed,
    RankCrashed,
    RankError,
    RankTimeout,
)
from conformance.launcher.launch import run_on_ranks
from conformance.launcher.outcome import RankFailure, RankOutcome
from conformance.launcher.registry import pool_pids, shutdown_pools

__all__ = [
    "DeviceUnavailable",
    "LaunchError",
    "RankCallFailed",
    "RankCrashed",
    "RankError",
    "RankFailure",
    "RankOutcome",
    "RankTimeout",
    "pool_pids",
    "run_on_ranks",
    "shutdown_pools",
]
