"""`broken_copy` makes a deliberately broken copy of a generated package for the negative tests, and
`catalogue_variant` a catalogue variant with config fields overridden (the session fixtures `generated` and
`checkpoint_cache` live in tests/conftest.py)."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from reference_models import CATALOGUE, variant


@pytest.fixture
def broken_copy(generated: Callable[[str], Path], tmp_path: Path) -> Callable[..., Path]:
    """`broken_copy("llama", [(old, new), ...])`: a copy of the generated package with its modeling file
    (or `file=` another of its modules) edited; each `old` must occur exactly once, so a regenerated model
    that no longer has it fails loudly."""

    def copy(model_type: str, replacements: list[tuple[str, str]], file: str | None = None) -> Path:
        target = tmp_path / "broken" / model_type
        shutil.copytree(generated(model_type), target)
        modeling = target / (file or f"modeling_{model_type}.py")
        text = modeling.read_text()
        for old, new in replacements:
            count = text.count(old)
            assert count == 1, f"{old!r} occurs {count} times in the generated {modeling.name}"
            text = text.replace(old, new)
        modeling.write_text(text)
        return target

    return copy


@pytest.fixture
def catalogue_variant(monkeypatch: pytest.MonkeyPatch) -> Callable[..., str]:
    """`catalogue_variant("llama/gqa", rms_norm_eps=1e-5)`: the key of a catalogue variant with config fields
    overridden, registered for this test only (checks look variants up by key; the builder keys its cache
    on the config, so the checkpoint is the variant's own). Tests that need a non-default value use it, so
    that they hold whatever value the catalogue itself chooses."""

    def make(base_key: str, **fields: object) -> str:
        base = variant(base_key)
        suffix = "-".join(f"{name}-{value}" for name, value in sorted(fields.items()))
        entry = dataclasses.replace(
            base,
            name=f"{base.name}-{suffix}",
            overrides=tuple(sorted({**dict(base.overrides), **fields}.items())),
        )
        monkeypatch.setitem(CATALOGUE, entry.key, entry)
        return entry.key

    return make
