"""The package template rendered without copier gives copier's own files (copier is the oracle)."""

from __future__ import annotations

from pathlib import Path

from copier import run_copy

from scaffold.emit import EmittedModel, Request
from scaffold.package import ANSWERS_FILE, TEMPLATE_DIR, answers_for, read_tree, render_template

from .conftest import blueprint_of, located


def test_render_template_matches_copier_run_copy(target, tmp_path: Path):
    emitted = EmittedModel(Request(target, disabled=("NXS010",)), located(target), blueprint_of(target), "")
    answers = answers_for(emitted, f"org/{target}-tiny")
    run_copy(str(TEMPLATE_DIR), str(tmp_path), data=answers, defaults=True, overwrite=True, quiet=True)
    by_copier = read_tree(tmp_path)
    by_copier.pop(ANSWERS_FILE)
    rendered = render_template(answers)
    assert rendered == by_copier
    assert f"from .modeling_{target} import" in rendered["__init__.py"].decode()
