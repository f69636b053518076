"""NXS005: the pretrained classes become Neuron training models.

- The base model and the causal LM mix in `NeuronModelMixin` first (its `from_pretrained` /
  `save_pretrained` replace transformers' for `(config, trn_config)` models).
- The shared pretrained class names its config class both ways: `config_class` for transformers and
  `config` for optimum-neuron's loader, which reads `cls.config`; it declares eager and Neuron flash
  attention as the only kernels (`_supports_flash_attn = True`, no SDPA, no flex) and no `torch.compile`.
- The causal LM declares `_tied_weights_keys` and the pipeline attributes: its decoder layer class, the
  inputs a pipeline stage receives and the leaf modules the tracer must not enter (norms and the
  rotary embedding). transformers' own tensor/pipeline plans (`_tp_plan`, `_pp_plan`) have no meaning
  for NxD layers and go.
"""

from __future__ import annotations

import libcst as cst

from ..blueprint import Blueprint, ClassKind, CodeStyle
from ..syntax import assigned_target, dotted, is_docstring
from . import templates
from .base import Rule, stored_example

MIXIN = "NeuronModelMixin"
HOST_MODELING_MODULE = "modeling_utils"  # `from ..modeling_utils import NeuronModelMixin`
TEMPLATES = "neuron_model_classes"
DROPPED_CAUSAL_LM_ATTRIBUTES = frozenset({"_tp_plan", "_pp_plan"})


def pipeline_leaf_classes(blueprint: Blueprint) -> list[str]:
    """Closure classes pipeline tracing treats as leaves: the norms, then the rotary embedding(s)."""
    norms = [plan.name for plan in blueprint.classes if plan.kind is ClassKind.NORM]
    rotary = [plan.name for plan in blueprint.classes if plan.kind is ClassKind.ROTARY]
    return norms + rotary


class NeuronModelClasses(Rule):
    CODE = "NXS005"
    NAME = "neuron-model-classes"
    SUMMARY = (
        "NeuronModelMixin on the models; Neuron pretrained attributes, tied weights and PIPELINE_* attributes"
    )
    ADVICE = (
        "Disable it to write the NeuronModelMixin, the Neuron attributes and the pipeline attributes by hand."
    )
    EXAMPLES = (
        stored_example(CODE, "llama", "LlamaPreTrainedModel"),
        stored_example(CODE, "llama", "LlamaForCausalLM"),
    )

    def visit_FunctionDef(self, node: cst.FunctionDef) -> bool:
        return False  # the rule rewrites whole classes: nothing to visit inside a method

    def leave_ClassDef(self, original_node: cst.ClassDef, updated_node: cst.ClassDef) -> cst.ClassDef:
        blueprint = self.blueprint
        name = updated_node.name.value
        kind = _kind(blueprint, name)
        if kind is ClassKind.PRETRAINED:
            updated_node = _pretrained_attributes(updated_node, blueprint.config_class, blueprint.style)
        if name in (blueprint.base_model_class, blueprint.causal_lm_class):
            updated_node = _mix_in(updated_node)
            self.add_host_import(HOST_MODELING_MODULE, MIXIN)
        if name == blueprint.causal_lm_class:
            updated_node = _causal_lm_attributes(updated_node, blueprint)
        return updated_node


def _kind(blueprint: Blueprint, name: str) -> ClassKind | None:
    for plan in blueprint.classes:
        if plan.name == name:
            return plan.kind
    return None


def _mix_in(cls: cst.ClassDef) -> cst.ClassDef:
    if any(dotted(arg.value) == MIXIN for arg in cls.bases):
        return cls
    first = cst.Arg(value=cst.Name(MIXIN), comma=cst.Comma(whitespace_after=cst.SimpleWhitespace(" ")))
    return cls.with_changes(bases=[first, *cls.bases], lpar=cst.LeftParen(), rpar=cst.RightParen())


