"""What the structural rules (NXS001-NXS013) leave in each target model's file, checked with Python's `ast`
against hand-written expectations, plus the partial evaluation of NXS002 and refusals on small inputs.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import libcst as cst
import pytest
from libcst.codemod import CodemodContext

from scaffold.analysis import analyze
from scaffold.pipeline import apply_rules
from scaffold.rules import RULES, rule_by_key
from scaffold.rules.kv_cache import strip_cache
from scaffold.source import locate
from scaffold.syntax import absolute_name

from ..conftest import TARGETS, blueprint_of, located
from ..synthetic import model_source
from .pipeline_states import module_after, module_before

LAST = "NXS013"  # the last structural rule; NXS020+ rewrite the attention and MLP internals
FINAL = "NXS030"  # the last rule: imports nothing uses any more go
PREFIX = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2", "qwen3": "Qwen3", "granite": "Granite"}
# Hand-written: the classes that build parallel layers or SP norms (so take trn_config), and the others.
WITH_TRN_CONFIG = ("MLP", "Attention", "DecoderLayer", "Model", "ForCausalLM")
WITHOUT_TRN_CONFIG = ("RMSNorm", "RotaryEmbedding", "PreTrainedModel")
HOST_MODULES = {
    "config",
    "modeling_utils",
    "transformations_utils",
    "loss_utils",
    "masking_utils",
    "training_utils",
}
ALLOWED_ROOTS = {"torch", "transformers", "neuronx_distributed", "functools", "typing", "math"}


def _tree(model_type: str, code: str = LAST) -> ast.Module:
    return ast.parse(module_after(model_type, code).code)


def _classes(tree: ast.Module) -> dict[str, ast.ClassDef]:
    return {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}


def _init(cls: ast.ClassDef) -> ast.FunctionDef:
    (init,) = [node for node in cls.body if isinstance(node, ast.FunctionDef) and node.name == "__init__"]
    return init


@pytest.mark.parametrize("model_type", TARGETS)
def test_pruning_keeps_exactly_the_training_closure(model_type: str):
    blueprint = blueprint_of(model_type)
    tree = _tree(model_type, "NXS001")  # parses
    classes = [node.name for node in tree.body if isinstance(node, ast.ClassDef)]
    functions = [node.name for node in tree.body if isinstance(node, ast.FunctionDef)]
    prefix = PREFIX[model_type]
    expected = {prefix + suffix for suffix in (*WITH_TRN_CONFIG, *WITHOUT_TRN_CONFIG)}
    assert set(classes) == expected
    assert functions == ["rotate_half", "apply_rotary_pos_emb", "repeat_kv", "eager_attention_forward"]
    assert set(classes) == {plan.name for plan in blueprint.classes}
    code = "\n".join(
        ast.unparse(node) for node in tree.body if not isinstance(node, ast.Import | ast.ImportFrom)
    )
    for gone in ("GenerationMixin", "@auto_docstring", "@check_model_inputs", "_can_record_outputs", ">>>"):
        assert gone not in code, gone
    assert "@can_return_tuple" in code  # kept, as in optimum-neuron's hand-written models
    header = module_after(model_type, "NXS001").code.split("\nimport ", 1)[0]
    assert "automatically generated from" not in header  # the modular converter's "do not edit" banner
    licensed = "Licensed under the Apache License" in located(model_type).read_text()
    assert ("Licensed under the Apache License" in header) == licensed  # the license header stays


@pytest.mark.parametrize("model_type", TARGETS)
def test_no_cache_is_left(model_type: str):
    code = module_after(model_type, FINAL).code  # unused imports go last (NXS030)
    found = re.findall(
        r"\b(past_key_values?|use_cache|DynamicCache|Cache|cache_utils|logits_to_keep)\b", code
    )
    assert not found


@pytest.mark.parametrize("model_type", TARGETS)
def test_imports_are_absolute_or_the_host(model_type: str):
    after_imports = _tree(model_type, "NXS003")
    assert all(node.level == 0 for node in ast.walk(after_imports) if isinstance(node, ast.ImportFrom))
    tree = _tree(model_type, FINAL)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            assert node.level == 2 and node.module in HOST_MODULES, ast.unparse(node)
        elif isinstance(node, ast.ImportFrom):
            assert node.module.split(".")[0] in ALLOWED_ROOTS, ast.unparse(node)
        elif isinstance(node, ast.Import):
            assert all(alias.name.split(".")[0] in ALLOWED_ROOTS for alias in node.names), ast.unparse(node)
    imported = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    used = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    assert imported <= used, f"unused imports: {sorted(imported - used)}"


@pytest.mark.parametrize("model_type", TARGETS)
def test_trn_config_is_taken_stored_and_passed_on(model_type: str):
    classes = _classes(_tree(model_type))
    prefix = PREFIX[model_type]
    needing = {prefix + suffix for suffix in WITH_TRN_CONFIG}
    for name in needing:
        init = _init(classes[name])
        assert [arg.arg for arg in init.args.args[:3]] == ["self", "config", "trn_config"], name
        assert ast.unparse(init.args.args[2].annotation) == "TrainingNeuronConfig"
        stores = [ast.unparse(node) for node in ast.walk(init) if isinstance(node, ast.Assign)]
        assert "self.trn_config = trn_config" in stores, name
        for call in (node for node in ast.walk(init) if isinstance(node, ast.Call)):
            if isinstance(call.func, ast.Name) and call.func.id in needing:
                passed = [ast.unparse(arg) for arg in call.args] + [keyword.arg for keyword in call.keywords]
                assert "trn_config" in passed, ast.unparse(call)
    for suffix in WITHOUT_TRN_CONFIG:
        assert "trn_config" not in ast.unparse(classes[prefix + suffix]), suffix


@pytest.mark.parametrize("model_type", TARGETS)
def test_models_are_neuron_models(model_type: str):
    classes = _classes(_tree(model_type))
    prefix = PREFIX[model_type]
    for name in (f"{prefix}Model", f"{prefix}ForCausalLM"):
        assert [ast.unparse(base) for base in classes[name].bases] == [
            "NeuronModelMixin",
            f"{prefix}PreTrainedModel",
        ]
    pretrained = {
        ast.unparse(node.targets[0]): ast.unparse(node.value)
        for node in classes[f"{prefix}PreTrainedModel"].body
        if isinstance(node, ast.Assign)
    }
    assert pretrained["config_class"] == pretrained["config"] == f"{prefix}Config"
    assert (pretrained["_supports_sdpa"], pretrained["_supports_flex_attn"]) == ("False", "False")
    assert (pretrained["_supports_flash_attn"], pretrained["_can_compile_fullgraph"]) == ("True", "False")
    causal = {
        ast.unparse(node.targets[0]): ast.unparse(node.value)
        for node in classes[f"{prefix}ForCausalLM"].body
        if isinstance(node, ast.Assign)
    }
    assert causal == {
        "_tied_weights_keys": "['lm_head.weight']",
        "SUPPORTS_PIPELINE_PARALLELISM": "True",
        "PIPELINE_TRANSFORMER_LAYER_CLS": f"{prefix}DecoderLayer",
        "PIPELINE_INPUT_NAMES": "['input_ids', 'attention_mask', 'labels']",
        "PIPELINE_LEAF_MODULE_CLASSE_NAMES": f"['{prefix}RMSNorm', '{prefix}RotaryEmbedding']",
    }


@pytest.mark.parametrize("code", [rule.CODE for rule in RULES if rule.CODE <= LAST])
def test_structural_rules_are_deterministic(code: str):
    before = module_before("llama", code)
    again = apply_rules(blueprint_of("llama"), before, rules=[rule_by_key(code)])
    assert again.code == module_after("llama", code).code


def test_relative_imports_resolve_against_the_source_package():
    assert absolute_name("...activations", "transformers.models.llama") == "transformers.activations"
    assert absolute_name(".configuration_llama", "transformers.models.llama") == (
        "transformers.models.llama.configuration_llama"
    )
    assert absolute_name("..", "transformers.models.llama") == "transformers.models"
    with pytest.raises(ValueError, match="leaves the package"):
        absolute_name("....x", "transformers.models.llama")


# --- NXS002 on small inputs -----------------------------------------------------------------------------

CACHED = """
from ...masking_utils import create_causal_mask


