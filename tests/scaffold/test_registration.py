"""Registration edits in a miniature optimum-neuron checkout: content, placement, idempotence, anchors,
the test checkpoint, the docs table, and the checkout's own ruff."""

from __future__ import annotations

import ast
import dataclasses
import difflib
import subprocess
from pathlib import Path

import pytest
from ruff import find_ruff_bin

from scaffold.errors import ScaffoldError
from scaffold.registration import (
    AUTO_MODELS,
    CUSTOM_MODELING_TEST,
    MODELING_AUTO_TEST,
    OVERFIT_TEST,
    TRAINING_INIT,
    ModelNames,
    model_package_dir,
    plan_registration,
)
from scaffold.supported_architectures import DOCS_PAGE

from . import mini_checkout

MISTRAL = ModelNames(
    model_type="mistral",
    package_name="mistral",
    modeling_module="modeling_mistral",
    base_model_class="MistralModel",
    causal_lm_class="MistralForCausalLM",
    test_model="someone/mistral-tiny",
    display_name="Mistral",
    pipeline_parallelism=True,
    replaceable_test_models=("<org>/mistral-tiny-random",),
)


def _register(root: Path, names: ModelNames = MISTRAL) -> dict[Path, bytes]:
    registration = plan_registration(root, names)
    for path, data in registration.files.items():
        path.write_bytes(data)
    return registration.files


def _line(text: str, start: str) -> int:
    """1-based line of the first line of a fixture text that starts with `start`."""
    return next(number for number, line in enumerate(text.splitlines(), 1) if line.startswith(start))


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text())


def _calls(module: ast.Module) -> list[tuple[str, str, str]]:
    """(model type, task, class) of each registration call, in file order."""
    found = []
    for node in module.body:
        if (
            isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Call)
            and isinstance(node.value.func, ast.Call)
        ):
            inner = node.value.func
            if getattr(inner.func, "id", None) == "register_neuron_model_for_training":
                found.append((inner.args[0].value, inner.args[1].value, node.value.args[0].id))
    return found


def _relative_imports(module: ast.Module) -> list[tuple[str, list[str]]]:
    return [
        (node.module or "", [alias.name for alias in node.names])
        for node in module.body
        if isinstance(node, ast.ImportFrom) and node.level == 1
    ]


def test_registers_in_auto_models_after_each_task_group(tmp_path: Path):
    root = mini_checkout.build(tmp_path)
    _register(root)
    module = _tree(root / AUTO_MODELS)
    assert _calls(module) == [
        ("llama", "model", "LlamaModel"),
        ("granite", "model", "GraniteModel"),
        ("qwen3", "model", "Qwen3Model"),
        ("mistral", "model", "MistralModel"),
        ("llama", "text-generation", "LlamaForCausalLM"),
        ("granite", "text-generation", "GraniteForCausalLM"),
        ("qwen3", "text-generation", "Qwen3ForCausalLM"),
        ("mistral", "text-generation", "MistralForCausalLM"),
    ]
    imports = _relative_imports(module)
    assert [name for name, _ in imports] == sorted(name for name, _ in imports)  # isort order kept
    assert ("mistral.modeling_mistral", ["MistralForCausalLM", "MistralModel"]) in imports
    text = (root / AUTO_MODELS).read_text()
    # The new call joins its group; the comment heading the next group stays with that group.
    assert '(MistralModel)\n\n# Causal LMs\nregister_neuron_model_for_training("llama"' in text


def test_only_the_registration_lines_are_added(tmp_path: Path):
    root = mini_checkout.build(tmp_path)
    _register(root)
    for relative, original in mini_checkout.FILES.items():
        old_lines, new_lines = original.splitlines(), (root / relative).read_text().splitlines()
        for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=old_lines, b=new_lines).get_opcodes():
            assert tag in ("equal", "insert", "replace"), (relative, old_lines[i1:i2])
            if tag == "replace":  # only an inline list may change in place: it gets one more element
                assert [
                    line.replace(', "someone/mistral-tiny"', "") for line in new_lines[j1:j2]
                ] == old_lines[i1:i2]


