"""The one on-rank harness every check runs through.

For one launcher call (the jobs of one TP size) every rank: mounts the model package once; for each job
clears the deviation record, resets NxD's per-process kv-shared group, runs `check.on_rank(package, job)`
and captures its error; then exchanges, in one collective, each rank's error and the deviations it went
through. Rank 0 returns one `RankReport` per job, the other ranks None.

A step that raised on every rank alike (`rank_steps.StepFailed`, or a package that does not import) leaves
every rank in step. An exception raised on one rank outside a `rank_step`, while another rank waits in a
collective, cannot be exchanged: the call then hangs and the launcher's timeout makes it a FAIL of each
job of the call (`dispatch.py`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .job_errors import JobError
from .protocol import Check, RankReport
from .rank_steps import StepFailed, error_of, is_rank_zero


def run_on_rank(check: Check[Any, Any, Any], model_dir: str, jobs: Sequence[Any]) -> list[RankReport] | None:
    """Every job of one launcher call on this rank (see the module docstring)."""
    from conformance.model_package import mount

    try:
        package, unmount = mount(Path(model_dir))
    except Exception as exc:
        error = error_of("mounting the package", exc)
        reports = [RankReport(None, error) for _ in jobs]
        return reports if is_rank_zero() else None
    try:
        reports = [_run_job(check, package, job) for job in jobs]
    finally:
        unmount()
    return reports if is_rank_zero() else None


def _run_job(check: Check[Any, Any, Any], package: Any, job: Any) -> RankReport:
    import torch.distributed as dist
    from neuronx_distributed.parallel_layers import parallel_state

    from conformance.backends.reference import deviation_record

    deviation_record.clear()
    # NxD keeps one kv-shared group size per process (until destroy_kv_group); each job builds a new model.
    parallel_state.destroy_kv_group()
    start = time.perf_counter()
    value: Any = None
    error: JobError | None = None
    try:
        value = check.on_rank(package, job)
    except StepFailed as failed:
        error = failed.error
    except Exception as exc:  # this rank alone (rank 0's comparison, or a bug): recorded, then exchanged
        error = error_of(f"the {check.name} job", exc, rank=dist.get_rank())
    seconds = time.perf_counter() - start
    exchanged: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(exchanged, (error, deviation_record.noted()))
    first = next((found for found, _ in exchanged if found is not None), None)
    deviations = tuple(sorted({deviation for _, noted in exchanged for deviation in noted}))
    return RankReport(None if first is not None else value, first, deviations, seconds)
