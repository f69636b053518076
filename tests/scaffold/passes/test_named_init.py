"""NXS016 parallel-named-init: hand-written before/after snippets, and transformers' GPT-2 as the oracle of
the std the generated c_proj layers draw from."""

from __future__ import annotations

import math

import libcst as cst
import torch
from transformers import GPT2Config, GPT2Model

from scaffold.blueprint import ClassKind
from scaffold.rules.parallel_named_init import ParallelNamedInit

from .toy import RuleTest, blueprint, klass

PLAN = blueprint(classes=[klass("ToyMLP"), klass("ToyPreTrainedModel", ClassKind.PRETRAINED)])

MLP = """
import math
from functools import partial

from torch import nn


class ToyMLP(nn.Module):
    def __init__(self, config, trn_config):
        super().__init__()
        init_method = partial(_init_normal, config.initializer_range)
        self.up = ColumnParallelLinear(config.hidden_size, 4, bias=False, init_method=init_method)
        self.down_proj = RowParallelLinear(4, config.hidden_size, bias=False, init_method=init_method)
        self.extra = nn.Linear(4, 4)


class ToyPreTrainedModel(PreTrainedModel):
    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            module.weight.data.normal_(mean=0.0, std=self.config.initializer_range)

        # scaled init of the residual projections
        for name, p in module.named_parameters():
            if {test}:
                {draw}
"""

MLP_AFTER = """
import math
from functools import partial

from torch import nn


class ToyMLP(nn.Module):
    def __init__(self, config, trn_config):
        super().__init__()
        init_method = partial(_init_normal, config.initializer_range)
        self.up = ColumnParallelLinear(config.hidden_size, 4, bias=False, init_method=init_method)
        # the std of _init_weights' re-draw of down_proj.weight (NxD draws the full weight, then slices it)
        self.down_proj = RowParallelLinear(
            4,
            config.hidden_size,
            bias=False,
            init_method=partial(_init_normal, config.initializer_range / math.sqrt(2 * config.num_hidden_layers)),
        )
        self.extra = nn.Linear(4, 4)


class ToyPreTrainedModel(PreTrainedModel):
    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            module.weight.data.normal_(mean=0.0, std=self.config.initializer_range)
"""

STD = "(self.config.initializer_range / math.sqrt(2 * self.config.num_hidden_layers))"


def _mlp(test: str, draw: str) -> str:
    return MLP.replace("{test}", test).replace("{draw}", draw)


class TestParallelNamedInit(RuleTest):
    TRANSFORM = ParallelNamedInit

    def test_a_redraw_by_exact_name_becomes_the_layers_init_method(self) -> None:
        self.assertCodemod(
            _mlp('name == "down_proj.weight"', f"p.data.normal_(mean=0.0, std={STD})"), MLP_AFTER, PLAN
        )

    def test_a_redraw_by_suffix_with_nn_init_reads_the_same(self) -> None:
        source = _mlp('name.endswith("proj.weight")', f"nn.init.normal_(p, mean=0.0, std={STD})")
        self.assertCodemod(source, MLP_AFTER, PLAN)

    def test_a_redraw_that_names_a_layer_that_is_no_parallel_linear_stays(self) -> None:
        self.assertUnchanged(_mlp('name == "extra.weight"', f"p.data.normal_(mean=0.0, std={STD})"), PLAN)

    def test_a_std_that_reads_a_local_stays(self) -> None:
        self.assertUnchanged(
            _mlp('name == "down_proj.weight"', "p.data.normal_(mean=0.0, std=p.shape[0])"), PLAN
        )

    def test_a_draw_with_another_mean_stays(self) -> None:
        self.assertUnchanged(_mlp('name == "down_proj.weight"', f"p.data.normal_(mean=1.0, std={STD})"), PLAN)

    def test_outside_the_pretrained_class_nothing_changes(self) -> None:
        plan = blueprint(classes=[klass("ToyMLP"), klass("ToyPreTrainedModel")])
        self.assertUnchanged(_mlp('name == "down_proj.weight"', f"p.data.normal_(mean=0.0, std={STD})"), plan)


