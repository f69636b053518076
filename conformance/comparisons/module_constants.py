"""Configuration constants of two models, module by module: a hard-coded value where the config's belongs.

A generated model keeps transformers' module names, so its norms, attentions and rotary embedding sit
where transformers' do. Each holds the constants it computes with as plain attributes (a norm's
`variance_epsilon`, an attention's `scaling`, the rotary `attention_scaling`) and buffers (the rotary
`inv_freq`, from rope theta and scaling). A same-named module holding the same attribute or buffer with
another value is a constant the model did not take from the config: typically a default written in the
code (`eps=1e-6`, `rope_theta=10000.0`) that a tiny config with non-default values exposes. The numbers
may also show in the forward, but this names the module, the attribute, both values and the config field
holding transformers' value.

Only floating-point attributes are compared (integer ones are per-rank counts in a tensor-parallel model:
heads, vocabulary shard), and only where both modules define them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

RELATIVE_TOLERANCE = 1e-6
"""Constants are computed from the same config values; anything beyond rounding is a different value."""


@dataclass(frozen=True)
class ModuleConstants:
    """`{module.attribute: value}` for float attributes and `{module.buffer: tensor}` for buffers."""

    scalars: dict[str, float] = field(default_factory=dict)
    buffers: dict[str, torch.Tensor] = field(default_factory=dict)


def module_constants(model: torch.nn.Module) -> ModuleConstants:
    """The float attributes and the floating-point buffers of every module of `model`."""
    scalars: dict[str, float] = {}
    for name, module in model.named_modules():
        for attribute, value in vars(module).items():
            if attribute.startswith("_") or isinstance(value, bool) or not isinstance(value, float):
                continue
            scalars[f"{name}.{attribute}" if name else attribute] = value
    buffers = {
        name: buffer.detach().clone() for name, buffer in model.named_buffers() if buffer.is_floating_point()
    }
    return ModuleConstants(scalars, buffers)


def constant_reasons(
    parallel: ModuleConstants, reference: ModuleConstants, config: Mapping[str, Any]
) -> list[str]:
    """One reason per constant that differs between same-named modules, naming both values and the config
    fields that hold transformers' value."""
    reasons = []
    for key in sorted(set(parallel.scalars) & set(reference.scalars)):
        mine, theirs = parallel.scalars[key], reference.scalars[key]
        if _same(mine, theirs):
            continue
        reasons.append(
            f"{key} is {mine:g} in the model but {theirs:g} in transformers'{_fields_holding(theirs, config)}: "
            "a constant written in the code where the config's value belongs"
        )
    for key in sorted(set(parallel.buffers) & set(reference.buffers)):
        mine_t, theirs_t = parallel.buffers[key], reference.buffers[key]
        if mine_t.shape != theirs_t.shape:
            continue
        scale = float(theirs_t.abs().max()) if theirs_t.numel() else 0.0
        error = float((mine_t.float() - theirs_t.float()).abs().max()) if theirs_t.numel() else 0.0
        if error <= RELATIVE_TOLERANCE * max(scale, 1e-30):
            continue
        reasons.append(
            f"buffer {key} differs from transformers' (max |d| {error:.3g}, max |value| {scale:.3g}): it is "
            "computed from other constants than the config's (e.g. a hard-coded rope theta or scaling)"
        )
    return reasons


def _same(a: float, b: float) -> bool:
    if math.isnan(a) and math.isnan(b):
        return True
    return abs(a - b) <= RELATIVE_TOLERANCE * max(abs(a), abs(b))


def _fields_holding(value: float, config: Mapping[str, Any]) -> str:
    names = [
        name
        for name, held in sorted(config.items())
        if isinstance(held, (int, float)) and not isinstance(held, bool) and _same(float(held), value)
    ]
    return f" (config.{', config.'.join(names)} = {value:g})" if names else ""
