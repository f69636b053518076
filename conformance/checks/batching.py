"""The skeleton the checks share: a SKIP for a variant the catalogue cannot build, jobs grouped by TP size
with one launcher call per group, a failed call turned into a failure of each of its jobs, and on the ranks
the package mounted once for all the jobs of a call.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

from conformance.results import CheckResult, Status
from reference_models import variant
from reference_models.catalogue import Variant

from . import RunSettings
from .rank_errors import describe

Job = TypeVar("Job")
Outcome = TypeVar("Outcome")


def split_unbuildable(
    check: str,
    configurations: Sequence[Mapping[str, Any]],
    tolerance: str,
    tp_sizes: Callable[[Mapping[str, Any]], Iterable[int]],
) -> tuple[dict[int, CheckResult], list[tuple[int, dict[str, Any], Variant]]]:
    """The configurations whose variant the catalogue cannot build at one of `tp_sizes(configuration)`, as
    SKIP results by index; the others as (index, a copy of the configuration, the catalogue entry)."""
    skipped: dict[int, CheckResult] = {}
    buildable = []
    for index, configuration in enumerate(configurations):
        configuration = dict(configuration)
        entry = variant(configuration["variant"])
        sizes = sorted(set(tp_sizes(configuration)))
        refusals = [f"T={t}: {r}" for t in sizes if (r := entry.unsupported_reason(t))]
        if refusals:
            skipped[index] = CheckResult(
                check,
                configuration,
                Status.SKIP,
                reasons=[f"{entry.key} cannot be built at {'; '.join(refusals)} (parity checks the refusal)"],
                tolerance=tolerance,
            )
        else:
            buildable.append((index, configuration, entry))
    return skipped, buildable


def run_by_tp_size(
    on_rank: Callable[..., list[Outcome] | None],
    package_dir: str | Path,
    jobs: Sequence[Job],
    tp_size: Callable[[Job], int],
    failed: Callable[[Job, Exception, float], Outcome],
    settings: RunSettings,
    *extra: Any,
) -> list[tuple[Outcome, float]]:
    """`on_rank(package_dir, batch, *extra)` on T ranks for the jobs of each T, smallest T first.

    Returns, in the order of `jobs`, each job's outcome (rank 0's) and its share of its call's seconds.
    A call that fails as a whole (a rank crashed or hung: `RankCallFailed`) gives each of its jobs
    `failed(job, failure, share)`. `on_rank` must be a module-level function (it is sent to the ranks).
    """
    from conformance.launcher import RankCallFailed
    from conformance.tensor_parallel_run import run_tensor_parallel

    model_dir = str(Path(package_dir).resolve())
    found: dict[int, tuple[Outcome, float]] = {}
    for size in sorted({tp_size(job) for job in jobs}):
        indices = [i for i, job in enumerate(jobs) if tp_size(job) == size]
        batch = [jobs[i] for i in indices]
        start = time.perf_counter()
        try:
            outcomes = run_tensor_parallel(
                on_rank,
                size,
                model_dir,
                batch,
                *extra,
                backend=settings.backend,
                timeout=settings.timeout,
                device=settings.device,
                repo=settings.repo,
                host=settings.host,
            )[0]
            share = (time.perf_counter() - start) / len(batch)
        except RankCallFailed as failure:
            share = (time.perf_counter() - start) / len(batch)
            outcomes = [failed(job, failure, share) for job in batch]
        found.update((i, (outcome, share)) for i, outcome in zip(indices, outcomes))
    return [found[i] for i in range(len(jobs))]


def each_job_on_rank(
    model_dir: str,
    jobs: Sequence[Job],
    step: Callable[[ModuleType, Job], Outcome],
    mount_failed: Callable[[Job, str], Outcome],
) -> list[Outcome] | None:
    """On a rank: the package mounted once, `step(package, job)` for every job, then unmounted.

    Rank 0 returns the outcomes, the others None. A package that does not import gives each job
    `mount_failed(job, error)` (`error` as `rank_errors.describe` writes it); that happens on every rank
    alike, before any collective, so no rank waits for another.
    """
    import torch.distributed as dist

    from conformance.model_package import mount

    rank = dist.get_rank()
    try:
        package, unmount = mount(Path(model_dir))
    except Exception as exc:
        error = describe(exc)
        failed = [mount_failed(job, error) for job in jobs]
        return failed if rank == 0 else None
    try:
        outcomes = [step(package, job) for job in jobs]
    finally:
        unmount()
    return outcomes if rank == 0 else None