def _generated_std(config: GPT2Config) -> float:
    """The std the rule's output for gpt2 gives the c_proj layers, evaluated with `config`."""
    from tests.scaffold.rules.pipeline_states import module_after  # the full pipeline on the real file

    module = module_after("gpt2", ParallelNamedInit.CODE)
    found: list[cst.BaseExpression] = []

    class Visitor(cst.CSTVisitor):
        def visit_Arg(self, node: cst.Arg) -> None:
            if (
                node.keyword is not None
                and node.keyword.value == "init_method"
                and isinstance(node.value, cst.Call)
            ):
                found.append(node.value.args[1].value)

    module.visit(Visitor())
    texts = {module.code_for_node(expression) for expression in found}
    assert len(texts) == 1, texts  # both c_proj layers, one std
    return eval(texts.pop(), {"math": math, "config": config})


def test_gpt2_c_proj_std_is_transformers_law() -> None:
    """transformers' GPT-2 built from a config: the pooled std of its c_proj weights is the std the
    generated layers draw from (well within 5%: over 10^6 samples the standard error is under 0.1%)."""
    config = GPT2Config(
        n_layer=6, n_embd=256, n_head=4, vocab_size=64, n_positions=16, initializer_range=0.05
    )
    torch.manual_seed(0)
    model = GPT2Model(config)
    weights = torch.cat(
        [p.detach().flatten() for name, p in model.named_parameters() if name.endswith("c_proj.weight")]
    )
    assert weights.numel() > 10**6
    expected = _generated_std(config)
    assert math.isclose(weights.std().item(), expected, rel_tol=0.05)
    assert not math.isclose(
        expected, config.initializer_range, rel_tol=0.05
    )  # the scaled law, not the default


BY_CLASS_PLAN = blueprint(
    classes=[klass("ToyMLP"), klass("ToyAttention"), klass("ToyPreTrainedModel", ClassKind.PRETRAINED)]
)

BY_CLASS = """
import math
from functools import partial

from torch import nn


class ToyMLP(nn.Module):
    def __init__(self, config, trn_config):
        super().__init__()
        init_method = partial(_init_normal, config.initializer_range)
        self.c_proj = RowParallelLinear(4, config.hidden_size, bias=False, init_method=init_method)


class ToyAttention(nn.Module):
    def __init__(self, config, trn_config):
        super().__init__()
        init_method = partial(_init_normal, config.initializer_range)
        self.c_proj = {attention_layer}


class ToyOther(nn.Module):
    def __init__(self, config, trn_config):
        super().__init__()
        init_method = partial(_init_normal, config.initializer_range)
        self.c_proj = RowParallelLinear(4, config.hidden_size, bias=False, init_method=init_method)


class ToyPreTrainedModel(PreTrainedModel):
    def _init_weights(self, module):
        if isinstance(module, (ToyMLP, ToyAttention)):
            # scaled init of the residual projections
            module.c_proj.weight.data.normal_(mean=0.0, std={std})
            module.c_proj._is_hf_initialized = True
        elif isinstance(module, nn.Linear):
            module.weight.data.normal_(mean=0.0, std=self.config.initializer_range)
"""

PARALLEL_LAYER = "RowParallelLinear(4, config.hidden_size, bias=False, init_method=init_method)"

