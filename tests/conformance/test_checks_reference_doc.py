"""docs/conformance-checks.md is the rendering of the registered checks (docstrings and applied tolerances)."""

from __future__ import annotations

from pathlib import Path

from conformance.checks_reference import render
from conformance.harness.registry import all_checks

DOC = Path(__file__).resolve().parents[2] / "docs" / "conformance-checks.md"


def test_document_is_in_sync_with_the_checks() -> None:
    assert DOC.read_text() == render(), (
        "docs/conformance-checks.md is stale: run `python -m conformance.checks_reference > "
        "docs/conformance-checks.md`"
    )


def test_every_registered_check_is_rendered_with_its_tolerance() -> None:
    text = render()
    for check in all_checks():
        assert f"## {check.name}\n" in text and check.tolerance in text
