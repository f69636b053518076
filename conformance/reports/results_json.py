"""`results.json`: `RunResults.to_dict()` (with its ``schema_version``) as strict JSON.

Keys keep the order `to_dict` gives them (the dataclass fields, then each check's own order), which is
fixed for the same input, so the file is byte-identical run to run; they are not sorted, because a
configuration's key order is part of its label. Floats are written as Python's shortest round-trip
repr; nan and ±inf, which JSON cannot hold, are written as the strings ``"NaN"``, ``"Infinity"`` and
``"-Infinity"`` (``float()`` reads them back).
"""

from __future__ import annotations

import json
import math
from typing import Any

from conformance.results import RunResults


def render_results_json(run: RunResults) -> str:
    """The JSON text, indented, ending with a newline."""
    return json.dumps(_strict(run.to_dict()), indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def load_results_json(text: str) -> RunResults:
    """Read a results.json back (the schema's major version must match)."""
    return RunResults.from_dict(json.loads(text))


def _strict(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {key: _strict(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(item) for item in value]
    return value
