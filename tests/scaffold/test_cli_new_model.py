"""`scaffold new-model` and `scaffold rules` end to end: destinations, previews, --repo, and every bad input.

Most tests disable all rules (`no_rules()`): what is tested here is the command around the rules
(destinations, writes, registration, errors), and analysis + formatting alone keep them fast. Emissions
are shared through `fast_emit`.
"""

from __future__ import annotations

import io
import subprocess
import sys
from importlib.metadata import distribution
from pathlib import Path

import pytest
from rich.console import Console
from ruff import find_ruff_bin

from scaffold.cli import EXIT_ERROR, main
from scaffold.emit import Request
from scaffold.package import render_package
from scaffold.record import RECORD_FILE, read_record
from scaffold.registration import AUTO_MODELS, TRAINING_DIR
from scaffold.rules import RULES

from . import mini_checkout
from .conftest import located
from .emission import cached_emit, fast_emit, no_rules

__all__ = ["fast_emit"]
NO_RULES = tuple(rule.CODE for rule in RULES)


def run(argv: list[str]) -> tuple[int, str]:
    buffer = io.StringIO()
    status = main(argv, console=Console(file=buffer, width=400, color_system=None))
    return status, buffer.getvalue()


def files(folder: Path) -> dict[str, bytes]:
    return mini_checkout.snapshot(folder) if folder.exists() else {}


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_default_destination_is_the_workspace_folder(in_tmp: Path, fast_emit):
    status, out = run(["new-model", "llama", *no_rules()])
    assert status == 0, out
    expected = render_package(cached_emit(Request("llama", disabled=NO_RULES))).files
    assert files(in_tmp) == {f"workspace/llama/{name}": data for name, data in expected.items()}
    assert "wrote workspace/llama/" in out and out.endswith("Next: python -m conformance llama\n")
    package = in_tmp / "workspace" / "llama"
    # The package __init__ exports nothing, as optimum-neuron's own packages (the released qwen3's is empty).
    released = Path(
        distribution("optimum-neuron").locate_file("optimum/neuron/models/training/qwen3/__init__.py")
    )
    assert (package / "__init__.py").read_bytes() == released.read_bytes() == b""
    assert read_record(package).request() == Request("llama", disabled=NO_RULES)


def test_next_names_the_package_written_elsewhere(in_tmp: Path, fast_emit):
    status, out = run(["new-model", "qwen3", "--out", "models", *no_rules()])
    assert status == 0 and out.endswith("Next: python -m conformance qwen3 --package models/qwen3\n")


def test_out_folder_existing_output_and_force(in_tmp: Path, fast_emit):
    assert run(["new-model", "qwen3", "--out", "models", *no_rules()])[0] == 0
    modeling = in_tmp / "models" / "qwen3" / "modeling_qwen3.py"
    pristine = modeling.read_bytes()
    modeling.write_text("# my edits\n")
    status, out = run(["new-model", "qwen3", "--out", "models", *no_rules()])
    assert status == EXIT_ERROR and out == ""
    assert modeling.read_text() == "# my edits\n"
    assert run(["new-model", "qwen3", "--out", "models", "--force", *no_rules()])[0] == 0
    assert modeling.read_bytes() == pristine
    assert sorted(p.name for p in (in_tmp / "models").iterdir()) == ["qwen3"]  # no staging or backup left


def test_overwrite_refusal_is_one_clear_error(in_tmp: Path, fast_emit, capsys: pytest.CaptureFixture[str]):
    (in_tmp / "workspace" / "llama").mkdir(parents=True)
    assert run(["new-model", "llama", *no_rules()])[0] == EXIT_ERROR
    err = capsys.readouterr().err
    assert err.startswith("scaffold new-model: error: workspace/llama already exists; not overwriting it\n")
    assert "--force" in err


def test_dry_run_and_diff_write_nothing(in_tmp: Path, fast_emit):
    status, out = run(["new-model", "llama", "--dry-run", *no_rules()])
    assert status == 0 and files(in_tmp) == {}
    assert "new       llama/modeling_llama.py" in out and "Dry run: nothing written." in out

    status, out = run(["new-model", "llama", "--diff", *no_rules()])
    assert status == 0 and files(in_tmp) == {}
    assert "--- /dev/null\n+++ b/llama/modeling_llama.py\n" in out

    assert run(["new-model", "llama", *no_rules()])[0] == 0
    modeling = in_tmp / "workspace" / "llama" / "modeling_llama.py"
    edited = modeling.read_text().replace("class LlamaMLP(", "class LlamaFeedForward(")
    modeling.write_text(edited)
    status, out = run(["new-model", "llama", "--diff", *no_rules()])
    assert status == 0
    assert "--- a/llama/modeling_llama.py\n+++ b/llama/modeling_llama.py\n" in out
    assert "\n-class LlamaFeedForward(" in out and "\n+class LlamaMLP(" in out
    assert modeling.read_text() == edited
    status, out = run(["new-model", "llama", "--dry-run", *no_rules()])
    assert "changed   llama/modeling_llama.py" in out and "unchanged llama/__init__.py" in out


