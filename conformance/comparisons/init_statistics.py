"""Initialisation statistics of a parameter, and whether two initialisations draw from the same law.

A parameter's init is summarised over several seeded draws pooled together: how many values, mean,
standard deviation, kurtosis (a normal has 3, a uniform 1.8), its kind (all zeros, all ones, another
constant, or random), and for a matrix the rows that are exactly zero in every draw (an embedding's
padding row).

Two random inits agree when their statistics differ by less than `Z` standard errors of the difference,
from the sampling distribution of each estimator with n pooled values:

- mean: SE = sqrt(s1^2/n1 + s2^2/n2);
- standard deviation: Var(s) ~ sigma^2 (k - 1) / (4 n) (the delta method on the sample variance, whose
  variance is sigma^4 (k - 1) / n; k = 3 for a normal gives the familiar sigma / sqrt(2 n)), with k the
  larger measured kurtosis of the two;
- kurtosis: SE ~ sqrt(24 / n) per side (its normal-theory standard error), tested only with at least
  `MIN_VALUES_FOR_SHAPE` values per side.

`Z = 6`: a correct init fails one comparison with probability ~2e-9 (a few hundred comparisons per run),
while a wrong law is far outside: with a 16 x 64 matrix (llama/gqa's k_proj, four draws: n = 4096) the
std bound is 9% of the std and the kurtosis bound 0.65 (8 x 64: 13% and 0.92), so a std of 0.02 where the
config says 0.03 (50%), a uniform instead of a normal (kurtosis 1.8 vs 3) or zeros instead of random all
fail. Kinds and zero rows must match exactly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

Z = 6.0
MIN_VALUES_FOR_SHAPE = 100
ZEROS, ONES, CONSTANT, RANDOM = "all zeros", "all ones", "constant", "random"


@dataclass(frozen=True)
class InitStatistics:
    count: int
    mean: float
    std: float
    kurtosis: float | None
    kind: str
    constant: float | None = None
    zero_rows: tuple[int, ...] = ()

    def describe(self) -> str:
        if self.kind == RANDOM:
            shape = f", kurtosis {self.kurtosis:.3g}" if self.kurtosis is not None else ""
            return f"random (mean {self.mean:.3g}, std {self.std:.4g}{shape}, {self.count} values)"
        if self.kind == CONSTANT:
            return f"the constant {self.constant:g}"
        return self.kind


def statistics(draws: Sequence[torch.Tensor]) -> InitStatistics:
    """The statistics of one parameter over its seeded draws (same shape each)."""
    values = torch.cat([draw.detach().reshape(-1).to(torch.float64) for draw in draws])
    count = values.numel()
    mean = float(values.mean()) if count else 0.0
    std = float(values.std(unbiased=True)) if count > 1 else 0.0
    first = float(values[0]) if count else 0.0
    if count and bool((values == first).all()):
        kind = ZEROS if first == 0.0 else ONES if first == 1.0 else CONSTANT
        return InitStatistics(count, mean, 0.0, None, kind, constant=first)
    centred = values - mean
    variance = float((centred**2).mean())
    kurtosis = float((centred**4).mean()) / variance**2 if variance > 0 else None
    zero_rows: tuple[int, ...] = ()
    if draws[0].dim() == 2:
        zero = torch.stack([(draw == 0).all(dim=1) for draw in draws]).all(dim=0)
        zero_rows = tuple(int(i) for i in torch.nonzero(zero).flatten())
    return InitStatistics(count, mean, std, kurtosis, RANDOM, zero_rows=zero_rows)


def compare_statistics(
    name: str, model: InitStatistics, reference: InitStatistics, config: Mapping[str, Any]
) -> list[str]:
    """Why the model's init of `name` is not transformers' (empty when it is, within the bounds)."""
    if model.kind != reference.kind or (model.kind == CONSTANT and model.constant != reference.constant):
        return [
            f"{name}: transformers' _init_weights makes it {reference.describe()}, the model's init "
            f"{model.describe()}"
        ]
    if model.kind != RANDOM:
        return []
    reasons = []
    if model.zero_rows != reference.zero_rows:
        reasons.append(
            f"{name}: rows {_rows(reference.zero_rows)} are zero in transformers' init and rows "
            f"{_rows(model.zero_rows)} in the model's{_padding(config)}"
        )
    n1, n2 = model.count, reference.count
    kurtosis = max(model.kurtosis or 3.0, reference.kurtosis or 3.0, 1.0)
    std_bound = Z * math.sqrt(
        model.std**2 * (kurtosis - 1) / (4 * n1) + reference.std**2 * (kurtosis - 1) / (4 * n2)
    )
    if abs(model.std - reference.std) > std_bound:
        reasons.append(
            f"{name}: std {model.std:.4g} in the model's init, {reference.std:.4g} in transformers' _init_weights "
            f"(|d| {abs(model.std - reference.std):.3g} > {std_bound:.3g}, {Z:g} standard errors with {n1} "
            f"values){_initializer_range(config)}: a std that does not follow transformers' (a hard-coded "
            "value instead of the config's?)"
        )
    mean_bound = Z * math.sqrt(model.std**2 / n1 + reference.std**2 / n2)
    if abs(model.mean - reference.mean) > mean_bound:
        reasons.append(
            f"{name}: mean {model.mean:.3g} in the model's init, {reference.mean:.3g} in transformers' "
            f"(|d| {abs(model.mean - reference.mean):.3g} > {mean_bound:.3g})"
        )
    if min(n1, n2) >= MIN_VALUES_FOR_SHAPE and model.kurtosis is not None and reference.kurtosis is not None:
        shape_bound = Z * math.sqrt(24 / n1 + 24 / n2)
        if abs(model.kurtosis - reference.kurtosis) > shape_bound:
            reasons.append(
                f"{name}: kurtosis {model.kurtosis:.3g} in the model's init, {reference.kurtosis:.3g} in "
                f"transformers' (|d| > {shape_bound:.3g}; a normal has 3, a uniform 1.8): drawn from another "
                "distribution"
            )
    return reasons


def _rows(rows: tuple[int, ...]) -> str:
    return "[" + ", ".join(map(str, rows)) + "]" if rows else "none"


def _padding(config: Mapping[str, Any]) -> str:
    pad = config.get("pad_token_id")
    return f" (config.pad_token_id = {pad}: the padding row)" if pad is not None else ""


def _initializer_range(config: Mapping[str, Any]) -> str:
    value = config.get("initializer_range")
    return f" (config.initializer_range = {value:g})" if isinstance(value, (int, float)) else ""
