"""Generated model packages for the conformance tests: each model type is scaffolded once per session,
and `broken_copy` makes a deliberately broken copy of one for the negative tests."""

from __future__ import annotations

import io
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from rich.console import Console

from scaffold.cli import main


@pytest.fixture(scope="session")
def checkpoint_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One reference-model cache for the conformance tests."""
    return tmp_path_factory.mktemp("reference-models")


@pytest.fixture(scope="session")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """`generated("llama")`: the package `scaffold new-model llama` writes (made once, do not modify it)."""
    root = tmp_path_factory.mktemp("generated")
    made: dict[str, Path] = {}

    def package(model_type: str) -> Path:
        if model_type not in made:
            output = io.StringIO()
            status = main(["new-model", model_type, "--out", str(root)], console=Console(file=output))
            assert status == 0, output.getvalue()
            made[model_type] = root / model_type
        return made[model_type]

    return package


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
