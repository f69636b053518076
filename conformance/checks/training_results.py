"""What the training checks (`overfit`, `bf16_smoke`) report alike: the training runs a check's
configurations ask for, and the `CheckResult` of one run with its configuration and loss-curve plot. What a
run must achieve (the figures and reasons) stays with each check.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from conformance.results import CheckResult, Plot, Series, Status

from . import RunSettings
from .training_loop import TrainingJob, TrainingRun, run_training_jobs, training_job


def train_configurations(
    package_dir: Path,
    configurations: Sequence[dict[str, Any]],
    settings: RunSettings,
    dtype: str,
    default_steps: int,
) -> list[TrainingRun]:
    """One training run per configuration, in order (`steps` defaults to `default_steps`)."""
    jobs = [
        training_job({"steps": default_steps, **configuration}, dtype, settings.cache_dir)
        for configuration in configurations
    ]
    return run_training_jobs(
        package_dir, jobs, backend=settings.backend, device=settings.device, timeout=settings.timeout
    )


def training_result(
    check: str,
    run: TrainingRun,
    figures: dict[str, Any],
    reasons: list[str],
    tolerance: str,
    deviations: list[str],
    plot_title: str,
) -> CheckResult:
    """The result of one run: FAIL when there are reasons, and the loss plot (titled `plot_title, <variant>
    T=<T>`) when the parallel model produced losses."""
    job = run.job
    title = f"{plot_title}, {job.variant} T={job.tp_size}"
    return CheckResult(
        check=check,
        configuration=run_configuration(job),
        status=Status.FAIL if reasons else Status.PASS,
        figures=figures,
        reasons=reasons,
        tolerance=tolerance,
        deviations=deviations,
        plots=[loss_plot(run, title)] if run.losses else [],
        seconds=run.seconds,
        traceback=run.error,
    )


def run_configuration(job: TrainingJob) -> dict[str, Any]:
    """The configuration a result names: variant, tp_size, sequence_parallel, fuse_qkv (when on), steps."""
    found: dict[str, Any] = {
        "variant": job.variant,
        "tp_size": job.tp_size,
        "sequence_parallel": job.sequence_parallel,
    }
    if job.fuse_qkv:
        found["fuse_qkv"] = True
    found["steps"] = job.steps
    return found


def loss_plot(run: TrainingRun, title: str) -> Plot:
    """Both loss curves over the steps."""
    job = run.job
    label = f"parallel model (T={job.tp_size}, SP={'on' if job.sequence_parallel else 'off'})"
    series = [Series(label, [float(i) for i in range(len(run.losses))], list(run.losses))]
    if run.reference_losses:
        steps = [float(i) for i in range(len(run.reference_losses))]
        series.append(Series("transformers", steps, list(run.reference_losses)))
    return Plot(title=title, x_label="step", y_label="loss", series=series)
