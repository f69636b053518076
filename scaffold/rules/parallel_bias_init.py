"""NXS006 parallel-bias-init: the pretrained class initialises the parallel linears' biases as transformers
initialises nn.Linear's, at zero.

transformers' `_init_weights` (run by `post_init` on a model built from its config, and by optimum-neuron's
`from_pretrained` on every module a checkpoint did not fill) draws an nn.Linear weight from
N(0, initializer_range^2) and zeroes its bias. NxD's `ColumnParallelLinear`, `RowParallelLinear` and
`GQAQKVColumnParallelLinear` are no nn.Linear: their weights come from the `init_method` the layer rules
pass (the same normal law), but their biases keep the layer's own draw (uniform, as
`nn.Linear.reset_parameters`). Where the source builds a linear whose bias can be on (its `bias=` is not
`False`), the pretrained class zeroes the biases of those layer classes: in the source's own
`_init_weights` (a branch appended to it, after whatever it does) or in one the rule adds, which calls
transformers' first. Every bias parameter of the layer is zeroed (`bias`, or the GQA layer's `bias_q`,
`bias_k`, `bias_v` / `bias_qkv`). The inserted code comes from templates/code/parallel_bias_init.py.
"""

from __future__ import annotations

import libcst as cst

from ..blueprint import Blueprint, ClassKind, LayerKind, Role
from ..syntax import find_method, with_method
from . import templates
from .base import Rule, stored_example

TEMPLATES = "parallel_bias_init"
COLUMN, ROW, GQA = "ColumnParallelLinear", "RowParallelLinear", "GQAQKVColumnParallelLinear"
NO_BIAS = frozenset({"False", "None"})
ATTENTION_RULE = "NXS021"  # builds the GQA layer where the attention is converted


def biased_parallel_linears(blueprint: Blueprint) -> list[str]:
    """The parallel linear classes the generated file builds with a bias that can be on, in a fixed order."""
    projections = {
        f"{geometry.path}.{name}": geometry.owner
        for geometry in blueprint.attention
        for name in (geometry.q, geometry.k, geometry.v)
    }
    refused = {refusal.subject for refusal in blueprint.refusals if ATTENTION_RULE in refusal.rules}
    found: set[str] = set()
    for site in blueprint.sites:
        if site.kind is not LayerKind.LINEAR or site.bias.source in NO_BIAS:
            continue
        if site.role in (Role.COLUMN, Role.LM_HEAD):
            found.add(COLUMN)
        elif site.role is Role.ROW:
            found.add(ROW)
        owner = projections.get(site.path)
        if owner is not None and owner not in refused:
            found.add(GQA)
    return [name for name in (COLUMN, ROW, GQA) if name in found]


class ParallelBiasInit(Rule):
    CODE = "NXS006"
    NAME = "parallel-bias-init"
    SUMMARY = (
        "the pretrained class's _init_weights zeroes the parallel linears' biases, as transformers' does"
    )
    ADVICE = (
        "A source whose own _init_weights gives Linear biases another law needs the same law for the parallel "
        "layers by hand. Disable it to keep NxD's bias draw (the init check then fails on models with biases)."
    )
    EXAMPLES = (stored_example(CODE, "qwen2", "Qwen2PreTrainedModel"),)

    def visit_FunctionDef(self, node: cst.FunctionDef) -> bool:
        return False  # the rule edits one method of one class: nothing to visit inside a function

    def leave_ClassDef(self, original_node: cst.ClassDef, updated_node: cst.ClassDef) -> cst.ClassDef:
        if not any(
            plan.name == updated_node.name.value and plan.kind is ClassKind.PRETRAINED
            for plan in self.blueprint.classes
        ):
            return updated_node
        layers = biased_parallel_linears(self.blueprint)
        if not layers:
            return updated_node
        classes: cst.BaseExpression = (
            cst.Name(layers[0])
            if len(layers) == 1
            else cst.Tuple(elements=[cst.Element(cst.Name(name)) for name in layers])
        )
        own = find_method(updated_node, "_init_weights")
        if own is None:
            (method,), needed = templates.fill_statements(
                TEMPLATES, "init_weights", self.blueprint.style, parallel_linears=classes
            )
            self.add_template_imports(needed)
            body = list(updated_node.body.body)
            method = method.with_changes(leading_lines=[cst.EmptyLine(indent=False)] if body else [])
            return updated_node.with_changes(body=updated_node.body.with_changes(body=[*body, method]))
        module = own.params.params[1].name.value if len(own.params.params) > 1 else "module"
        branch, needed = templates.fill_statements(
            TEMPLATES,
            "zero_parallel_biases",
            self.blueprint.style,
            renames={"module": module},
            parallel_linears=classes,
        )
        self.add_template_imports(needed)
        first, *rest = branch
        first = first.with_changes(leading_lines=[cst.EmptyLine(indent=False), *first.leading_lines])
        method = own.with_changes(body=own.body.with_changes(body=[*own.body.body, first, *rest]))
        return with_method(updated_node, method)
