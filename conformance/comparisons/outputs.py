"""The parallel model's logits and loss against transformers', within absolute bounds."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class OutputComparison:
    """max |Δ logits|, both losses and |Δ loss|, and the reasons when a bound is exceeded."""

    logits_max_abs_diff: float | None = None
    loss: float | None = None
    reference_loss: float | None = None
    loss_abs_diff: float | None = None
    reasons: list[str] = field(default_factory=list)


def compare_outputs(
    logits: torch.Tensor,
    reference_logits: torch.Tensor,
    loss: float,
    reference_loss: float,
    logits_atol: float,
    loss_atol: float,
) -> OutputComparison:
    """Full-vocabulary logits (batch-first) and the loss, each within its absolute bound."""
    found = OutputComparison(loss=float(loss), reference_loss=float(reference_loss))
    if logits.shape != reference_logits.shape:
        found.reasons.append(
            f"logits have shape {tuple(logits.shape)}, transformers' {tuple(reference_logits.shape)}"
        )
    else:
        found.logits_max_abs_diff = float((logits.float() - reference_logits.float()).abs().max())
        if not found.logits_max_abs_diff <= logits_atol:
            found.reasons.append(
                f"logits differ: max |delta| {found.logits_max_abs_diff:.3g} > {logits_atol:g}"
            )
    found.loss_abs_diff = abs(found.loss - found.reference_loss)
    if not found.loss_abs_diff <= loss_atol:
        found.reasons.append(f"loss differs: |delta| {found.loss_abs_diff:.3g} > {loss_atol:g}")
    return found