def test_training_init_imports_the_causal_lm_in_order(tmp_path: Path):
    root = mini_checkout.build(tmp_path)
    _register(root)
    imports = _relative_imports(_tree(root / TRAINING_INIT))
    assert [name for name, _ in imports] == [
        "",
        "config",
        "granite.modeling_granite",
        "llama.modeling_llama",
        "mistral.modeling_mistral",
        "modeling_auto",
        "qwen3.modeling_qwen3",
        "training_utils",
        "transformations_utils",
    ]
    # optimum-neuron's own models are imported there by their causal LM only
    assert dict(imports)["llama.modeling_llama"] == ["LlamaForCausalLM"]
    assert dict(imports)["mistral.modeling_mistral"] == ["MistralForCausalLM"]


def test_training_init_all_is_extended_when_present(tmp_path: Path):
    root = mini_checkout.build(tmp_path)
    init = root / TRAINING_INIT
    init.write_text(
        init.read_text() + '\n__all__ = [\n    "LlamaForCausalLM",\n    "TrainingNeuronConfig",\n]\n'
    )
    _register(root)
    namespace: dict = {}
    exec(init.read_text().split("__all__", 1)[1].join(["__all__", ""]), namespace)
    assert namespace["__all__"] == [
        "LlamaForCausalLM",
        "TrainingNeuronConfig",
        "MistralForCausalLM",
    ]
    assert '    "TrainingNeuronConfig",\n    "MistralForCausalLM",\n]' in init.read_text()


def test_test_lists_get_the_model(tmp_path: Path):
    root = mini_checkout.build(tmp_path)
    _register(root)
    namespace: dict = {}
    exec(compile((root / CUSTOM_MODELING_TEST).read_text().split("\n\n\n@")[0], "t", "exec"), namespace)
    assert namespace["CUSTOM_MODELINGS_TO_TEST"][-1] == ("MistralForCausalLM", "someone/mistral-tiny")
    assert len(namespace["CUSTOM_MODELINGS_TO_TEST"]) == 4

    overfit = _tree(root / OVERFIT_TEST).body[1]
    assert isinstance(overfit, ast.FunctionDef)
    parametrize = overfit.decorator_list[0]
    rows = ast.literal_eval(parametrize.args[1].elts[-1])
    assert rows == ["MistralForCausalLM", "someone/mistral-tiny", 1e-4, 0.03, {}, True, 0.5, 2048, 50]
    assert len(parametrize.args[0].value.split(",")) == len(rows)
    ids = ast.literal_eval(parametrize.keywords[0].value)
    assert ids[-1] == "someone/mistral-tiny" and len(ids) == len(parametrize.args[1].elts)

    loops = [node for node in ast.walk(_tree(root / MODELING_AUTO_TEST)) if isinstance(node, ast.For)]
    assert [ast.literal_eval(loop.iter)[-1] for loop in loops] == ["someone/mistral-tiny"] * 2
    assert [len(loop.iter.elts) for loop in loops] == [4, 4]
    # the new overfit row is laid out like its neighbours: one value per line
    assert (
        '        [\n            "MistralForCausalLM",\n            "someone/mistral-tiny",\n'
        in (root / OVERFIT_TEST).read_text()
    )


def test_second_run_changes_nothing(tmp_path: Path):
    root = mini_checkout.build(tmp_path)
    assert set(_register(root)) == {root / path for path in mini_checkout.EDITED}
    after_first = mini_checkout.snapshot(root)
    second = plan_registration(root, MISTRAL)
    assert second.files == {}
    assert all(
        note.endswith(("already registered, unchanged", "already listed, unchanged")) for note in second.notes
    )
    assert mini_checkout.snapshot(root) == after_first


def test_a_model_already_present_in_part_gets_the_rest(tmp_path: Path):
    root = mini_checkout.build(tmp_path)
    auto = root / AUTO_MODELS
    auto.write_text(
        auto.read_text().replace(
            "from .qwen3", "from .mistral.modeling_mistral import MistralModel\nfrom .qwen3"
        )
    )
    _register(root)
    imports = dict(_relative_imports(_tree(auto)))
    assert imports["mistral.modeling_mistral"] == ["MistralForCausalLM", "MistralModel"]
    assert auto.read_text().count("modeling_mistral") == 1


def test_registration_under_another_class_is_refused(tmp_path: Path):
    root = mini_checkout.build(tmp_path)
    names = ModelNames("llama", "llama", "modeling_llama", "OtherModel", "LlamaForCausalLM", "x/y", "Llama")
    with pytest.raises(
        ScaffoldError, match=r"auto_models\.py:\d+: 'llama' is already registered for 'model' as LlamaModel"
    ):
        plan_registration(root, names)