BY_CLASS_AFTER = """
import math
from functools import partial

from torch import nn


class ToyMLP(nn.Module):
    def __init__(self, config, trn_config):
        super().__init__()
        init_method = partial(_init_normal, config.initializer_range)
        # the std of _init_weights' re-draw of c_proj.weight (NxD draws the full weight, then slices it)
        self.c_proj = RowParallelLinear(
            4,
            config.hidden_size,
            bias=False,
            init_method=partial(_init_normal, config.initializer_range / math.sqrt(2 * config.num_hidden_layers)),
        )


class ToyAttention(nn.Module):
    def __init__(self, config, trn_config):
        super().__init__()
        init_method = partial(_init_normal, config.initializer_range)
        # the std of _init_weights' re-draw of c_proj.weight (NxD draws the full weight, then slices it)
        self.c_proj = RowParallelLinear(
            4,
            config.hidden_size,
            bias=False,
            init_method=partial(_init_normal, config.initializer_range / math.sqrt(2 * config.num_hidden_layers)),
        )


class ToyOther(nn.Module):
    def __init__(self, config, trn_config):
        super().__init__()
        init_method = partial(_init_normal, config.initializer_range)
        self.c_proj = RowParallelLinear(4, config.hidden_size, bias=False, init_method=init_method)


class ToyPreTrainedModel(PreTrainedModel):
    def _init_weights(self, module):
        if isinstance(module, (ToyMLP, ToyAttention)):
            module.c_proj._is_hf_initialized = True
        elif isinstance(module, nn.Linear):
            module.weight.data.normal_(mean=0.0, std=self.config.initializer_range)
"""


def _by_class(std: str = STD, attention_layer: str = PARALLEL_LAYER) -> str:
    return BY_CLASS.replace("{std}", std).replace("{attention_layer}", attention_layer)


class TestParallelInitByClass(RuleTest):
    """GPTBigCode's form: the re-draw of one layer of the modules of some classes, in `_init_weights`' first
    branch; the std goes to that layer of those classes only (not `ToyOther`'s)."""

    TRANSFORM = ParallelNamedInit

    def test_a_redraw_by_class_becomes_those_classes_layers_init_method(self) -> None:
        self.assertCodemod(_by_class(), BY_CLASS_AFTER, BY_CLASS_PLAN)

    def test_a_class_whose_layer_is_no_parallel_linear_keeps_the_redraw(self) -> None:
        self.assertUnchanged(_by_class(attention_layer="nn.Linear(4, 4)"), BY_CLASS_PLAN)

    def test_a_std_that_reads_the_module_stays(self) -> None:
        self.assertUnchanged(_by_class(std="module.c_proj.weight.shape[0]"), BY_CLASS_PLAN)

    def test_a_branch_doing_anything_else_stays(self) -> None:
        source = _by_class().replace(
            "            module.c_proj._is_hf_initialized = True\n",
            "            module.c_proj._is_hf_initialized = True\n            module.c_proj.bias.data.zero_()\n",
        )
        self.assertUnchanged(source, BY_CLASS_PLAN)


def test_gpt_bigcode_c_proj_std_is_transformers_law() -> None:
    """transformers' GPTBigCode built from a config: the pooled std of its c_proj weights (attention and
    MLP) is the std the generated layers draw from."""
    from transformers import GPTBigCodeConfig, GPTBigCodeModel

    from tests.scaffold.rules.pipeline_states import module_after

    config = GPTBigCodeConfig(
        n_layer=6, n_embd=256, n_head=4, vocab_size=64, n_positions=16, initializer_range=0.05
    )
    torch.manual_seed(0)
    model = GPTBigCodeModel(config)
    weights = torch.cat(
        [p.detach().flatten() for name, p in model.named_parameters() if name.endswith("c_proj.weight")]
    )
    assert weights.numel() > 10**6
    module = module_after("gpt_bigcode", ParallelNamedInit.CODE)
    stds = set()

    class Visitor(cst.CSTVisitor):
        def visit_Assign(self, node: cst.Assign) -> None:
            target = node.targets[0].target
            if module.code_for_node(target) == "self.c_proj" and isinstance(node.value, cst.Call):
                for arg in node.value.args:
                    if arg.keyword is not None and arg.keyword.value == "init_method":
                        stds.add(module.code_for_node(arg.value.args[1].value))  # type: ignore[attr-defined]

    module.visit(Visitor())
    assert len(stds) == 1, stds  # both c_proj layers, one std
    expected = eval(stds.pop(), {"math": math, "config": config})
    assert math.isclose(weights.std().item(), expected, rel_tol=0.05)
    assert not math.isclose(expected, config.initializer_range, rel_tol=0.05)