def _set_attributes(
    cls: cst.ClassDef, statements: list[cst.BaseStatement], *, after: str | None = None
) -> cst.ClassDef:
    """Each class-level assignment of `statements` in the class body: in place of the class's own when
    it has one, else after `after` (or at the top of the body, after a docstring)."""
    body = list(cls.body.body)
    missing: list[cst.BaseStatement] = []
    for statement in statements:
        name = assigned_target(statement)
        for index, existing in enumerate(body):
            if assigned_target(existing) == name:
                body[index] = statement.with_changes(leading_lines=existing.leading_lines)
                break
        else:
            missing.append(statement.with_changes(leading_lines=[]))
    if missing:
        index = _insertion_index(body, after)
        body[index:index] = missing
    return cls.with_changes(body=cls.body.with_changes(body=body))


def _insertion_index(body: list[cst.BaseStatement], after: str | None) -> int:
    if after is not None:
        for index, statement in enumerate(body):
            if assigned_target(statement) == after:
                return index + 1
    index = 0
    while index < len(body) and (assigned_target(body[index]) is not None or is_docstring(body[index])):
        index += 1
    return index


def _pretrained_attributes(cls: cst.ClassDef, config_class: str, style: CodeStyle) -> cst.ClassDef:
    body = [statement for statement in cls.body.body if assigned_target(statement) != "config"]
    cls = cls.with_changes(body=cls.body.with_changes(body=body))
    config_lines, _ = templates.fill_statements(
        TEMPLATES, "config_attributes", style, config_type=cst.Name(config_class)
    )
    body = [statement for statement in cls.body.body if assigned_target(statement) != "config_class"]
    start = 1 if body and is_docstring(body[0]) else 0
    body[start:start] = config_lines
    cls = cls.with_changes(body=cls.body.with_changes(body=body))
    attributes, _ = templates.fill_statements(TEMPLATES, "pretrained_attributes", style)
    return _set_attributes(cls, attributes)


def _causal_lm_attributes(cls: cst.ClassDef, blueprint: Blueprint) -> cst.ClassDef:
    body = [
        statement
        for statement in cls.body.body
        if assigned_target(statement) not in DROPPED_CAUSAL_LM_ATTRIBUTES
    ]
    cls = cls.with_changes(body=cls.body.with_changes(body=body))
    style = blueprint.style
    tied = _strings(blueprint.features.tied_weights_keys)
    cls = _set_attributes(
        cls, templates.fill_statements(TEMPLATES, "tied_weights", style, tied_weights_keys=tied)[0]
    )
    layer = blueprint.backbone.decoder_layer
    if layer is None:
        pipeline, _ = templates.fill_statements(TEMPLATES, "no_pipeline", style)
    else:
        pipeline, _ = templates.fill_statements(
            TEMPLATES,
            "pipeline_attributes",
            style,
            decoder_layer=cst.Name(layer),
            leaf_classes=_strings(pipeline_leaf_classes(blueprint)),
        )
    cls = _set_attributes(cls, pipeline, after="_tied_weights_keys")
    return _space_pipeline_block(cls)


def _strings(values: tuple[str, ...] | list[str]) -> cst.List:
    """`["a", "b"]`."""
    return cst.List(elements=[cst.Element(cst.SimpleString(f'"{value}"')) for value in values])


def _space_pipeline_block(cls: cst.ClassDef) -> cst.ClassDef:
    """A blank line before `SUPPORTS_PIPELINE_PARALLELISM` and after the last attribute, as people write it."""
    body = list(cls.body.body)
    for index, statement in enumerate(body):
        if (
            assigned_target(statement) == "SUPPORTS_PIPELINE_PARALLELISM"
            and index > 0
            and not statement.leading_lines
        ):
            body[index] = statement.with_changes(leading_lines=[cst.EmptyLine(indent=False)])
        if (
            isinstance(statement, cst.FunctionDef)
            and index > 0
            and assigned_target(body[index - 1]) is not None
            and not statement.leading_lines
        ):
            body[index] = statement.with_changes(leading_lines=[cst.EmptyLine(indent=False)])
    return cls.with_changes(body=cls.body.with_changes(body=body))
