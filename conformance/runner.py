"""Run a profile's checks on one model package and collect a `RunResults`.

Each planned check is one call of its module's `run(package_dir, configurations, settings)`. A check that
raises — a crashed rank, a hung rank past the timeout, a bug in the check — becomes one FAIL per
configuration carrying the traceback or the stacks; the run goes on with the next check.
"""

from __future__ import annotations

import importlib
import os
import platform
import time
import traceback
from collections.abc import Callable, Iterable
from importlib import metadata
from pathlib import Path

from .checks import RunSettings
from .profiles import PlannedCheck, plan
from .results import CheckResult, RunResults, Status
from .tensor_parallel_run import RANK_LOG_LEVEL_ENV

CheckStarted = Callable[[PlannedCheck], None]
CheckFinished = Callable[[PlannedCheck, list[CheckResult]], None]


def run_model(
    model_type: str,
    package_dir: Path,
    *,
    profile: str = "quick",
    settings: RunSettings | None = None,
    checks: Iterable[str] | None = None,
    on_start: CheckStarted | None = None,
    on_finish: CheckFinished | None = None,
) -> RunResults:
    """Every check of `profile` on the package at `package_dir`, in order, each split by TP size where
    its configurations allow (`PlannedCheck.parts`); never raises for a model fault."""
    settings = settings or RunSettings()
    _prepare_environment(settings)
    run = RunResults(
        model_type=model_type,
        package_dir=str(package_dir),
        profile=profile,
        backend=settings.backend,
        environment=environment(settings),
    )
    start = time.perf_counter()
    for planned in plan(model_type, profile, checks):
        check_start = time.perf_counter()
        for part in planned.parts():
            if on_start is not None:
                on_start(part)
            results = run_check(part, package_dir, settings)
            run.results.extend(results)
            if on_finish is not None:
                on_finish(part, results)
        run.check_seconds[planned.check] = round(time.perf_counter() - check_start, 3)
    run.seconds = round(time.perf_counter() - start, 3)
    return run


def run_check(planned: PlannedCheck, package_dir: Path, settings: RunSettings) -> list[CheckResult]:
    """One planned check; an exception becomes a FAIL per configuration with its traceback."""
    start = time.perf_counter()
    try:
        module = importlib.import_module(f"{__package__}.checks.{planned.check}")
    except ModuleNotFoundError as error:
        if error.name != f"{__package__}.checks.{planned.check}":
            raise
        return _all(
            planned, Status.SKIP, f"the {planned.check} check is not available in this version", None, 0.0
        )
    try:
        results = module.run(package_dir, list(planned.configurations), settings)
    except Exception as error:  # a crashed or hung rank, or a bug: a FAIL, and the run goes on
        reason = _describe(error)
        return _all(planned, Status.FAIL, reason, traceback.format_exc(), time.perf_counter() - start)
    if len(results) != len(planned.configurations):
        reason = (
            f"the {planned.check} check returned {len(results)} results for {len(planned)} configurations"
        )
        return _all(planned, Status.FAIL, reason, None, time.perf_counter() - start)
    if settings.backend == "reference":
        for result in results:
            if settings.host == "checkout":
                drop_kit_host_deviations(result)
            warn_where_trainium_differs(result, settings.platform)
    return results


def drop_kit_host_deviations(result: CheckResult) -> None:
    """With `--host checkout` the checkout's own host ran, so the kit host's deviations (ON-*) did not."""
    from .backends.reference.deviations import is_kit_host_deviation

    result.deviations = [d for d in result.deviations if not is_kit_host_deviation(d)]


def warn_where_trainium_differs(result: CheckResult, platform: str = "trn1") -> None:
    """A PASS that touched a deviation after which Trainium (`platform`) behaves differently becomes a WARN,
    with the deviation's Trainium impact as the reason (`Deviation.carries_over_on`)."""
    from .backends.reference.deviations import by_id, carries_over

    differing = [d for d in result.deviations if not carries_over(d, platform)]
    if result.status is not Status.PASS or not differing:
        return
    result.status = Status.WARN
    for deviation_id in differing:
        result.reasons.append(
            f"passes on the reference backend, but {deviation_id} applies: {by_id(deviation_id).trainium_impact}"
        )


def environment(settings: RunSettings) -> dict[str, str]:
    """Versions and machine facts for the report header."""
    found = {"python": platform.python_version(), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs"}
    for package in ("torch", "transformers", "nxd-scaffold", "neuronx-distributed", "optimum-neuron"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    if settings.backend == "reference":
        found.pop("neuronx-distributed", None)
        found.pop("optimum-neuron", None)
    found["backend"] = settings.backend
    found["device"] = settings.device
    found["platform"] = settings.platform
    found["host"] = f"checkout {settings.repo}" if settings.host == "checkout" else settings.host
    return found


def _prepare_environment(settings: RunSettings) -> None:
    """Process-wide settings the ranks inherit (rank pools are spawned from this process's environment)."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault(RANK_LOG_LEVEL_ENV, "ERROR")


def _describe(error: BaseException) -> str:
    first = str(error).strip().splitlines()
    return f"{type(error).__name__}: {first[0] if first else ''}".rstrip(": ")


def _all(
    planned: PlannedCheck, status: Status, reason: str, trace: str | None, seconds: float
) -> list[CheckResult]:
    share = round(seconds / max(len(planned), 1), 3)
    return [
        CheckResult(
            check=planned.check,
            configuration=dict(configuration),
            status=status,
            reasons=[reason],
            seconds=share,
            traceback=trace,
        )
        for configuration in planned.configurations
    ]
