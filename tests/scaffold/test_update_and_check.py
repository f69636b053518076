"""`scaffold update` (three-way merge of a regeneration with hand edits) and `scaffold check` (drift).

The regeneration input is changed the way a transformers bump would change it: `--source` with a copy
of the installed modeling file whose `rotate_half` docstring was edited. Rules are disabled for speed;
the merge does not depend on them.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from scaffold.cli import EXIT_ERROR, main
from scaffold.emit import Request
from scaffold.package import read_answers, render_package
from scaffold.registration import AUTO_MODELS, TRAINING_DIR
from scaffold.rules import RULES
from scaffold.source import locate

from . import mini_checkout
from .emission import cached_emit, fast_emit, no_rules

__all__ = ["fast_emit"]
NO_RULES = tuple(rule.CODE for rule in RULES)
ORIGINAL_DOC = '"""Rotates half the hidden dims of the input."""'
UPSTREAM_DOC = '"""Rotates half the hidden dims of the input (upstream change)."""'
CONTRIBUTOR_LINE = "# Contributor note: checked on trn1.\n"


def run(argv: list[str]) -> tuple[int, str]:
    buffer = io.StringIO()
    status = main(argv, console=Console(file=buffer, width=400, color_system=None))
    return status, buffer.getvalue()


@pytest.fixture
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fast_emit) -> Path:
    """A freshly generated qwen3 package in tmp_path/workspace."""
    monkeypatch.chdir(tmp_path)
    assert run(["new-model", "qwen3", *no_rules()])[0] == 0
    return tmp_path / "workspace" / "qwen3"


@pytest.fixture(scope="module")
def upstream_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the installed modeling_qwen3.py with one upstream change."""
    text = locate("qwen3").modeling_file.read_text()
    assert text.count(ORIGINAL_DOC) == 1
    path = tmp_path_factory.mktemp("upstream") / "modeling_qwen3.py"
    path.write_text(text.replace(ORIGINAL_DOC, UPSTREAM_DOC))
    return path


def _edit_before(path: Path, anchor: str, line: str) -> None:
    text = path.read_text()
    assert text.count(anchor) == 1
    path.write_text(text.replace(anchor, line + anchor))


def test_update_merges_hand_edits_with_the_regeneration(package: Path, upstream_source: Path):
    modeling = package / "modeling_qwen3.py"
    _edit_before(modeling, "class Qwen3Attention(", CONTRIBUTOR_LINE)
    status, out = run(["update", "qwen3", "--source", str(upstream_source), *no_rules()])
    assert status == 0, out
    assert "merged with the regeneration" in out
    merged = modeling.read_text()
    assert CONTRIBUTOR_LINE + "class Qwen3Attention(" in merged  # the edit
    assert UPSTREAM_DOC in merged and ORIGINAL_DOC not in merged  # the regenerated change
    assert f"from {upstream_source}\n" in merged.splitlines(keepends=True)[0]  # regenerated header
    # Apart from the contributor's line, the merged file is exactly the new generation.
    new_request = Request("qwen3", source=upstream_source, disabled=NO_RULES)
    new_generation = render_package(cached_emit(new_request))
    assert merged.replace(CONTRIBUTOR_LINE, "", 1).encode() == new_generation.files["modeling_qwen3.py"]
    # The answers now record the new request, and the new generation as the next merge base.
    recorded = read_answers(package)
    assert recorded.request() == new_request
    assert recorded.pristine == new_generation.content_files


def test_conflicting_edit_is_reported_with_markers(
    package: Path, upstream_source: Path, capsys: pytest.CaptureFixture[str]
):
    modeling = package / "modeling_qwen3.py"
    modeling.write_text(modeling.read_text().replace(ORIGINAL_DOC, '"""Mine."""'))
    status, _ = run(["update", "qwen3", "--source", str(upstream_source), *no_rules()])
    assert status == 1
    err = capsys.readouterr().err
    assert (
        err
        == "scaffold update: 1 file(s) with conflicts to resolve by hand: workspace/qwen3/modeling_qwen3.py\n"
    )
    merged = modeling.read_text()
    conflict = merged[merged.index("<<<<<<< before updating") : merged.index(">>>>>>> after updating")]
    assert '"""Mine."""' in conflict and UPSTREAM_DOC in conflict  # both sides kept, nothing lost