def test_unknown_model_type_suggests_close_ones(in_tmp: Path, capsys: pytest.CaptureFixture[str]):
    assert run(["new-model", "mistrl"])[0] == EXIT_ERROR
    err = capsys.readouterr().err
    assert err.startswith("scaffold new-model: error: unknown model type 'mistrl'")
    assert "did you mean mistral" in err
    assert files(in_tmp) == {}


def test_unparsable_source_names_file_and_line(in_tmp: Path, capsys: pytest.CaptureFixture[str]):
    broken = in_tmp / "modeling_broken.py"
    broken.write_text("import torch\n\n\nclass LlamaModel(:\n    pass\n")
    assert run(["new-model", "llama", "--source", str(broken)])[0] == EXIT_ERROR
    assert f"{broken}:4: cannot parse the modeling file" in capsys.readouterr().err
    assert files(in_tmp) == {"modeling_broken.py": broken.read_bytes()}


def test_refused_architecture_is_an_error_and_writes_nothing(
    in_tmp: Path, capsys: pytest.CaptureFixture[str]
):
    assert run(["new-model", "ctrl"])[0] == EXIT_ERROR
    err = capsys.readouterr().err
    assert err.startswith("scaffold new-model: error: ctrl: ") and "cannot be converted safely" in err
    assert "transformers/models/ctrl/modeling_ctrl.py:123: R027" in err
    assert "hint: pass --allow-unsupported" in err
    assert files(in_tmp) == {}


def test_allow_unsupported_writes_todo_markers(in_tmp: Path, fast_emit):
    status, out = run(["new-model", "ernie4_5_moe", "--allow-unsupported", *no_rules()])
    assert status == 0, out
    text = (in_tmp / "workspace" / "ernie4_5_moe" / "modeling_ernie4_5_moe.py").read_text()
    blueprint = cached_emit(Request("ernie4_5_moe", disabled=NO_RULES, allow_unsupported=True)).blueprint
    assert blueprint.refusals
    for refusal in blueprint.refusals:
        assert f"TODO({refusal.code}) {refusal.location}" in text
        assert f"TODO({refusal.code}) {refusal.location}" in out
    assert f"Needs a human ({len(blueprint.refusals)}" in out


def test_unwritable_destination_is_one_clear_error(
    in_tmp: Path, fast_emit, capsys: pytest.CaptureFixture[str]
):
    (in_tmp / "taken").write_text("a file where a folder should be")
    assert run(["new-model", "llama", "--out", "taken", *no_rules()])[0] == EXIT_ERROR
    err = capsys.readouterr().err
    assert err.startswith("scaffold new-model: error: cannot create taken")
    assert files(in_tmp) == {"taken": b"a file where a folder should be"}


def test_unknown_disabled_rule(in_tmp: Path, capsys: pytest.CaptureFixture[str]):
    assert run(["new-model", "llama", "--disable", "NXS999"])[0] == EXIT_ERROR
    assert "unknown rule 'NXS999'" in capsys.readouterr().err


def test_repo_writes_the_package_and_registers_it_once(tmp_path: Path, fast_emit):
    root = mini_checkout.build(tmp_path / "optimum-neuron")
    argv = ["new-model", "mistral", "--repo", str(root), "--test-model", "someone/mistral-tiny"]
    status, out = run(argv)
    assert status == 0, out
    package = root / TRAINING_DIR / "mistral"
    assert sorted(p.name for p in package.iterdir()) == [RECORD_FILE, "__init__.py", "modeling_mistral.py"]
    auto = (root / AUTO_MODELS).read_text()
    assert 'register_neuron_model_for_training("mistral", "text-generation")(MistralForCausalLM)' in auto
    assert "optimum/neuron/models/training/auto_models.py: imported MistralForCausalLM, MistralModel" in out
    assert "docs/source/supported_architectures.mdx: added Mistral to the training table" in out
    assert out.endswith(f"Next: python -m conformance mistral --package {package}\n")
    after_first = mini_checkout.snapshot(root)

    status, out = run([*argv, "--force"])
    assert status == 0
    assert mini_checkout.snapshot(root) == after_first  # same package bytes, no registration change
    assert out.count("already registered, unchanged") == 5 and "already listed, unchanged" in out


LONG_TEST_MODEL = (
    "a-rather-long-organisation-name/mistral-tiny-random-4kv-heads-4layers-for-optimum-neuron-ci"
)


