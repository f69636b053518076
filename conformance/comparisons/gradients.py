"""Consolidated gradients against transformers', each bounded by its own scale; and whether replicated
parameters (K/V head replicas, parameters on every rank) hold the same gradient everywhere."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class GradientFigure:
    """One consolidated gradient against the transformers one."""

    max_abs_diff: float
    reference_max_abs: float
    bound: float

    @property
    def within(self) -> bool:
        return self.max_abs_diff <= self.bound

    @property
    def ratio(self) -> float:
        """max |Δ| / bound (> 1 fails)."""
        return self.max_abs_diff / self.bound if self.bound > 0 else float("inf")


@dataclass(frozen=True)
class GradientBound:
    """max |Δ| <= rtol * max |reference| + atol, per tensor."""

    rtol: float
    atol: float

    def of(self, reference_max_abs: float) -> float:
        return self.rtol * reference_max_abs + self.atol


@dataclass
class GradientComparison:
    figures: dict[str, GradientFigure] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)


def compare_gradients(
    consolidated: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], bound: GradientBound
) -> GradientComparison:
    """Same names as transformers', and every gradient within its bound."""
    found = GradientComparison(
        missing=sorted(set(expected) - set(consolidated)),
        unexpected=sorted(set(consolidated) - set(expected)),
    )
    if found.missing or found.unexpected:
        found.reasons.append(
            f"gradient names differ from transformers': missing {found.missing}, unexpected {found.unexpected}"
        )
    over = []
    for name in sorted(set(expected) & set(consolidated)):
        mine, theirs = consolidated[name], expected[name]
        if mine.shape != theirs.shape:
            found.reasons.append(f"gradient {name}: shape {tuple(mine.shape)} != {tuple(theirs.shape)}")
            continue
        scale = float(theirs.abs().max())
        figure = GradientFigure(float((mine - theirs).abs().max()), scale, bound.of(scale))
        found.figures[name] = figure
        if not figure.within:
            over.append(name)
    if over:
        worst = max(over, key=lambda n: found.figures[n].ratio)
        figure = found.figures[worst]
        found.reasons.append(
            f"{len(over)} gradient(s) out of bounds, worst {worst}: max |delta| {figure.max_abs_diff:.3g} > "
            f"{figure.bound:.3g}"
        )
    return found


def kv_replica_reasons(
    disagreement: dict[str, float], figures: dict[str, GradientFigure], atol: float
) -> list[str]:
    """Every replica of a K/V head must hold the full (kv-group all-reduced) gradient."""
    reasons = []
    for name, spread in sorted(disagreement.items()):
        figure = figures.get(name)
        bound = figure.bound if figure is not None else atol
        if spread > bound:
            reasons.append(
                f"K/V replicas of {name} hold different gradients (max |replica - replica 0| {spread:.3g} > "
                f"{bound:.3g}): the kv-shared group all-reduce is missing, replicas would drift apart"
            )
    return reasons


def replicated_reasons(
    spread: dict[str, float], figures: dict[str, GradientFigure], atol: float
) -> list[str]:
    """A replicated parameter must hold the same full gradient on every rank (after the SP all-reduce)."""
    differing = {}
    for name, value in sorted(spread.items()):
        figure = figures.get(name)
        if value > (figure.bound if figure is not None else atol):
            differing[name] = value
    if not differing:
        return []
    worst = max(differing, key=differing.__getitem__)
    return [
        f"{len(differing)} replicated parameter(s) have different gradients on different ranks, worst "
        f"{worst} (max |rank r - rank 0| {differing[worst]:.3g}): each rank holds a partial gradient "
        "that nothing sums over TP (per-head q/k norms on rank-local heads, or norms in the sequence-"
        "parallel region without `sequence_parallel_enabled`)"
    ]
