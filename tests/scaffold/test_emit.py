"""Emission: the generated-file header, ruff formatting, refusals, and the request's command line."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import pytest
import transformers
from ruff import find_ruff_bin

from scaffold.emit import HEADER_MARK, Request, emit_model, format_python
from scaffold.errors import ScaffoldError
from scaffold.rules import RULES
from scaffold.ruleset import RULESET_VERSION

from .conftest import located
from .emission import cached_emit

ALL_RULES = tuple(rule.CODE for rule in RULES)


def test_header_carries_the_source_license_then_names_source_versions_and_commands():
    emitted = cached_emit(Request("llama"))
    lines = emitted.text.splitlines()
    source = located("llama").modeling_file.read_text().splitlines()
    end = source.index("# limitations under the License.") + 1  # transformers' llama opens with its license
    assert source[0] == "# coding=utf-8" and lines[:end] == source[:end]
    assert lines[end] == "#"
    assert lines[end + 1] == f"{HEADER_MARK} from transformers/models/llama/modeling_llama.py"
    assert lines[end + 2] == (
        f"# (transformers {transformers.__version__}, rule set {RULESET_VERSION}) with: scaffold new-model llama"
    )
    assert "scaffold update llama" in lines[end + 3]
    assert emitted.text.count("# limitations under the License.") == 1  # not repeated below the header


def test_license_of_a_modular_generated_file_comes_from_its_configuration():
    modeling = located("mistral").modeling_file
    assert "Copyright" not in modeling.read_text()  # transformers' mistral opens with the modular banner only
    configuration = (modeling.parent / "configuration_mistral.py").read_text().splitlines()
    end = configuration.index("# limitations under the License.") + 1
    text = cached_emit(Request("mistral")).text
    assert text.splitlines()[:end] == configuration[:end]
    assert "automatically generated from" not in text  # the banner is dropped


def test_source_override_leaves_no_machine_path(tmp_path: Path):
    source = tmp_path / "deep" / "folder" / "modeling_qwen3.py"
    source.parent.mkdir(parents=True)
    source.write_text(located("qwen3").modeling_file.read_text())
    emitted = emit_model(Request("qwen3", source=source))
    assert str(tmp_path) not in emitted.text and "/deep/" not in emitted.text
    assert f"{HEADER_MARK} from modeling_qwen3.py (--source)" in emitted.text.splitlines()
    assert "with: scaffold new-model qwen3 --source modeling_qwen3.py" in emitted.text


def test_generated_code_is_ruff_clean_in_optimum_neuron_style():
    text = cached_emit(Request("llama")).text
    common = ["--isolated", "--line-length", "119", "--stdin-filename", "m.py", "-"]
    formatted = subprocess.run(
        [find_ruff_bin(), "format", "--check", *common], input=text, capture_output=True, text=True
    )
    assert formatted.returncode == 0, formatted.stdout + formatted.stderr
    imports = subprocess.run(
        [find_ruff_bin(), "check", "--select", "I", "--config", "lint.isort.lines-after-imports=2", *common],
        input=text,
        capture_output=True,
        text=True,
    )
    assert imports.returncode == 0, imports.stdout
    assert "\r" not in text and text.endswith("\n") and not text.endswith("\n\n")


def test_format_python_sorts_imports_and_formats():
    messy = "import torch\nimport os\nfrom torch import nn\nx = {'a':1}\ndef f( a ):\n  return a\n"
    assert format_python(messy) == (
        'import os\n\nimport torch\nfrom torch import nn\n\n\nx = {"a": 1}\n\n\ndef f(a):\n    return a\n'
    )


def test_format_python_reports_invalid_code():
    with pytest.raises(ScaffoldError, match="ruff format failed on the generated code"):
        format_python("def broken(:\n")


def test_command_repeats_the_request():
    request = Request(
        "llama", source=Path("my file.py"), disabled=("NXS020", "NXS010", "NXS020"), allow_unsupported=True
    )
    assert request.disabled == ("NXS010", "NXS020")
    assert request.command() == (
        "scaffold new-model llama --source 'my file.py' --disable NXS010 --disable NXS020 --allow-unsupported"
    )
    assert Request("llama", source=Path("/home/me/x/modeling_llama.py")).command() == (
        "scaffold new-model llama --source modeling_llama.py"
    )
    assert Request("gpt-sw3").modeling_filename == "modeling_gpt_sw3.py"


def test_refused_architecture_stops_before_any_rule():
    with pytest.raises(ScaffoldError) as caught:
        emit_model(Request("ctrl"))
    message = str(caught.value)
    assert message.startswith("ctrl: ") and "cannot be converted safely" in message
    assert "transformers/models/ctrl/modeling_ctrl.py:123: R027" in message
    assert "--allow-unsupported" in message


def test_allow_unsupported_lists_every_refusal_as_a_todo():
    emitted = emit_model(Request("ernie4_5_moe", disabled=ALL_RULES, allow_unsupported=True))
    refusals = emitted.blueprint.refusals
    assert refusals, "ernie4_5_moe is expected to be refused (bias-corrected top-k routing)"
    header = emitted.text.split("\n\n", 1)[0]
    for refusal in refusals:
        assert f"#   TODO({refusal.code}) {refusal.location}: {refusal.message}" in header
    assert {refusal.code for refusal in refusals} >= {"R029"}


def test_todo_lines_are_the_markers_below_the_header():
    emitted = cached_emit(Request("llama"))
    text = "# Generated by nxd-scaffold from x\n#   TODO(R001) x:1: header summary\n\nimport torch\n\n\nx = 1  # TODO(NXS021): check\n"
    assert dataclasses.replace(emitted, text=text).todo_lines() == ((7, "x = 1  # TODO(NXS021): check"),)
    unlicensed = "# TODO(license): add it\n" + text
    assert dataclasses.replace(emitted, text=unlicensed).todo_lines() == (
        (1, "# TODO(license): add it"),
        (8, "x = 1  # TODO(NXS021): check"),
    )
