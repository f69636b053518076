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

from ..blueprint import Blueprint, ClassKind
from ._edits import dotted, parse_statements
from ._imports import schedule_import
from .base import Rule, stored_example

MIXIN = "NeuronModelMixin"
HOST_MODELING_MODULE = "modeling_utils"  # `from ..modeling_utils import NeuronModelMixin`
PRETRAINED_ATTRIBUTES = (
    ("_supports_flash_attn", "True"),
    ("_supports_sdpa", "False"),
    ("_supports_flex_attn", "False"),
    ("_can_compile_fullgraph", "False"),
)
DROPPED_CAUSAL_LM_ATTRIBUTES = frozenset({"_tp_plan", "_pp_plan"})
PIPELINE_INPUT_NAMES = ("input_ids", "attention_mask", "labels")


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
    EXAMPLES = (
        stored_example(CODE, "llama", "LlamaPreTrainedModel"),
        stored_example(CODE, "llama", "LlamaForCausalLM"),
    )

    def leave_ClassDef(self, original_node: cst.ClassDef, updated_node: cst.ClassDef) -> cst.ClassDef:
        blueprint = self.blueprint
        name = updated_node.name.value
        kind = _kind(blueprint, name)
        if kind is ClassKind.PRETRAINED:
            updated_node = _pretrained_attributes(updated_node, blueprint.config_class)
        if name in (blueprint.base_model_class, blueprint.causal_lm_class):
            updated_node = _mix_in(updated_node)
            schedule_import(self.context, HOST_MODELING_MODULE, MIXIN, relative=2)
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


def _class_attribute(statement: cst.CSTNode) -> str | None:
    """`name` for a class-level `name = ...` or `name: T` / `name: T = ...`."""
    if not isinstance(statement, cst.SimpleStatementLine) or len(statement.body) != 1:
        return None
    small = statement.body[0]
    if isinstance(small, cst.Assign) and len(small.targets) == 1:
        return dotted(small.targets[0].target)
    if isinstance(small, cst.AnnAssign):
        return dotted(small.target)
    return None


def _set_attributes(
    cls: cst.ClassDef, values: list[tuple[str, str]], *, after: str | None = None
) -> cst.ClassDef:
    """Assign each `(name, value text)` in the class body: in place when present, else after `after`
    (or at the top of the body, after a docstring)."""
    body = list(cls.body.body)
    missing: list[cst.BaseStatement] = []
    for name, value in values:
        statement = parse_statements(f"{name} = {value}")[0]
        for index, existing in enumerate(body):
            if _class_attribute(existing) == name:
                body[index] = statement.with_changes(leading_lines=existing.leading_lines)
                break
        else:
            missing.append(statement)
    if missing:
        index = _insertion_index(body, after)
        body[index:index] = missing
    return cls.with_changes(body=cls.body.with_changes(body=body))


def _insertion_index(body: list[cst.BaseStatement], after: str | None) -> int:
    if after is not None:
        for index, statement in enumerate(body):
            if _class_attribute(statement) == after:
                return index + 1
    index = 0
    while index < len(body) and (_class_attribute(body[index]) is not None or _is_docstring(body[index])):
        index += 1
    return index


def _is_docstring(statement: cst.BaseStatement) -> bool:
    return (
        isinstance(statement, cst.SimpleStatementLine)
        and len(statement.body) == 1
        and isinstance(statement.body[0], cst.Expr)
        and isinstance(statement.body[0].value, cst.SimpleString | cst.ConcatenatedString)
    )


def _pretrained_attributes(cls: cst.ClassDef, config_class: str) -> cst.ClassDef:
    body = [statement for statement in cls.body.body if _class_attribute(statement) != "config"]
    cls = cls.with_changes(body=cls.body.with_changes(body=body))
    config_lines = parse_statements(
        f"# transformers reads `config_class`; optimum-neuron's `from_pretrained` reads `config`.\n"
        f"config_class = {config_class}\nconfig = {config_class}\n"
    )
    body = [statement for statement in cls.body.body if _class_attribute(statement) != "config_class"]
    start = 1 if body and _is_docstring(body[0]) else 0
    body[start:start] = config_lines
    cls = cls.with_changes(body=cls.body.with_changes(body=body))
    return _set_attributes(cls, list(PRETRAINED_ATTRIBUTES))


def _causal_lm_attributes(cls: cst.ClassDef, blueprint: Blueprint) -> cst.ClassDef:
    body = [
        statement
        for statement in cls.body.body
        if _class_attribute(statement) not in DROPPED_CAUSAL_LM_ATTRIBUTES
    ]
    cls = cls.with_changes(body=cls.body.with_changes(body=body))
    tied = "[" + ", ".join(f'"{key}"' for key in blueprint.features.tied_weights_keys) + "]"
    cls = _set_attributes(cls, [("_tied_weights_keys", tied)])
    layer = blueprint.backbone.decoder_layer
    pipeline: list[tuple[str, str]] = [("SUPPORTS_PIPELINE_PARALLELISM", "True" if layer else "False")]
    if layer is not None:
        inputs = "[" + ", ".join(f'"{name}"' for name in PIPELINE_INPUT_NAMES) + "]"
        leaves = "[" + ", ".join(f'"{name}"' for name in pipeline_leaf_classes(blueprint)) + "]"
        pipeline += [
            ("PIPELINE_TRANSFORMER_LAYER_CLS", layer),
            ("PIPELINE_INPUT_NAMES", inputs),
            ("PIPELINE_LEAF_MODULE_CLASSE_NAMES", leaves),
        ]
    cls = _set_attributes(cls, pipeline, after="_tied_weights_keys")
    return _space_pipeline_block(cls)


def _space_pipeline_block(cls: cst.ClassDef) -> cst.ClassDef:
    """A blank line before `SUPPORTS_PIPELINE_PARALLELISM` and after the last attribute, as people write it."""
    body = list(cls.body.body)
    for index, statement in enumerate(body):
        if (
            _class_attribute(statement) == "SUPPORTS_PIPELINE_PARALLELISM"
            and index > 0
            and not statement.leading_lines
        ):
            body[index] = statement.with_changes(leading_lines=[cst.EmptyLine(indent=False)])
        if (
            isinstance(statement, cst.FunctionDef)
            and index > 0
            and _class_attribute(body[index - 1]) is not None
            and not statement.leading_lines
        ):
            body[index] = statement.with_changes(leading_lines=[cst.EmptyLine(indent=False)])
    return cls.with_changes(body=cls.body.with_changes(body=body))