def test_conflicting_edit_as_rej_file(
    package: Path, upstream_source: Path, capsys: pytest.CaptureFixture[str]
):
    modeling = package / "modeling_qwen3.py"
    modeling.write_text(modeling.read_text().replace(ORIGINAL_DOC, '"""Mine."""'))
    status, _ = run(["update", "qwen3", "--source", str(upstream_source), "--conflict", "rej", *no_rules()])
    assert status == 1
    rejected = package / "modeling_qwen3.py.rej"
    assert capsys.readouterr().err.endswith(": workspace/qwen3/modeling_qwen3.py.rej\n")
    assert '+    """Mine."""' in rejected.read_text()  # the contributor's hunk, kept aside
    assert UPSTREAM_DOC in modeling.read_text()


def test_update_without_changes_is_a_no_op(package: Path):
    before = mini_checkout.snapshot(package)
    status, out = run(["update", "qwen3", *no_rules()])
    assert status == 0 and "already up to date" in out
    assert mini_checkout.snapshot(package) == before


def test_update_refuses_what_was_not_generated(
    tmp_path: Path, monkeypatch, capsys: pytest.CaptureFixture[str]
):
    monkeypatch.chdir(tmp_path)
    assert run(["update", "qwen3"])[0] == EXIT_ERROR
    assert "workspace/qwen3/.copier-answers.yml: no answers file" in capsys.readouterr().err


def test_update_in_a_checkout_keeps_the_registration(tmp_path: Path, fast_emit, upstream_source: Path):
    root = mini_checkout.build(tmp_path)
    assert run(["new-model", "qwen3", "--repo", str(root), *no_rules()])[0] == 0
    auto = (root / AUTO_MODELS).read_bytes()
    modeling = root / TRAINING_DIR / "qwen3" / "modeling_qwen3.py"
    _edit_before(modeling, "class Qwen3Attention(", CONTRIBUTOR_LINE)
    status, out = run(["update", "qwen3", "--repo", str(root), "--source", str(upstream_source), *no_rules()])
    assert status == 0, out
    assert CONTRIBUTOR_LINE in modeling.read_text() and UPSTREAM_DOC in modeling.read_text()
    assert (root / AUTO_MODELS).read_bytes() == auto  # already registered: unchanged


def test_check_reports_ok_edits_and_drift(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    source = tmp_path / "modeling_qwen3.py"
    source.write_text(locate("qwen3").modeling_file.read_text())
    assert run(["new-model", "qwen3", "--source", str(source), *no_rules()])[0] == 0
    modeling = tmp_path / "workspace" / "qwen3" / "modeling_qwen3.py"

    status, out = run(["check"])
    assert status == 0 and out.startswith("ok     workspace/qwen3 (qwen3)")

    _edit_before(modeling, "class Qwen3Attention(", CONTRIBUTOR_LINE)
    status, out = run(["check", "."])
    assert status == 0 and "edited workspace/qwen3 (qwen3): hand edits only" in out
    status, out = run(["check", "--strict"])
    assert status == 1 and f"\n-{CONTRIBUTOR_LINE}" in out

    source.write_text(source.read_text().replace(ORIGINAL_DOC, UPSTREAM_DOC))  # what a transformers bump does
    status, out = run(["check", "."])
    assert status == 1
    assert (
        "drift  workspace/qwen3 (qwen3): regeneration differs from the last generation in modeling_qwen3.py"
        in out
    )
    assert f"\n-    {ORIGINAL_DOC}\n+    {UPSTREAM_DOC}\n" in out
    assert CONTRIBUTOR_LINE not in out  # the drift diff is generation to generation, not the hand edit


def test_check_finds_nothing_or_orphans(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert run(["check", str(tmp_path)])[0] == EXIT_ERROR
    assert "no generated model package under" in capsys.readouterr().err
    orphan = tmp_path / "pkg" / "modeling_x.py"
    orphan.parent.mkdir()
    orphan.write_text("# Generated by nxd-scaffold from somewhere\n")
    status, out = run(["check", str(tmp_path)])
    assert status == 1 and f"error  {orphan}: generated file without an answers file" in out