@pytest.mark.parametrize(
    ("relative", "old", "new", "message"),
    [
        (
            AUTO_MODELS,
            "def register_neuron_model_for_training",
            "def register_for_training",
            "no `register_neuron_model_for_training` defined or imported",
        ),
        (
            AUTO_MODELS,
            '"text-generation")(',
            '"causal-lm")(',
            'no `register_neuron_model_for_training(..., "text-generation")(...)` line',
        ),
        (
            TRAINING_INIT,
            "from . import auto_models",
            "from . import config_utils",
            "does not import `auto_models`",
        ),
        (
            CUSTOM_MODELING_TEST,
            "CUSTOM_MODELINGS_TO_TEST = [",
            "MODELS = [",
            "no top-level `CUSTOM_MODELINGS_TO_TEST = [...]` list",
        ),
        (
            OVERFIT_TEST,
            '"model_class_name,model_name_or_path',
            '"model_name_or_path,model_class_name',
            f":{_line(mini_checkout.OVERFIT_TEST, 'def test_overfit_custom_modeling_causal_lm')}: "
            "test_overfit_custom_modeling_causal_lm has no `@pytest.mark.parametrize",
        ),
        (
            OVERFIT_TEST,
            "training_kwargs,use",
            "extra_kwargs,use",
            f":{_line(mini_checkout.OVERFIT_TEST, '@pytest.mark.parametrize(')}: unknown overfit parameter(s) extra_kwargs",
        ),
        (
            MODELING_AUTO_TEST,
            "def test_auto_model_for_causal_lm_with_supported",
            "def test_causal_lm_with_supported",
            "no top-level function `test_auto_model_for_causal_lm_with_supported_architecture`",
        ),
        (
            MODELING_AUTO_TEST,
            '    for model_name_or_path in [\n        "someone',
            '    for model_name_or_path in tuple([\n        "someone',
            f":{_line(mini_checkout.MODELING_AUTO_TEST, 'def test_auto_model_with_supported_architecture')}: "
            "test_auto_model_with_supported_architecture has no `for ... in [<checkpoints>]:` loop",
        ),
    ],
)
def test_missing_anchor_is_refused_with_its_place(
    tmp_path: Path, relative: Path, old: str, new: str, message: str
):
    root = mini_checkout.build(tmp_path)
    path = root / relative
    text = path.read_text()
    assert old in text
    path.write_text(
        text.replace(old, new, 1).replace("]:\n        print", "]):\n        print", 1)
        if "tuple([" in new
        else text.replace(old, new)
    )
    before = mini_checkout.snapshot(root)
    with pytest.raises(ScaffoldError) as caught:
        plan_registration(root, MISTRAL)
    assert str(caught.value).startswith(str(relative))
    assert message in str(caught.value)
    assert mini_checkout.snapshot(root) == before


def test_missing_file_and_non_checkout_are_refused(tmp_path: Path):
    with pytest.raises(
        ScaffoldError,
        match=r"is not an optimum-neuron checkout: optimum/neuron/models/training/auto_models\.py is missing",
    ):
        model_package_dir(tmp_path, "mistral")
    root = mini_checkout.build(tmp_path)
    assert model_package_dir(root, "mistral") == root / "optimum/neuron/models/training/mistral"
    (root / OVERFIT_TEST).unlink()
    with pytest.raises(ScaffoldError, match=r"tests/training/test_overfit\.py: missing from"):
        plan_registration(root, MISTRAL)


def test_line_endings_are_kept(tmp_path: Path):
    root = mini_checkout.build(tmp_path)
    auto = root / AUTO_MODELS
    auto.write_bytes(auto.read_bytes().replace(b"\n", b"\r\n"))
    _register(root)
    data = auto.read_bytes()
    assert b"MistralModel)\r\n" in data and data.count(b"\n") == data.count(b"\r\n")
    assert plan_registration(root, MISTRAL).files == {}


