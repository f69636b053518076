"""Every NXS and R code is documented where a user looks, and `--disable` respects what rules build on."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from scaffold.cli import EXIT_ERROR, main
from scaffold.codes import DOC_PATH, render_markdown
from scaffold.errors import ScaffoldError
from scaffold.pipeline import resolve_disabled
from scaffold.refusal_codes import ALL_CODES
from scaffold.rules import RULES, _check_order, dependents

ROOT = Path(__file__).resolve().parents[2]


def _run(argv: list[str]) -> tuple[int, str]:
    buffer = io.StringIO()
    status = main(argv, console=Console(file=buffer, width=200))
    return status, buffer.getvalue()


def test_the_codes_page_is_in_sync_with_the_code() -> None:
    assert (ROOT / DOC_PATH).read_text() == render_markdown(), (
        f"{DOC_PATH} is stale: run `python -m scaffold.codes > {DOC_PATH}`"
    )
    assert f"({DOC_PATH})" in (ROOT / "README.md").read_text()  # the README points users at it


def test_every_code_says_what_a_contributor_can_do() -> None:
    assert [entry.code for entry in ALL_CODES] == [
        f"R{number:03d}" for number in range(1, len(ALL_CODES) + 1)
    ]
    for entry in ALL_CODES:
        assert len(entry.remedy.split()) >= 8, entry.code
    for rule in RULES:
        assert len(rule.ADVICE.split()) >= 8, rule.CODE


@pytest.mark.parametrize("key", ["R008", "unknown-role", "r008"])
def test_scaffold_rules_explains_a_refusal_code(key: str) -> None:
    status, out = _run(["rules", key])
    assert status == 0
    assert out.startswith("R008 unknown-role: neither the config's tp plan nor the dataflow")
    assert "What to do: add the layer to the config class's `base_model_tp_plan`" in out
    assert "--allow-unsupported writes TODO(R008) markers" in out


def test_scaffold_rules_explains_a_rule_with_what_builds_on_it() -> None:
    status, out = _run(["rules", "NXS021"])
    assert status == 0
    assert "Builds on: NXS004. Built on by: NXS026, NXS022." in out and "What to do:" in out
    assert "--- llama: LlamaAttention, before" in out
    status, out = _run(["rules"])
    assert status == 0 and all(rule.CODE in out for rule in RULES) and all(e.code in out for e in ALL_CODES)


def test_the_order_is_declared_and_every_rule_follows_what_it_builds_on() -> None:
    codes = [rule.CODE for rule in RULES]
    assert codes != sorted(codes) or codes[-1] == "NXS030"  # the declared order, whatever the numbers say
    for index, rule in enumerate(RULES):
        assert set(rule.REQUIRES) <= set(codes[:index]), rule.CODE
    assert [rule.CODE for rule in dependents("NXS021")] == ["NXS026", "NXS022"]
    with pytest.raises(RuntimeError, match="NXS026 requires NXS021, which must come before it"):
        _check_order(
            tuple(rule for rule in RULES if rule.CODE != "NXS021")
            + tuple(r for r in RULES if r.CODE == "NXS021")
        )


def test_disabling_a_rule_others_build_on_is_a_usage_error_naming_them(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert resolve_disabled(["NXS024", "parallel-embedding", "base-model-forward"]) == {
        "NXS024",
        "NXS010",
        "NXS012",
    }
    assert resolve_disabled(["NXS021", "NXS022", "NXS026"]) == {"NXS021", "NXS022", "NXS026"}
    with pytest.raises(
        ScaffoldError,
        match=r"--disable NXS021 \(attention-variants\): NXS026 \(tensor-parallel-attention-norms\), "
        r"NXS022 \(attention-sequence-parallel\) build on it",
    ):
        resolve_disabled(["NXS021"])
    assert _run(["new-model", "llama", "--disable", "NXS004", "--dry-run"])[0] == EXIT_ERROR
    err = capsys.readouterr().err
    assert err.startswith("scaffold new-model: error: --disable NXS004 (thread-trn-config): NXS010")
    assert "hint: disable them too, or keep NXS004" in err
