"""A consolidated LoRA adapter against the original one, with optimum-neuron's documented semantics: lora_B
and unfused lora_A come back bit for bit; the lora_A of a fused group (gate/up always, as DESIGN §3 makes
every gated MLP fuse them; q/k/v when the attention layout is the fused `qkv_proj` or the GQA layer) is the
mean of the group's original lora_A (training semantics §2.5(c), §2.6(c), §8.6).

The expected fused groups come from the generated-model contract and the catalogue's attention layout,
not from the model's own specs, so a model that drops or renames a fusion spec is caught.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .bound_text import number

MLP_GROUP = ("gate_proj", "up_proj")
QKV_GROUP = ("q_proj", "k_proj", "v_proj")
LISTED = 6  # names listed in a reason before "... and N more"


@dataclass(frozen=True)
class Tolerances:
    """Bounds of the comparisons, with the reason for each (kept in every result)."""

    logits_atol: float = 1e-5
    mean_ulps: float = 4.0

    @property
    def reason(self) -> str:
        """The bounds in words, with the numbers applied (docs/conformance-checks.md)."""
        ulps = number(self.mean_ulps)
        return (
            "Adapter tensors: lora_B and unfused lora_A are only sliced, permuted and concatenated on the way "
            "through the ranks, so they must come back bit for bit. A fused lora_A is the mean of 2 or 3 fp32 "
            f"tensors; summed in another order it may differ by an ulp, so it is bounded by {ulps} ulps of its "
            f"magnitude ({ulps} * eps32 * max |mean|). Logits: fp32 on both sides with the same (consolidated) "
            "adapter; the parallel model only reorders sums (row-parallel all-reduce, vocab-parallel "
            f"logits), a few ulps, as in parity: absolute {number(self.logits_atol)}."
        )

    def mean_bound(self, expected: torch.Tensor) -> float:
        return self.mean_ulps * torch.finfo(torch.float32).eps * float(expected.abs().max())


FP32 = Tolerances()


def listed(names: Sequence[str]) -> str:
    names = sorted(names)
    shown = ", ".join(names[:LISTED])
    return shown + (f" ... and {len(names) - LISTED} more" if len(names) > LISTED else "")


def expected_fused_groups(keys: Sequence[str], attention: str | None) -> dict[str, list[str]]:
    """`{lora_A key: [the group's original lora_A keys, in fusion order]}` for every fused linear's lora_A.

    gate/up are fused in every gated MLP (DESIGN §3); q/k/v when the layout is "fused" or "gqa".
    """
    groups = [MLP_GROUP] + ([QKV_GROUP] if attention in ("fused", "gqa") else [])
    fused: dict[str, list[str]] = {}
    for key in keys:
        for group in groups:
            match = re.fullmatch(rf"(.*)\.({'|'.join(group)})\.lora_A\.(weight|bias)", key)
            if match:
                prefix, pn = match.group(1), match.group(3)
                fused[key] = [f"{prefix}.{linear}.lora_A.{pn}" for linear in group]
    return fused


def compare_adapters(
    original: Mapping[str, torch.Tensor],
    consolidated: Mapping[str, torch.Tensor],
    attention: str | None,
    tolerances: Tolerances = FP32,
) -> tuple[dict[str, Any], list[str]]:
    """Figures and reasons of the tensor comparison (keys, exact tensors, fused lora_A against the mean)."""
    reasons: list[str] = []
    missing = sorted(set(original) - set(consolidated))
    unexpected = sorted(set(consolidated) - set(original))
    if missing:
        reasons.append(f"{len(missing)} adapter key(s) missing after consolidation: {listed(missing)}")
    if unexpected:
        reasons.append(
            f"{len(unexpected)} unexpected adapter key(s) after consolidation: {listed(unexpected)}"
        )
    fused = expected_fused_groups(list(original), attention)
    worst = {"lora_B": 0.0, "lora_A": 0.0, "lora_A_fused_vs_mean": 0.0}
    lossy = 0.0
    differing: dict[str, list[str]] = {group: [] for group in worst}
    for key in sorted(set(original) & set(consolidated)):
        mine = consolidated[key]
        if key in fused and all(name in original for name in fused[key]):
            group = "lora_A_fused_vs_mean"
            expected = torch.mean(torch.stack([original[name] for name in fused[key]]), dim=0)
            bound = tolerances.mean_bound(expected)
        else:
            group = "lora_B" if ".lora_B." in key else "lora_A"
            expected, bound = original[key], 0.0
        if mine.shape != expected.shape or mine.dtype != expected.dtype:
            reasons.append(
                f"{key}: shape {tuple(mine.shape)} {mine.dtype}, expected {tuple(expected.shape)} {expected.dtype}"
            )
            continue
        delta = float((mine - expected).abs().max()) if mine.numel() else 0.0
        worst[group] = max(worst[group], delta)
        if group == "lora_A_fused_vs_mean":
            lossy = max(lossy, float((mine - original[key]).abs().max()))
        if delta > bound:
            differing[group].append(f"{key} (max |delta| {delta:.3g})")
    for group, names in differing.items():
        if names:
            what = "the mean of its group's original lora_A" if group.endswith("mean") else "the original"
            reasons.append(f"{len(names)} {group} tensor(s) differ from {what}: {listed(names)}")
    figures: dict[str, Any] = {
        "keys_original": len(original),
        "keys_consolidated": len(consolidated),
        "keys_compared": len(set(original) & set(consolidated)),
        "fused_lora_A_keys": len(fused),
    }
    figures.update({f"{group}_max_abs_diff": value for group, value in worst.items()})
    figures["fused_lora_A_vs_original_max_abs_diff"] = lossy
    return figures, reasons
