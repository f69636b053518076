"""Overfit: the package's model memorises one fixed batch, step for step like transformers' model.

Both models start from the same catalogue checkpoint (fp32, eager attention) and train `steps` steps of
AdamW (lr 5e-3, no weight decay, no clipping) on the parity batch (2 x 16 tokens, some labels -100); the
parallel one at TP = T with the configuration's sequence parallelism and the SP gradient all-reduce of
optimum-neuron's optimizer step (`training_loop`). Two things must hold:

- learning: the last step's loss is below `threshold(vocab)`, a tenth of the uniform-guess loss ln(V);
- fidelity: every step's loss is within `STEP_TOLERANCE` of transformers' loss at that step.

A threshold alone passes a model that learns differently (a frozen MLP still memorises 30 tokens); the
curve comparison catches it, and its first departing step says when the two trainings parted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from conformance.results import CheckResult

from . import RunSettings
from .parity import touched_deviations
from .training_loop import TrainingRun
from .training_results import train_configurations, training_result

CHECK = "overfit"
DEFAULT_STEPS = 30
STEP_TOLERANCE = 1e-4
THRESHOLD_FRACTION = 0.1
TOLERANCE = (
    "fp32 on both sides, same weights, batch and AdamW: the parallel model only reorders sums, and Adam "
    "carries those ulps forward. Measured on llama/gqa over 30 steps at lr 5e-3: max per-step |d loss| "
    "1.1e-6 at T=2 SP=on, 7e-7 at T=1, 1e-6 at T=4 SP=on (GQA layer). Bound 1e-4 per step (~90x margin); a "
    "parameter left untrained or a wrong gradient moves the curve by 1e-2 or more within a few steps. "
    "Learning threshold: a tenth of ln(V), the loss of a uniform guess (0.55 for V=256); transformers "
    "reaches 0.076 after 30 steps (0.54 after 20), so 30 steps clear it with a 7x margin."
)


def threshold(vocab_size: int) -> float:
    """The loss the last step must be below: a tenth of the uniform-guess loss ln(V)."""
    return THRESHOLD_FRACTION * math.log(vocab_size)


def run(
    package_dir: Path, configurations: Sequence[dict[str, Any]], settings: RunSettings
) -> list[CheckResult]:
    """One `CheckResult` per configuration (`variant`, `tp_size`, `sequence_parallel`, `steps`, optional
    `fuse_qkv`), in order."""
    runs = train_configurations(package_dir, configurations, settings, "float32", DEFAULT_STEPS)
    return [judge(run) for run in runs]


def judge(run: TrainingRun) -> CheckResult:
    """The verdict on one training run, with its figures and the loss-curve plot."""
    job = run.job
    limit = threshold(job.vocab_size)
    diffs = [abs(a - b) for a, b in zip(run.losses, run.reference_losses)]
    departed = next((i for i, d in enumerate(diffs) if not d <= STEP_TOLERANCE), None)
    final = run.losses[-1] if run.losses else None
    figures: dict[str, Any] = {
        "steps": job.steps,
        "lr": job.optimizer.lr,
        "losses": list(run.losses),
        "reference_losses": list(run.reference_losses),
        "max_step_abs_diff": max(diffs, default=None),
        "first_departing_step": departed,
        "final_loss": final,
        "reference_final_loss": run.reference_losses[-1] if run.reference_losses else None,
        "threshold": limit,
        "step_tolerance": STEP_TOLERANCE,
        "never_updated": list(run.never_updated),
        "attention_layouts": sorted(set(run.attention.values())),
        "sequence_parallel_effective": run.sequence_parallel_effective,
    }
    deviations = touched_deviations(
        job.variant, job.tp_size, job.sequence_parallel, figures["attention_layouts"], fuse_qkv=job.fuse_qkv
    )
    reasons = _reasons(run, diffs, departed, limit)
    return training_result(CHECK, run, figures, reasons, TOLERANCE, deviations, "overfit loss per step")


def _reasons(run: TrainingRun, diffs: list[float], departed: int | None, limit: float) -> list[str]:
    if run.error is not None:
        return [f"training did not complete: {run.error.strip().splitlines()[0]}"]
    reasons = []
    if len(run.losses) != run.job.steps or len(run.reference_losses) != run.job.steps:
        reasons.append(
            f"expected {run.job.steps} losses from each model, got {len(run.losses)} and "
            f"{len(run.reference_losses)}"
        )
    if not all(math.isfinite(loss) for loss in run.losses):
        first = next(i for i, loss in enumerate(run.losses) if not math.isfinite(loss))
        reasons.append(f"the loss is not finite from step {first} on ({run.losses[first]})")
    if departed is not None:
        worst = max(range(len(diffs)), key=diffs.__getitem__)
        reasons.append(
            f"the loss curve departs from transformers' at step {departed} (|d loss| {diffs[departed]:.3g} > "
            f"{STEP_TOLERANCE:g}; max |d| {diffs[worst]:.3g} at step {worst}; last step {run.losses[-1]:.4f} vs "
            f"{run.reference_losses[-1]:.4f}): the model trains differently although it starts from the same "
            "weights"
        )
    if run.never_updated:
        reasons.append(
            f"{len(run.never_updated)} parameter(s) never received a gradient and never trained: "
            f"{', '.join(run.never_updated)}"
        )
    if run.losses and not run.losses[-1] < limit:
        reasons.append(
            f"the loss after {run.job.steps} steps is {run.losses[-1]:.4f}, not below the threshold {limit:.3f} "
            f"(transformers: {run.reference_losses[-1]:.4f})"
            if run.reference_losses
            else f"the loss after {run.job.steps} steps is {run.losses[-1]:.4f}, not below {limit:.3f}"
        )
    return reasons
