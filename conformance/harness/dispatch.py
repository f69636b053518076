"""Jobs to launcher calls: the jobs of each (TP, EP) size in one call on T x EP ranks, smallest first.

Expert parallelism (a job with `ep_size` > 1, mixture-of-experts models) builds NxD's expert-parallel groups
before the job runs (`run_tensor_parallel(..., ep_size=)`): the T x EP ranks are EP data-parallel groups of T
tensor-parallel ranks each, the experts split over the EP ranks.

A call that fails as a whole (a rank crashed, hung past the timeout, or the launcher could not start:
`RankCallFailed`) gives each of its jobs a `RankReport` whose error says so, with the launcher's message
and the rank's traceback or stacks; the other sizes still run.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .job_errors import JobError
from .on_rank import run_on_rank
from .protocol import Check, RankReport, job_ep_size, size_label

if TYPE_CHECKING:
    from conformance.checks import RunSettings


def run_jobs(
    check: Check[Any, Any, Any], package_dir: str | Path, jobs: Sequence[Any], settings: RunSettings
) -> list[RankReport]:
    """One `RankReport` per job, in the order of `jobs`."""
    from conformance.launcher import RankCallFailed
    from conformance.tensor_parallel_run import run_tensor_parallel

    model_dir = str(Path(package_dir).resolve())
    found: dict[int, RankReport] = {}
    for tp_size, ep_size in sorted({(int(job.tp_size), job_ep_size(job)) for job in jobs}):
        indices = [
            i for i, job in enumerate(jobs) if (int(job.tp_size), job_ep_size(job)) == (tp_size, ep_size)
        ]
        batch = [jobs[i] for i in indices]
        start = time.perf_counter()
        try:
            reports = run_tensor_parallel(
                run_on_rank,
                tp_size,
                check,
                model_dir,
                batch,
                ep_size=ep_size,
                backend=settings.backend,
                timeout=settings.timeout,
                device=settings.device,
                repo=settings.repo,
                host=settings.host,
            )[0]
        except RankCallFailed as failure:
            share = (time.perf_counter() - start) / len(batch)
            error = call_failure(tp_size, failure, ep_size)
            reports = [RankReport(None, error, seconds=share) for _ in batch]
        found.update(zip(indices, reports))
    return [found[i] for i in range(len(jobs))]


def call_failure(tp_size: int, failure: BaseException, ep_size: int = 1) -> JobError:
    """The error of every job of a launcher call that failed as a whole."""
    text = str(failure)
    first = text.strip().splitlines()[0] if text.strip() else type(failure).__name__
    return JobError(
        step=f"the rank call at {size_label(tp_size, ep_size)}",
        exception_type=type(failure).__name__,
        message=first,
        traceback=text,
        crashed=True,
    )
