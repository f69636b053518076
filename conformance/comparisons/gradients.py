"""Consolidated gradients against transformers', each bounded by its own scale and by the rounding of its
own dtype; and whether replicated parameters (K/V head replicas, parameters on every rank) hold the same
gradient everywhere."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

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


def rounding_rtol(dtype: torch.dtype, partials: int = 1, reference_partials: int = 1) -> float:
    """The relative error two gradients of `dtype` can show from rounding alone, when one is the sum of
    `partials` gradients (one per rank) and the other the sum of `reference_partials` (transformers' per
    data-parallel share), each sum computed in `dtype`.

    With u = eps(dtype) / 2, the unit roundoff (one rounding moves a value by at most u times it):

    - a gradient leaving a backward in `dtype` is within 2u of the exact one: one rounding where a wider
      sum is cast to the parameter's dtype, one for an elementwise op done in that dtype on the way (a bf16
      parameter's softplus or scale, say);
    - summing n such partials in `dtype` (the all-reduce) adds at most u of the running sum per addition:
      (n - 1) u;
    - so a sum of n partials is within (2n + n - 1) u = (3n - 1) u of the exact gradient, relative to the
      sum of the partials' magnitudes, and two gradients computed that way (n and m partials) within
      (3n - 1 + 3m - 1) u of each other.

    The bound takes the partials' magnitudes summed to be the reference's largest magnitude: partials of one
    gradient over ranks that do not cancel each other. For fp32 this is ~1e-6 of the scale, below the
    empirical bound of the reordered fp32 sums, which then decides; for a bf16 parameter summed over T=2
    ranks it is 7u = 3.5 eps = 2.7%, while a missing sum over the ranks or a doubled gradient is O(1).
    """
    unit_roundoff = torch.finfo(dtype).eps / 2
    return (3 * partials - 1 + 3 * reference_partials - 1) * unit_roundoff


@dataclass(frozen=True)
class GradientBound:
    """max |Δ| <= max(rtol, rounding of the gradient's dtype) * max |reference| + atol, per tensor.

    `rtol` bounds the fp32 reordering of sums (measured); a gradient of a coarser dtype (a bf16 parameter
    in an fp32 model) is rounded at every step of its own reductions, so its relative bound is at least
    `rounding_rtol` of its dtype and of the number of partials summed on each side."""

    rtol: float
    atol: float

    def of(
        self,
        reference_max_abs: float,
        dtype: torch.dtype = torch.float32,
        partials: int = 1,
        reference_partials: int = 1,
    ) -> float:
        relative = max(self.rtol, rounding_rtol(dtype, partials, reference_partials))
        return relative * reference_max_abs + self.atol


def coarser_dtype(first: torch.dtype, second: torch.dtype) -> torch.dtype:
    """Of two floating dtypes, the one with the larger eps (the one that rounds more)."""
    return max(first, second, key=lambda dtype: torch.finfo(dtype).eps)


def replicated_partials(
    parameters_metadata: Mapping[str, Mapping[str, Any]], tp_size: int, dp_size: int = 1
) -> dict[str, int]:
    """Per parameter name: how many per-rank gradients its gradient is summed from. A replicated
    parameter (not tensor-parallel) may be summed over the T ranks (the sequence-parallel all-reduce, or the
    model's own sum for one applied to rank-local activations); every gradient is then averaged over the D
    data-parallel ranks. A tensor-parallel shard is its rank's own gradient."""
    return {
        name: (1 if meta.get("tensor_model_parallel") else tp_size) * dp_size
        for name, meta in parameters_metadata.items()
    }


@dataclass
class GradientComparison:
    figures: dict[str, GradientFigure] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)


def compare_gradients(
    consolidated: dict[str, torch.Tensor],
    expected: dict[str, torch.Tensor],
    bound: GradientBound,
    partials: Mapping[str, int] | None = None,
    reference_partials: int = 1,
) -> GradientComparison:
    """Same names as transformers', and every gradient within its bound: the bound of the coarser of the
    two gradients' dtypes, with `partials[name]` per-rank gradients summed into the consolidated one (1 when
    not given) and `reference_partials` into transformers' (its data-parallel shares)."""
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
        dtype = coarser_dtype(mine.dtype, theirs.dtype)
        limit = bound.of(scale, dtype, (partials or {}).get(name, 1), reference_partials)
        # In float64: a difference taken in bf16 would itself be rounded.
        figure = GradientFigure(float((mine.double() - theirs.double()).abs().max()), scale, limit)
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
