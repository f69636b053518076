"""A rebuilt state dict (consolidated, or a seeded init at another TP size) against the one it must equal,
bit for bit, and reasons that name the tensors and the likely cause (a dropped bias, a fused layer without a
spec); `from_pretrained`'s loading info as reasons."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

NAMES_SHOWN = 8
"""How many tensor names one reason lists before it says "and N more"."""


@dataclass
class StateDictDiff:
    """A consolidated (or otherwise rebuilt) state dict against the one it must equal, bit for bit."""

    compared: int = 0
    """Keys present in both."""
    equal: int = 0
    missing: list[str] = field(default_factory=list)
    """Keys of the original the rebuilt one lacks."""
    extra: list[str] = field(default_factory=list)
    differing: dict[str, float] = field(default_factory=dict)
    """Same key, shape and dtype, other values: max |Δ|."""
    shape_mismatch: dict[str, tuple[list[int], list[int]]] = field(default_factory=dict)
    dtype_mismatch: dict[str, tuple[str, str]] = field(default_factory=dict)

    @property
    def identical(self) -> bool:
        return not (
            self.missing or self.extra or self.differing or self.shape_mismatch or self.dtype_mismatch
        )

    @property
    def max_abs_diff(self) -> float:
        return max(self.differing.values(), default=0.0)

    def figures(self) -> dict[str, Any]:
        return {
            "keys_compared": self.compared,
            "tensors_equal": self.equal,
            "keys_missing": list(self.missing),
            "keys_extra": list(self.extra),
            "tensors_differing": dict(self.differing),
            "max_abs_diff": self.max_abs_diff,
            "shape_mismatch": {k: [list(a), list(b)] for k, (a, b) in self.shape_mismatch.items()},
            "dtype_mismatch": {k: list(v) for k, v in self.dtype_mismatch.items()},
        }


def diff_state_dicts(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> StateDictDiff:
    """Key by key: same keys, dtypes, shapes and values (`torch.equal`)."""
    diff = StateDictDiff(
        missing=sorted(set(expected) - set(actual)), extra=sorted(set(actual) - set(expected))
    )
    for name in sorted(set(expected) & set(actual)):
        mine, theirs = actual[name], expected[name]
        diff.compared += 1
        if mine.dtype != theirs.dtype:
            diff.dtype_mismatch[name] = (str(mine.dtype), str(theirs.dtype))
        elif tuple(mine.shape) != tuple(theirs.shape):
            diff.shape_mismatch[name] = (list(mine.shape), list(theirs.shape))
        elif torch.equal(mine, theirs):
            diff.equal += 1
        else:
            diff.differing[name] = float((mine.double() - theirs.double()).abs().max())
    return diff


def names(keys: Sequence[str], limit: int = NAMES_SHOWN) -> str:
    """`a, b, c` or `a, b, ... and 5 more`."""
    shown = ", ".join(keys[:limit])
    return shown if len(keys) <= limit else f"{shown} and {len(keys) - limit} more"


def _module_of(key: str) -> str:
    """`model.layers.0.mlp` for `model.layers.0.mlp.gate_proj.weight` (the owner of the linear)."""
    return key.rsplit(".", 2)[0] if key.count(".") >= 2 else ""


def _linear_of(key: str) -> str:
    """`gate_proj` for `model.layers.0.mlp.gate_proj.weight`."""
    parts = key.split(".")
    return parts[-2] if len(parts) >= 2 else key


def _spec_mentions(metadata: dict[str, Any], module: str, linear: str) -> list[str]:
    """The spec classes recorded for `module` whose fields name `linear` (an empty list: none does)."""
    found = []
    for entry in metadata.get("model_weight_transformation_specs", []):
        if entry.get("module_fully_qualified_name") != module:
            continue
        for class_name, fields in entry.get("specs", []):
            values = json.dumps(fields, sort_keys=True)
            if re.search(rf'"{re.escape(linear)}"', values):
                found.append(class_name)
    return found


def explain(
    diff: StateDictDiff,
    metadata: dict[str, Any] | None,
    what: str = "consolidated checkpoint",
    reference: str = "the original",
) -> list[str]:
    """Reasons naming the tensors and the likely cause of each difference.

    - missing keys of a module under which other, unknown keys were saved: the package saved its fused
      layer and nothing split it back (a spec missing from the module's `specs`, or one that does not
      produce these names);
    - a missing `.bias` whose `.weight` is there: the package's layer has no bias (a dropped bias);
    - other missing or extra keys, tensors of another dtype, shape or value, listed by name.
    """
    reasons: list[str] = []
    missing, extra = list(diff.missing), list(diff.extra)

    extra_by_module: dict[str, list[str]] = {}
    for key in extra:
        extra_by_module.setdefault(_module_of(key), []).append(key)
    explained_missing: set[str] = set()
    explained_extra: set[str] = set()
    for module in sorted({_module_of(key) for key in missing}):
        saved = extra_by_module.get(module)
        if not saved:
            continue
        lacking = [key for key in missing if _module_of(key) == module]
        fused = sorted({_linear_of(key) for key in saved})
        specs = sorted({cls for linear in fused for cls in _spec_mentions(metadata or {}, module, linear)})
        if specs:
            cause = (
                f"the package saved {names(saved)} and its spec(s) {specs} did not turn them back into the "
                "original names (a spec with the wrong names or sizes?)"
            )
        else:
            cause = (
                f"the package saved {names(saved)} without a spec to split it back (a missing CustomModule "
                f"spec? {module} declares none for {', '.join(fused)})"
            )
        reasons.append(f"{names(lacking)}: missing; {cause}")
        explained_missing.update(lacking)
        explained_extra.update(saved)

    biases = [
        key
        for key in missing
        if key not in explained_missing
        and key.endswith(".bias")
        and key[: -len("bias")] + "weight" not in missing
    ]
    if biases:
        reasons.append(
            f"{what} lacks {names(biases)} ({len(biases)} bias tensor(s) whose weights are there: a dropped "
            "bias? the package's layer was built with bias=False)"
        )
        explained_missing.update(biases)
    rest = [key for key in missing if key not in explained_missing]
    if rest:
        reasons.append(f"{what} lacks {len(rest)} tensor(s) of {reference}: {names(rest)}")
    unknown = [key for key in extra if key not in explained_extra]
    if unknown:
        reasons.append(f"{what} has {len(unknown)} tensor(s) {reference} does not: {names(unknown)}")
    for key, (mine, theirs) in sorted(diff.dtype_mismatch.items()):
        reasons.append(f"{key}: dtype {mine} in the {what}, {theirs} in {reference}")
    for key, (mine, theirs) in sorted(diff.shape_mismatch.items()):
        reasons.append(f"{key}: shape {tuple(mine)} in the {what}, {tuple(theirs)} in {reference}")
    if diff.differing:
        ranked = sorted(diff.differing, key=lambda key: (-diff.differing[key], key))
        listed = ", ".join(f"{key} (max |Δ| {diff.differing[key]:.3g})" for key in ranked[:NAMES_SHOWN])
        more = f" and {len(ranked) - NAMES_SHOWN} more" if len(ranked) > NAMES_SHOWN else ""
        reasons.append(f"{len(ranked)} tensor(s) differ from {reference}: {listed}{more}")
    return reasons


def loading_reasons(info: dict[str, Any], checkpoint: str) -> list[str]:
    """from_pretrained's `output_loading_info` as reasons: what it initialised and what it left unused."""
    reasons = []
    missing = sorted(info.get("missing_keys", []))
    unexpected = sorted(info.get("unexpected_keys", []))
    mismatched = list(info.get("mismatched_keys", []))
    if missing:
        reasons.append(
            f"from_pretrained({checkpoint}) found no checkpoint tensor for {len(missing)} parameter(s) and "
            f"initialised them: {names(missing)}"
        )
    if unexpected:
        reasons.append(
            f"from_pretrained({checkpoint}) did not use {len(unexpected)} checkpoint tensor(s) (unexpected "
            f"keys): {names(unexpected)}"
        )
    if mismatched:
        reasons.append(f"from_pretrained({checkpoint}) skipped tensors of another shape: {mismatched}")
    return reasons


def bias_keys(keys: Iterable[str]) -> bool:
    """Whether any of the names is a bias (NXD-03 concerns biases drawn at init)."""
    return any(key.endswith(".bias") for key in keys)
