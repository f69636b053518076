"""NXS015 parallel-init-redraws: hand-written before/after snippets of `_init_weights` (child attributes,
parameter names, a split source linear), and what the rule must leave alone."""

from __future__ import annotations

import dataclasses
from textwrap import dedent

import libcst as cst
from libcst.codemod import CodemodContext

from scaffold.blueprint import Blueprint, ClassKind, SourceFusion
from scaffold.emit import format_python
from scaffold.rules.parallel_init_redraws import ParallelInitRedraws

from .toy import HERE, RuleTest, blueprint, klass

PLAN = blueprint(classes=[klass("ToyMLP"), klass("ToyPreTrainedModel", ClassKind.PRETRAINED)])
SPLIT = SourceFusion(
    owner="ToyMLP",
    source_name="Wi",
    part_names=("input_proj", "gate_proj"),
    part_sizes=("config.intermediate_size", "config.intermediate_size"),
    bias="False",
    location=HERE,
)

MLP = """
class ToyMLP(nn.Module):
    def __init__(self, config, trn_config):
        super().__init__()
        self.up = ColumnParallelLinear(config.hidden_size, 4, bias=False, init_method=init_method)
        self.Wo = RowParallelLinear(4, config.hidden_size, bias=False, init_method=init_method)
        self.dense = nn.Linear(4, 4)
"""

CHILDREN = """
class ToyPreTrainedModel(PreTrainedModel):
    def _init_weights(self, module):
        std = self.config.initializer_range

        def init_weight(module, std):
            nn.init.trunc_normal_(module.weight, std=std, a=-3 * std, b=3 * std)

        if isinstance(module, ToyMLP):
            init_weight(module.up, std)
            init_weight(module.Wo, std / 2)
            init_weight(module.dense, std)
            nn.init.normal_(module.up.weight, std=std) if module.Wo.bias is None else None
            module.Wo.weight.data.fill_(1.0)
            module.Wo._is_hf_initialized = True
        elif isinstance(module, nn.Linear):
            module.weight.data.normal_(mean=0.0, std=std)
"""

CHILDREN_AFTER = """
class ToyPreTrainedModel(PreTrainedModel):
    def _init_weights(self, module):
        std = self.config.initializer_range

        def init_weight(module, std):
            nn.init.trunc_normal_(module.weight, std=std, a=-3 * std, b=3 * std)

        if isinstance(module, ToyMLP):
            with full_weights(module.up):
                init_weight(module.up, std)
            with full_weights(module.Wo):
                init_weight(module.Wo, std / 2)
            init_weight(module.dense, std)
            with full_weights(module.up, module.Wo):
                nn.init.normal_(module.up.weight, std=std) if module.Wo.bias is None else None
            module.Wo.weight.data.fill_(1.0)
            module.Wo._is_hf_initialized = True
        elif isinstance(module, nn.Linear):
            module.weight.data.normal_(mean=0.0, std=std)
"""

NAMED = """
class ToyPreTrainedModel(PreTrainedModel):
    def _init_weights(self, module):
        for name, p in module.named_parameters():
            if name == "Wo.weight":
                # scaled
                p.data.normal_(mean=0.0, std=0.02 / math.sqrt(2 * self.config.n_layer))
        for name, q in module.named_parameters():
            q.data.uniform_(-0.1, 0.1)
        for name, parameter in module.named_parameters(recurse=False):
            if name.startswith("bias"):
                parameter.data.zero_()
"""

NAMED_AFTER = """
class ToyPreTrainedModel(PreTrainedModel):
    def _init_weights(self, module):
        for name, p in module.named_parameters():
            if name == "Wo.weight":
                with full_parameter(p) as p:
                    # scaled
                    p.data.normal_(mean=0.0, std=0.02 / math.sqrt(2 * self.config.n_layer))
        for name, q in module.named_parameters():
            with full_parameter(q) as q:
                q.data.uniform_(-0.1, 0.1)
        for name, parameter in module.named_parameters(recurse=False):
            if name.startswith("bias"):
                parameter.data.zero_()
"""

SPLIT_SOURCE = """
class ToyPreTrainedModel(PreTrainedModel):
    def _init_weights(self, module):
        if isinstance(module, ToyMLP):
            init_weight(module.Wi, self.config.initializer_range)
"""

SPLIT_SOURCE_AFTER = """
class ToyPreTrainedModel(PreTrainedModel):
    def _init_weights(self, module):
        if isinstance(module, ToyMLP):
            for part in ("input_proj", "gate_proj"):
                if hasattr(module, part):
                    with full_weights(getattr(module, part)):
                        init_weight(getattr(module, part), self.config.initializer_range)
"""


def _file(classes: str) -> str:
    return "import math\n\nfrom torch import nn\n\n\n" + dedent(MLP) + "\n\n" + dedent(classes)


def _run(classes: str, plan: Blueprint = PLAN) -> str:
    rule = ParallelInitRedraws(CodemodContext(), plan)
    return format_python(rule.transform_module(cst.parse_module(_file(classes).lstrip("\n"))).code)


def _pretrained(out: str) -> str:
    return out[out.index("class ToyPreTrainedModel") :]


def _expected(text: str) -> str:
    return format_python(dedent(text).strip("\n") + "\n")


class TestParallelInitRedraws(RuleTest):
    TRANSFORM = ParallelInitRedraws

    def test_a_statement_naming_a_parallel_child_runs_on_its_full_weights(self) -> None:
        assert _pretrained(_run(CHILDREN)) == _expected(CHILDREN_AFTER)

    def test_a_parameter_drawn_by_name_is_drawn_in_full(self) -> None:
        assert _pretrained(_run(NAMED)) == _expected(NAMED_AFTER)

    def test_a_split_source_linear_is_drawn_on_each_layer_held_in_its_place(self) -> None:
        out = _run(SPLIT_SOURCE, dataclasses.replace(PLAN, fusions=(SPLIT,)))
        assert _pretrained(out) == _expected(SPLIT_SOURCE_AFTER)

    def test_the_helpers_are_inserted_once_before_the_first_class_with_their_imports(self) -> None:
        out = _run(CHILDREN + "\n\n" + NAMED.replace("ToyPreTrainedModel", "ToyOtherPreTrainedModel"))
        assert out.count("def full_weights(") == 1
        assert out.index("def full_weights(") < out.index("class ToyMLP")
        for line in (
            "from contextlib import contextmanager",
            "from neuronx_distributed.parallel_layers.parallel_state import get_tensor_model_parallel_size",
            "from ..transformations_utils import create_local_weight_with_padding",
        ):
            assert line in out

    def test_a_source_linear_the_analysis_does_not_split_is_left_alone(self) -> None:
        self.assertUnchanged(_file(SPLIT_SOURCE), blueprint=PLAN)

    def test_no_parallel_layer_named_no_change(self) -> None:
        plain = CHILDREN.replace("module.up", "module.dense").replace("module.Wo", "module.dense")
        self.assertUnchanged(_file(plain), blueprint=PLAN)

    def test_other_classes_are_left_alone(self) -> None:
        other = CHILDREN.replace("ToyPreTrainedModel(PreTrainedModel)", "ToyOther(nn.Module)")
        self.assertUnchanged(_file(other), blueprint=PLAN)