@pytest.mark.parametrize("test_model", ["someone/m", LONG_TEST_MODEL])
def test_repo_output_is_what_a_maintainer_merges(tmp_path: Path, fast_emit, test_model: str):
    root = mini_checkout.build(tmp_path / "optimum-neuron")
    argv = ["new-model", "mistral", "--repo", str(root), "--test-model", test_model]
    assert run(argv)[0] == 0
    for command in (["check", "."], ["format", "--check", "."]):  # the checkout's own ruff and settings
        result = subprocess.run([find_ruff_bin(), *command], cwd=root, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout
    package = root / TRAINING_DIR / "mistral"
    modeling = (package / "modeling_mistral.py").read_text()
    configuration = (located("mistral").modeling_file.parent / "configuration_mistral.py").read_text()
    license_end = configuration.index("# limitations under the License.\n") + len(
        "# limitations under the License.\n"
    )
    assert modeling.startswith(configuration[:license_end])  # transformers' mistral license, on top
    assert {p.name for p in package.iterdir() if p.stat().st_size > 4096} == {"modeling_mistral.py"}
    written = mini_checkout.snapshot(root)
    assert not [name for name, data in written.items() if b"<org>/" in data]  # no placeholder anywhere
    assert not [name for name, data in written.items() if str(tmp_path).encode() in data]  # no machine path
    assert run([*argv, "--force"])[0] == 0
    assert mini_checkout.snapshot(root) == written


def test_a_hand_written_package_is_never_overwritten(
    tmp_path: Path, fast_emit, capsys: pytest.CaptureFixture[str]
):
    root = mini_checkout.build(tmp_path / "optimum-neuron")  # its llama is optimum-neuron's own
    before = mini_checkout.snapshot(root)
    assert run(["new-model", "llama", "--repo", str(root), "--force"])[0] == EXIT_ERROR
    err = capsys.readouterr().err
    assert f"{root / TRAINING_DIR / 'llama'} was not generated by nxd-scaffold (no {RECORD_FILE})" in err
    assert "never overwritten, not even with --force" in err
    assert mini_checkout.snapshot(root) == before
    status, out = run(["new-model", "llama", "--repo", str(root), "--diff"])  # comparing is harmless
    assert status == 0 and "+++ b/optimum/neuron/models/training/llama/modeling_llama.py" in out
    assert mini_checkout.snapshot(root) == before


def test_repo_with_a_missing_anchor_writes_nothing(
    tmp_path: Path, fast_emit, capsys: pytest.CaptureFixture[str]
):
    root = mini_checkout.build(tmp_path)
    overfit = root / "tests/training/test_overfit.py"
    overfit.write_text(
        overfit.read_text().replace("def test_overfit_custom_modeling_causal_lm", "def test_other")
    )
    before = mini_checkout.snapshot(root)
    assert run(["new-model", "mistral", "--repo", str(root), *no_rules()])[0] == EXIT_ERROR
    err = capsys.readouterr().err
    assert (
        "tests/training/test_overfit.py: no top-level function `test_overfit_custom_modeling_causal_lm`"
        in err
    )
    assert mini_checkout.snapshot(root) == before


def test_repo_diff_shows_the_registration(tmp_path: Path, fast_emit):
    root = mini_checkout.build(tmp_path)
    before = mini_checkout.snapshot(root)
    status, out = run(["new-model", "mistral", "--repo", str(root), "--diff", *no_rules()])
    assert status == 0 and mini_checkout.snapshot(root) == before
    assert "+++ b/optimum/neuron/models/training/mistral/modeling_mistral.py" in out
    assert '+register_neuron_model_for_training("mistral", "model")(MistralModel)' in out
    assert '+    ("MistralForCausalLM", "<org>/mistral-tiny-random"),' in out


def test_repo_that_is_not_a_checkout(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert run(["new-model", "mistral", "--repo", str(tmp_path)])[0] == EXIT_ERROR
    assert "is not an optimum-neuron checkout" in capsys.readouterr().err


def test_rules_table_and_one_rule(capsys: pytest.CaptureFixture[str]):
    status, out = run(["rules"])
    assert status == 0
    for rule in RULES:
        assert rule.CODE in out and rule.NAME in out
    rule = RULES[0]
    status, out = run(["rules", rule.NAME])
    assert status == 0 and out.startswith(f"{rule.CODE} {rule.NAME}: {rule.SUMMARY}")
    assert run(["rules", "NXS999"])[0] == EXIT_ERROR
    assert "unknown code 'NXS999'" in capsys.readouterr().err


def test_help_lists_the_options():
    result = subprocess.run(
        [sys.executable, "-m", "scaffold", "new-model", "--help"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0
    for option in (
        "--repo PATH",
        "--out DIR",
        "--diff",
        "--dry-run",
        "--force",
        "--allow-unsupported",
        "--disable CODE",
        "--source FILE",
    ):
        assert option in result.stdout