def _ruff_in_checkout(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """ruff as the checkout's maintainers run it: from its root, with its pyproject settings."""
    return subprocess.run([find_ruff_bin(), *args], cwd=root, capture_output=True, text=True, check=False)


@pytest.mark.parametrize(
    "test_model",
    [
        "a/b",
        "some-very-long-organisation-name/mistral-tiny-random-4kv-heads-4layers-checkpoint-for-ci-runs",
    ],
)
def test_edited_files_pass_the_checkouts_own_ruff(tmp_path: Path, test_model: str):
    root = mini_checkout.build(tmp_path)
    assert _ruff_in_checkout(root, "check", ".").returncode == 0  # the fixture is clean, as upstream is
    long_names = dataclasses.replace(
        MISTRAL,
        test_model=test_model,
        package_name="mistral_with_a_rather_long_package_name_for_wrapping",
        modeling_module="modeling_mistral_with_a_rather_long_package_name_for_wrapping",
        causal_lm_class="MistralWithARatherLongPackageNameForWrappingForCausalLM",
        base_model_class="MistralWithARatherLongPackageNameForWrappingModel",
    )
    _register(root, long_names)
    checked = _ruff_in_checkout(root, "check", ".")
    formatted = _ruff_in_checkout(root, "format", "--check", ".")
    assert checked.returncode == 0, checked.stdout
    assert formatted.returncode == 0, formatted.stdout
    overfit = _tree(root / OVERFIT_TEST).body[1]
    assert isinstance(overfit, ast.FunctionDef)
    assert ast.literal_eval(overfit.decorator_list[0].args[1].elts[-1])[1] == test_model


def _entries(root: Path, test_model: str) -> int:
    """How often `test_model` appears as a string literal in the three test files."""
    count = 0
    for relative in (CUSTOM_MODELING_TEST, OVERFIT_TEST, MODELING_AUTO_TEST):
        for node in ast.walk(_tree(root / relative)):
            count += isinstance(node, ast.Constant) and node.value == test_model
    return count


def test_a_new_test_model_replaces_the_placeholder_in_every_list(tmp_path: Path):
    root = mini_checkout.build(tmp_path)
    placeholder = "<org>/mistral-tiny-random"
    _register(root, dataclasses.replace(MISTRAL, test_model=placeholder))
    # one entry in the custom-modeling list, the overfit row and its id, the two auto-model loops
    assert _entries(root, placeholder) == 5
    registration = plan_registration(root, MISTRAL)  # MISTRAL may replace the placeholder
    for path, data in registration.files.items():
        path.write_bytes(data)
    assert _entries(root, placeholder) == 0
    assert _entries(root, "someone/mistral-tiny") == 5
    assert (
        len(
            [
                n
                for n in registration.notes
                if "replaced <org>/mistral-tiny-random by someone/mistral-tiny" in n
            ]
        )
        == 3
    )
    assert plan_registration(root, MISTRAL).files == {}


def test_a_checkpoint_set_by_hand_is_kept(tmp_path: Path):
    root = mini_checkout.build(tmp_path)
    _register(root, dataclasses.replace(MISTRAL, test_model="maintainer/choice"))
    # a later run whose test model is new, but which may only replace the placeholder
    assert plan_registration(root, dataclasses.replace(MISTRAL, test_model="other/x")).files.keys() == {
        root / MODELING_AUTO_TEST  # the loops are lists of ids: the new id is added beside the kept one
    }
    assert _entries(root, "maintainer/choice") == 5


def test_the_docs_table_gets_a_padded_row(tmp_path: Path):
    root = mini_checkout.build(tmp_path)
    _register(root)
    lines = (root / DOCS_PAGE).read_text(encoding="utf-8").splitlines()
    granite = lines.index(
        "| Granite                  | text-generation | ✓                  | ✗                    |"
    )
    assert (
        lines[granite + 1]
        == "| Mistral                  | text-generation | ✓                  | ✓                    |"
    )
    assert lines[granite + 2] == ""
    _register(root, dataclasses.replace(MISTRAL, display_name="Llama 2"))  # named among "Llama, Llama 2, ..."
    assert (root / DOCS_PAGE).read_text(encoding="utf-8").count("| Llama 2 ") == 0


def test_a_docs_page_without_the_training_table_is_refused(tmp_path: Path):
    root = mini_checkout.build(tmp_path)
    page = root / DOCS_PAGE
    page.write_text(
        page.read_text(encoding="utf-8").replace("## Training", "## Fine-tuning"), encoding="utf-8"
    )
    before = mini_checkout.snapshot(root)
    with pytest.raises(
        ScaffoldError, match=r"docs/source/supported_architectures\.mdx: no `## Training` section"
    ):
        plan_registration(root, MISTRAL)
    assert mini_checkout.snapshot(root) == before
