"""`scaffold inspect` end to end: the printed plan, JSON output, and errors."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from scaffold.cli import EXIT_ERROR, main

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
    status, out = run(["inspect", "olmo2"])
    assert status == 0
    assert "R004" in out and "transformers/models/olmo2/modeling_olmo2.py:" in out


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
