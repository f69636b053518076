"""docs/backend-deviations.md is the rendering of the deviation registry, and ids are unique."""

from __future__ import annotations

from pathlib import Path

import pytest

from conformance.backends.reference.deviations import DEVIATIONS, by_id, render_markdown

DOC = Path(__file__).resolve().parents[1] / "docs" / "backend-deviations.md"


def test_document_is_in_sync_with_the_registry():
    assert DOC.read_text() == render_markdown(), (
        "docs/backend-deviations.md is stale: run "
        "`python -m conformance.backends.reference.deviations > docs/backend-deviations.md`"
    )


def test_ids_are_unique_and_resolvable():
    ids = [d.id for d in DEVIATIONS]
    assert len(ids) == len(set(ids))
    assert by_id("NXD-07").component == "layers"
    with pytest.raises(KeyError, match="unknown deviation id 'NXD-99'"):
        by_id("NXD-99")
