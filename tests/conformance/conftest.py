"""`broken_copy` makes a deliberately broken copy of a generated package for the negative tests (the
session fixtures `generated` and `checkpoint_cache` live in tests/conftest.py)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture
def broken_copy(
    generated: Callable[[str], Path], tmp_path: Path
) -> Callable[[str, list[tuple[str, str]]], Path]:
    """`broken_copy("llama", [(old, new), ...])`: a copy of the generated package with its modeling file
    edited; each `old` must occur exactly once, so a regenerated model that no longer has it fails loudly."""

    def copy(model_type: str, replacements: list[tuple[str, str]]) -> Path:
        target = tmp_path / "broken" / model_type
        shutil.copytree(generated(model_type), target)
        modeling = target / f"modeling_{model_type}.py"
        text = modeling.read_text()
        for old, new in replacements:
            count = text.count(old)
            assert count == 1, f"{old!r} occurs {count} times in the generated {modeling.name}"
            text = text.replace(old, new)
        modeling.write_text(text)
        return target

    return copy
