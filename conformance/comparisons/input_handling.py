"""Why a forward that departs from transformers departs: an input the model did not use.

When the parallel model's logits miss transformers', the parity check asks transformers again with one
input changed, and the change that makes the two agree names the cause:

- the padding mask replaced by the causal mask only (the model ignores `attention_mask`, where it promised
  to honour it: `recompute_causal_mask=False`);
- `position_ids` left out, so positions are 0..S-1 (the model ignores `position_ids`: packed sequences
  and left padding get the wrong rotary positions);
- with gradient checkpointing on, the same model run in eval mode, where the decoder layers are not
  checkpointed: right there and wrong in training means the checkpointed call loses something.

Each comparison is at the positions the case compares (`FixedBatch.compared_positions`) with the logits
tolerance; a diagnosis is only given when the alternative agrees, so it never guesses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class ForwardMiss:
    """The parallel model's full logits, their error against transformers' at the compared positions, and
    (gradient checkpointing cases) its logits in eval mode, where nothing is checkpointed."""

    logits: torch.Tensor
    error: float | None
    without_checkpointing: torch.Tensor | None
    positions: torch.Tensor


@dataclass
class InputDiagnoses:
    diagnoses: list[str] = field(default_factory=list)
    without_checkpointing_error: float | None = None


def diagnose_inputs(
    miss: ForwardMiss,
    reference_logits: Callable[[bool, bool], torch.Tensor],
    honours_padding: bool,
    checkpointing: bool,
    atol: float,
) -> InputDiagnoses:
    """Which input the model does not use, by asking transformers again: `reference_logits(honours_padding,
    default_positions)` is transformers' logits with the padding mask (or the causal mask only), with the
    batch's `position_ids` (or none). Each alternative is only computed where the case calls for it."""
    found = InputDiagnoses()
    if miss.without_checkpointing is not None:
        found.without_checkpointing_error = max_abs_diff(
            miss.without_checkpointing, reference_logits(honours_padding, False), miss.positions
        )
        _add(found, checkpointing_diagnosis(miss.error, found.without_checkpointing_error, atol))
    if miss.error is None or miss.error <= atol:
        return found
    if honours_padding:
        causal_only = reference_logits(False, False)
        _add(found, ignored_mask_diagnosis(miss.logits, causal_only, miss.positions, atol, checkpointing))
    default_positions = reference_logits(honours_padding, True)
    _add(found, ignored_positions_diagnosis(miss.logits, default_positions, miss.positions, atol))
    return found


def _add(found: InputDiagnoses, diagnosis: str | None) -> None:
    if diagnosis:
        found.diagnoses.append(diagnosis)


def max_abs_diff(logits: torch.Tensor, reference: torch.Tensor, positions: torch.Tensor) -> float | None:
    """max |logits - reference| at `positions` ((B, S) booleans), None when the shapes differ."""
    if logits.shape != reference.shape:
        return None
    return float((logits[positions].float() - reference[positions].float()).abs().max())


def ignored_mask_diagnosis(
    logits: torch.Tensor, causal_only: torch.Tensor, positions: torch.Tensor, atol: float, checkpointing: bool
) -> str | None:
    """The model's logits equal transformers' given the causal mask only: the padding mask is dropped."""
    error = max_abs_diff(logits, causal_only, positions)
    if error is None or not error <= atol:
        return None
    where = (
        " with gradient checkpointing on (is the mask passed to the checkpointed decoder layer call?)"
        if checkpointing
        else ""
    )
    return (
        f"the padding attention_mask is ignored{where}: the logits equal transformers' given the causal mask "
        f"only (max |d| {error:.3g} at the attended positions); with recompute_causal_mask=False the 2-D mask "
        "must reach create_causal_mask and every attention must add the 4-D mask it builds"
    )


def ignored_positions_diagnosis(
    logits: torch.Tensor, default_positions: torch.Tensor, positions: torch.Tensor, atol: float
) -> str | None:
    """The model's logits equal transformers' with positions 0..S-1: `position_ids` are ignored."""
    error = max_abs_diff(logits, default_positions, positions)
    if error is None or not error <= atol:
        return None
    return (
        f"position_ids are ignored: the logits equal transformers' run without them, i.e. with positions "
        f"0..S-1 (max |d| {error:.3g}), while the batch restarts positions for packed sequences and left "
        "padding; the position_ids given to the model must reach the rotary embedding"
    )


def checkpointing_diagnosis(train_error: float | None, eval_error: float | None, atol: float) -> str | None:
    """Right without gradient checkpointing (eval mode), wrong with it (train mode)."""
    if train_error is None or eval_error is None or train_error <= atol or not eval_error <= atol:
        return None
    return (
        f"the forward matches transformers without gradient checkpointing (eval mode, max |d logits| "
        f"{eval_error:.3g}) but not with it (train mode, {train_error:.3g}): the checkpointed call of the "
        "decoder layers (checkpoint_with_kwargs) drops or changes one of their arguments"
    )
