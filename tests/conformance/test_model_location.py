"""Where `python -m conformance TYPE` finds the package `scaffold new-model TYPE` wrote."""

from __future__ import annotations

from pathlib import Path

import pytest

from conformance.model_location import locate_package


def test_a_type_with_a_dash_is_found_in_the_package_folder_scaffold_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `scaffold new-model modernbert-decoder` writes workspace/modernbert_decoder/ (packages hold no dash):
    # the run must check that folder, not scaffold again nor look for workspace/modernbert-decoder/.
    monkeypatch.chdir(tmp_path)
    package = tmp_path / "workspace" / "modernbert_decoder"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    located = locate_package("modernbert-decoder")
    assert located.path == package.resolve() and not located.scaffolded
