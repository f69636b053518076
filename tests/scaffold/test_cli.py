"""The command line: `scaffold inspect` (the plan, JSON, the terminal width), `scaffold list`, `--version`
and errors."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
from rich.console import Console

from scaffold.architectures import decoder_only_types
from scaffold.cli import EXIT_ERROR, main
from scaffold.ruleset import RULESET_VERSION

from .conftest import blueprint_of
from .synthetic import model_source


def run(argv: list[str]) -> tuple[int, str]:
    buffer = io.StringIO()
    status = main(argv, console=Console(file=buffer, width=400, color_system=None))
    return status, buffer.getvalue()


def test_inspect_llama_prints_the_plan():
    status, out = run(["inspect", "llama"])
    assert status == 0
    assert "Conversion plan for llama" in out
    assert "model.layers.*.self_attn.o_proj" in out and "RowParallelLinear" in out
    assert "FusedLinearsSpec(gate_proj, up_proj)" in out
    assert "GQAQKVColumnParallelLinearSpec" in out
    assert "ParallelEmbedding" in out
    assert "Refusals: none" in out


def test_inspect_shows_refusals_with_locations():
    status, out = run(["inspect", "mamba"])
    assert status == 0
    assert "R005" in out and "transformers/models/mamba/modeling_mamba.py:" in out


def test_inspect_json_is_the_blueprint_and_is_deterministic(capsys: pytest.CaptureFixture[str]):
    assert run(["inspect", "qwen3", "--json"])[0] == 0
    printed = capsys.readouterr().out
    assert printed.strip() == blueprint_of("qwen3").to_json()  # an independent analysis, same bytes
    data = json.loads(printed)
    assert data["model_type"] == "qwen3"
    assert data["features"]["qk_norm"] == "per_head"
    assert [site["path"] for site in data["sites"]][-1] == "lm_head"


def test_source_override(tmp_path: Path):
    path = tmp_path / "modeling_synthetic.py"
    path.write_text(model_source())
    status, out = run(["inspect", "llama", "--source", str(path)])
    assert status == 0
    assert "body.blocks.*.mix.d" in out


def test_unknown_type_is_one_clear_error(capsys: pytest.CaptureFixture[str]):
    status, out = run(["inspect", "lamma"])
    assert status == EXIT_ERROR
    assert out == ""
    err = capsys.readouterr().err
    assert err.startswith("scaffold inspect: error: unknown model type 'lamma'")
    assert "did you mean llama" in err


def test_unparsable_source_is_one_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    path = tmp_path / "modeling_broken.py"
    path.write_text("def broken(:\n    pass\n")
    status, _ = run(["inspect", "llama", "--source", str(path)])
    assert status == EXIT_ERROR
    assert f"{path}:1: cannot parse the modeling file" in capsys.readouterr().err


def test_usage_errors_exit_2():
    with pytest.raises(SystemExit) as caught:
        main([])
    assert caught.value.code == 2


def test_module_entry_point():
    result = subprocess.run(
        [sys.executable, "-m", "scaffold", "inspect", "--help"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0
    assert "--source FILE" in result.stdout


def _cli(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *argv],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **(env or {})},
    )


def test_version_of_both_commands():
    expected = version("nxd-scaffold")
    scaffold = _cli("-m", "scaffold", "--version")
    assert scaffold.returncode == 0
    assert scaffold.stdout == f"scaffold (nxd-scaffold) {expected}, rule set {RULESET_VERSION}\n"
    conformance = _cli("-m", "conformance", "--version")
    assert (
        conformance.returncode == 0
        and conformance.stdout == f"python -m conformance (nxd-scaffold) {expected}\n"
    )


def test_inspect_fits_the_terminal_width():
    result = _cli("-m", "scaffold", "inspect", "mistral", env={"COLUMNS": "100"})
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 100
    assert len(lines) < 150
    for module in ("model.layers.*.self_attn.q_proj", "model.layers.*.post_attention_layernorm", "lm_head"):
        assert any(module in line for line in lines), module  # names are readable, not folded into slivers
    assert any("spec: FusedLinearsSpec(gate_proj, up_proj)" in line for line in lines)


def test_decoder_only_types_leave_out_encoders_and_encoder_decoders():
    types = decoder_only_types()
    assert {"llama", "mistral", "qwen2", "qwen3", "granite", "gpt2", "olmo2"} <= set(types)
    assert not {"bert", "roberta", "bart", "t5", "whisper", "marian"} & set(types)
    assert types == sorted(types)


def test_list_says_which_types_scaffold_and_why_not(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("NXD_SCAFFOLD_CACHE", str(tmp_path))
    status, out = run(["list", "llama", "ctrl", "mamba"])
    assert status == 0
    rows = {
        line.split("│")[1].strip(): line
        for line in out.splitlines()
        if line.startswith("│ ") and "│" in line[2:]
    }
    assert "scaffolds" in rows["llama"]
    assert "refused" in rows["ctrl"] and "R027" in rows["ctrl"]  # its own kernel, as `new-model ctrl` says
    assert "refused" in rows["mamba"] and "R005" in rows["mamba"]  # a state-space mixer
    assert "1 of 3 scaffold" in out
    assert run(["list", "llama", "ctrl", "mamba"]) == (status, out)  # the second run reads the cache


def test_list_refuses_a_type_that_is_not_a_decoder_only_lm(capsys: pytest.CaptureFixture[str]):
    assert run(["list", "bert"])[0] == EXIT_ERROR
    err = capsys.readouterr().err
    assert err.startswith("scaffold list: error: not a decoder-only causal-LM type of transformers")
    assert "bert" in err


def test_usage_errors_go_to_stderr_with_status_2():
    result = _cli("-m", "scaffold", "new-model")
    assert result.returncode == 2 and result.stdout == ""
    assert "the following arguments are required: model_type" in result.stderr
