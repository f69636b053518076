"""Dropout off in runs that are compared with each other (DESIGN §7): the parallel model and transformers'
would otherwise draw different masks, and two correct models would part at the first training step.

Dropout is found generically, never by model name:

- config fields whose name contains "dropout" and hold a non-zero number (`attention_dropout`,
  `residual_dropout`, `hidden_dropout_prob`, ...): `without_dropout` gives a sibling of the catalogue
  checkpoint whose config.json holds 0.0 there (the weight files are linked, not copied), so that every
  model built from it, by any code path, has them at zero;
- `nn.Dropout` modules whatever their probability came from (a constant in the modeling code):
  `switch_off_dropout` sets their `p` to 0 on a built model.

The `dropout` check uses the original checkpoint, to show that dropout is live in training.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from torch import nn

from reference_models.nondefault import is_dropout_field

SUFFIX = "-no-dropout"
DROPOUT_MODULES = (
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)


def nonzero_dropout(config: dict[str, Any] | Any) -> dict[str, float]:
    """The config fields that set a non-zero dropout probability (`reference_models.is_dropout_field`:
    `attention_dropout`, `resid_pdrop`...): `{name: value}` in name order."""
    values = config if isinstance(config, dict) else config.to_dict()
    return {
        name: float(value)
        for name, value in sorted(values.items())
        if is_dropout_field(name)
        and isinstance(value, (int, float))
        and not isinstance(value, bool)
        and value
    }


def without_dropout(checkpoint: Path) -> Path:
    """`checkpoint` itself when its config has no dropout, else its dropout-free sibling (built once)."""
    checkpoint = Path(checkpoint)
    config = json.loads((checkpoint / "config.json").read_text())
    fields = nonzero_dropout(config)
    if not fields:
        return checkpoint
    target = checkpoint.with_name(checkpoint.name + SUFFIX)
    if (target / "config.json").is_file():
        return target
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        for entry in checkpoint.iterdir():
            if entry.name != "config.json":
                os.symlink(entry.resolve(), staging / entry.name)
        zeroed = {**config, **dict.fromkeys(fields, 0.0)}
        (staging / "config.json").write_text(json.dumps(zeroed, indent=2, sort_keys=True) + "\n")
        try:
            os.rename(staging, target)
        except OSError:
            if not (target / "config.json").is_file():  # another process renamed its identical copy first
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def switch_off_dropout(model: nn.Module) -> list[str]:
    """Set `p = 0` on every dropout module of `model`; the names of those that had `p > 0`."""
    switched = []
    for name, module in model.named_modules():
        if isinstance(module, DROPOUT_MODULES) and module.p:
            module.p = 0.0
            switched.append(name)
    return switched
