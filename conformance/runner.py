"""Run a profile's checks on one model package and collect a `RunResults`.

Each planned check is one or more calls of `Check.run(package_dir, configurations, settings)` (one per TP
size, so progress shows as each finishes). A check that raises — a bug in the check, or a failure outside
its jobs — becomes one FAIL per configuration carrying the traceback; the run goes on with the next check.
The run also records what the profile did not test and the tiny model of every variant it used.
"""

from __future__ import annotations

import os
import platform
import time
import traceback
from collections.abc import Callable, Iterable
from importlib import metadata
from pathlib import Path

from .checks import RunSettings
from .coverage import not_tested
from .harness.registry import check_names
from .model_traits import traits
from .profiles import PlannedCheck, plan
from .results import CheckResult, RunResults, Status
from .tensor_parallel_run import RANK_LOG_LEVEL_ENV

CheckStarted = Callable[[PlannedCheck], None]
CheckFinished = Callable[[PlannedCheck, list[CheckResult]], None]

HOST_NAMES = {"reference": "nxd-scaffold reference host (conformance/backends/reference/training)"}
"""How the report names the kit's host (the checkout host is named by its folder; the neuron backend's
host is optimum-neuron's)."""


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
    planned = plan(model_type, profile, checks)
    run = RunResults(
        model_type=model_type,
        package_dir=str(package_dir),
        profile=profile,
        backend=settings.backend,
        environment=environment(settings),
        models={key: traits(key) for key in _variants(planned)},
        not_tested=not_tested(model_type, planned, check_names()),
    )
    start = time.perf_counter()
    for entry in planned:
        check_start = time.perf_counter()
        for part in entry.parts():
            if on_start is not None:
                on_start(part)
            results = run_check(part, package_dir, settings)
            run.results.extend(results)
            if on_finish is not None:
                on_finish(part, results)
        run.check_seconds[entry.name] = round(time.perf_counter() - check_start, 3)
    run.seconds = round(time.perf_counter() - start, 3)
    return run


def run_check(planned: PlannedCheck, package_dir: Path, settings: RunSettings) -> list[CheckResult]:
    """One planned check; an exception becomes a FAIL per configuration with its traceback."""
    start = time.perf_counter()
    try:
        results = planned.check.run(package_dir, list(planned.configurations), settings)
    except Exception as error:  # a bug outside the jobs: a FAIL, and the run goes on
        reason = _describe(error)
        return _all(planned, Status.FAIL, reason, traceback.format_exc(), time.perf_counter() - start)
    if len(results) != len(planned.configurations):
        reason = f"the {planned.name} check returned {len(results)} results for {len(planned)} configurations"
        return _all(planned, Status.FAIL, reason, None, time.perf_counter() - start)
    return results


def environment(settings: RunSettings) -> dict[str, str]:
    """Versions and machine facts for the report header, and which host code ran."""
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
    found["host"] = host_description(settings)
    return found


def host_description(settings: RunSettings) -> str:
    """Which training-host code the ranks import, in words."""
    if settings.backend == "neuron":
        where = f"checkout {settings.repo}" if settings.repo is not None else "installed package"
        return f"optimum-neuron ({where})"
    if settings.host == "checkout":
        return f"optimum-neuron host modules of the checkout {settings.repo}, over the reference NxD"
    return HOST_NAMES.get(settings.host, settings.host)


def _variants(planned: list[PlannedCheck]) -> list[str]:
    """The catalogue variants the plan uses, in order of first use."""
    return list(dict.fromkeys(config.variant for entry in planned for config in entry.configurations))


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
            check=planned.name,
            configuration=configuration.as_dict(),
            status=status,
            reasons=[reason],
            seconds=share,
            traceback=trace,
        )
        for configuration in planned.configurations
    ]