class Model:
    def forward(self, x, past_key_values=None, use_cache=None, cache_position=None, **kwargs):
        use_cache = use_cache if use_cache is not None else self.config.use_cache
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache()
        if cache_position is None:
            seen = past_key_values.get_seq_length() if past_key_values is not None else 0
            cache_position = torch.arange(seen, seen + x.shape[1])
        mask = create_causal_mask(x, cache_position=cache_position, past_key_values=past_key_values)
        x = self.layer(x, mask, past_key_values=past_key_values, use_cache=use_cache, cache_position=cache_position)
        return Output(x, past_key_values=past_key_values if use_cache else None)
"""

CACHE_FREE = """
from ...masking_utils import create_causal_mask


class Model:
    def forward(self, x, **kwargs):
        cache_position = torch.arange(0, x.shape[1])
        mask = create_causal_mask(x, cache_position=cache_position, past_key_values=None)
        x = self.layer(x, mask)
        return Output(x)
"""


def _drop_cache(source: str) -> str:
    rule = rule_by_key("NXS002")
    return rule(CodemodContext(), blueprint_of("llama")).transform_module(cst.parse_module(source)).code


def test_cache_plumbing_is_evaluated_away():
    assert _drop_cache(CACHED) == CACHE_FREE


def test_a_cache_use_the_rule_does_not_understand_is_left_dangling():
    """A read that uses the cache (not one that passes its absent value on) is left for R019."""
    source = CACHED.replace(
        "return Output(", "self.keep = past_key_values.get_seq_length()\n        return Output("
    )
    (forward,) = [node for node in cst.parse_module(source).body[1].body.body]  # type: ignore[attr-defined]
    _, dangling = strip_cache(forward, ("create_causal_mask",))
    assert dangling == {"past_key_values"}


# --- generality and refusals on a model with unusual names -------------------------------------------------


def test_rules_follow_the_blueprint_not_names(tmp_path: Path):
    """A llama-like model whose classes and attributes share no names with transformers' Llama."""
    path = tmp_path / "modeling_synthetic.py"
    path.write_text(model_source())
    blueprint = analyze(locate("llama", source=path))
    module = apply_rules(
        blueprint, cst.parse_module(path.read_text()), rules=[r for r in RULES if r.CODE < LAST]
    )
    classes = _classes(ast.parse(module.code))
    for name in ("Mixer", "Feed", "Block", "LlamaModel", "LlamaForCausalLM"):
        assert [arg.arg for arg in _init(classes[name]).args.args[:3]] == ["self", "config", "trn_config"]
    assert "trn_config" not in ast.unparse(classes["Norm"].body[0].args)  # takes the SP flag, not the config
    body = ast.unparse(classes["LlamaModel"])
    assert "self.tok = ParallelEmbedding(" in body  # `tnn.Embedding`, found through the Blueprint's site
    assert "h = checkpoint_with_kwargs(block, h)" in body
    assert "self.weight.sequence_parallel_enabled = sequence_parallel_enabled" in ast.unparse(classes["Norm"])
    # Its head returns raw logits and computes no loss: the vocab-parallel loss has nothing to replace,
    # which the analysis says before any rule runs (R023, at the head's forward).
    (refusal,) = [refusal for refusal in blueprint.refusals if refusal.code == "R023"]
    assert refusal.subject == "LlamaForCausalLM" and refusal.rules == ("NXS013",)
    assert path.read_text().splitlines()[refusal.location.line - 1].strip() == "def forward(self, input_ids):"
