"""docs/conformance-checks.md is the rendering of the check modules (docstrings and applied tolerances)."""

from __future__ import annotations

import importlib
from pathlib import Path

from conformance.checks.reference_doc import render
from conformance.profiles import CHECK_ORDER

DOC = Path(__file__).resolve().parents[2] / "docs" / "conformance-checks.md"


def test_document_is_in_sync_with_the_checks() -> None:
    assert DOC.read_text() == render(), (
        "docs/conformance-checks.md is stale: run `python -m conformance.checks.reference_doc > "
        "docs/conformance-checks.md`"
    )


def test_every_check_states_its_tolerance_with_a_reason() -> None:
    for check in CHECK_ORDER:
        tolerance = importlib.import_module(f"conformance.checks.{check}").TOLERANCE
        assert len(tolerance.split()) >= 15, f"{check}: a tolerance needs its reason, not just a number"
