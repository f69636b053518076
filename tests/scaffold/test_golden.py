"""The committed generation of llama (tests/golden/llama) is exactly what the scaffolder produces now.

A failure means the generated code changed: review the diff, and if the change is intended, refresh the
golden files (and bump scaffold.ruleset.RULESET_VERSION when rule output changed) with the one command
in REFRESH.
"""

from __future__ import annotations

import difflib
from pathlib import Path

from scaffold.emit import Request
from scaffold.generations import digest
from scaffold.package import read_tree, render_package
from scaffold.record import RECORD_FILE, read_record

from .emission import cached_emit

GOLDEN = Path(__file__).parents[1] / "golden" / "llama"
REFRESH = "scaffold new-model llama --out tests/golden --force   (from the repository root)"


def _diff(name: str, expected: bytes, actual: bytes) -> str:
    return "".join(
        difflib.unified_diff(
            expected.decode().splitlines(keepends=True),
            actual.decode().splitlines(keepends=True),
            f"golden/{name}",
            f"regenerated/{name}",
        )
    )


def test_regeneration_matches_the_golden_llama():
    generation = render_package(cached_emit(Request("llama")))
    golden = read_tree(GOLDEN)
    assert set(golden) == set(generation.files), f"file set changed; refresh with: {REFRESH}"
    for name, expected in golden.items():
        actual = generation.files[name]
        assert actual == expected, f"{name} differs from the golden copy; refresh with: {REFRESH}\n" + _diff(
            name, expected, actual
        )


def test_golden_record_names_the_generation():
    record = read_record(GOLDEN)
    assert record.model_type == "llama" and not record.source_given
    assert record.request() == Request("llama")
    assert record.source_file == "transformers/models/llama/modeling_llama.py"
    files = {name: data for name, data in read_tree(GOLDEN).items() if name != RECORD_FILE}
    assert set(files) == {"__init__.py", "modeling_llama.py"}
    assert record.generation_sha256 == digest(files)
