"""NXS011: norms over the hidden stream run on sequence shards and say so on their weights.

Under sequence parallelism a hidden-stream norm sees `(S/T, B, D)`: its math is unchanged, but each rank
computes only part of its weight gradient, so the weight carries `sequence_parallel_enabled` and NxD
all-reduces that gradient over the TP group. The norm class takes the flag (default off) and marks every
parameter it creates; each hidden-scope construction passes `trn_config.sequence_parallel_enabled`.
Per-head norms (q/k norms) act after the projections, on full sequences and local heads, so they keep
the default (the sum of their partial gradients over the ranks' heads is NXS021's, with the attention).
A torch `LayerNorm` becomes NxD's, which takes the same flag.
"""

from __future__ import annotations

import libcst as cst

from ..blueprint import Blueprint, NormScope, NormSite
from ..errors import ScaffoldError
from . import _parallel_code as pc
from ._edits import (
    assigned_self_attribute,
    find_method,
    parse_statements,
    rebuild_call,
    rewrite_assigned_call,
)
from .base import Rule, stored_example

FLAG = "sequence_parallel_enabled"
PARAMETER_CONSTRUCTOR = "torch.nn.Parameter"
TORCH_TO_NXD_NORMS = {
    "torch.nn.LayerNorm": ("neuronx_distributed.parallel_layers.layer_norm", "LayerNorm"),
}


def hidden_norms(blueprint: Blueprint) -> list[NormSite]:
    """Norm sites over the hidden stream."""
    return [norm for norm in blueprint.norms if norm.scope is NormScope.HIDDEN]


def norm_parameters(blueprint: Blueprint, norm_class: str) -> list[str]:
    """Attributes of a local norm class that hold `nn.Parameter`s."""
    try:
        plan = blueprint.class_plan(norm_class)
    except KeyError:
        return []
    return [attribute for attribute, constructor in plan.children if constructor == PARAMETER_CONSTRUCTOR]


class SequenceParallelNorms(Rule):
    CODE = "NXS011"
    NAME = "sequence-parallel-norms"
    SUMMARY = (
        "hidden-stream norms take sequence_parallel_enabled and mark their weights; per-head norms do not"
    )
    EXAMPLES = (
        stored_example(CODE, "qwen3", "Qwen3RMSNorm"),
        stored_example(CODE, "qwen3", "Qwen3DecoderLayer"),
    )

    def leave_ClassDef(self, original_node: cst.ClassDef, updated_node: cst.ClassDef) -> cst.ClassDef:
        name = updated_node.name.value
        norms = hidden_norms(self.blueprint)
        if any(norm.norm_class == name for norm in norms):
            parameters = norm_parameters(self.blueprint, name)
            if parameters:
                updated_node = _flag_norm_class(updated_node, parameters, self.CODE)
        built_here = [norm for norm in norms if norm.owner == name and self._convertible(norm)]
        if built_here:
            init = find_method(updated_node, "__init__")
            if init is None:
                raise ScaffoldError(f"{self.CODE}: {built_here[0].location}: {name} has no __init__")
            for norm in built_here:
                init = self._pass_flag(init, norm)
            updated_node = pc.with_method(updated_node, init)
        return updated_node

    def _convertible(self, norm: NormSite) -> bool:
        if norm.norm_class in TORCH_TO_NXD_NORMS:
            return True
        if norm_parameters(self.blueprint, norm.norm_class):
            return True
        if "." in norm.norm_class:
            raise ScaffoldError(
                f"{self.CODE}: {norm.location}: no sequence-parallel counterpart for {norm.norm_class} "
                f"(known: {', '.join(TORCH_TO_NXD_NORMS)})"
            )
        return False  # a local norm without parameters has no gradient to all-reduce

    def _pass_flag(self, init: cst.FunctionDef, norm: NormSite) -> cst.FunctionDef:
        replacement = TORCH_TO_NXD_NORMS.get(norm.norm_class)
        if replacement is not None:
            pc.schedule_layer_imports(self.context, replacement)

        def flagged(call: cst.Call) -> cst.BaseExpression:
            return rebuild_call(
                call,
                callee=replacement[1] if replacement else None,
                add=[(FLAG, f"{pc.TRN_CONFIG}.{FLAG}")],
            )

        result, found = rewrite_assigned_call(init, norm.attribute, flagged)
        if not found:
            raise ScaffoldError(
                f"{self.CODE}: {norm.location}: no `self.{norm.attribute} = ...(...)` to flag"
            )
        return result


def _flag_norm_class(cls: cst.ClassDef, parameters: list[str], rule: str) -> cst.ClassDef:
    init = find_method(cls, "__init__")
    if init is None:
        raise ScaffoldError(f"{rule}: norm class {cls.name.value} has no __init__")
    names = [param.name.value for param in init.params.params]
    if FLAG in names:
        return cls
    params = list(init.params.params)
    new = cst.Param(
        name=cst.Name(FLAG),
        annotation=cst.Annotation(cst.Name("bool")),
        default=cst.Name("False"),
        equal=cst.AssignEqual(
            whitespace_before=cst.SimpleWhitespace(" "), whitespace_after=cst.SimpleWhitespace(" ")
        ),
    )
    if params and isinstance(params[-1].comma, cst.MaybeSentinel):
        params[-1] = params[-1].with_changes(comma=cst.Comma(whitespace_after=cst.SimpleWhitespace(" ")))
    elif params:
        new = new.with_changes(comma=params[-1].comma)
    params.append(new)
    init = init.with_changes(params=init.params.with_changes(params=params))
    marked = 0

    class _Mark(cst.CSTTransformer):
        def leave_IndentedBlock(
            self, original: cst.IndentedBlock, updated: cst.IndentedBlock
        ) -> cst.IndentedBlock:
            nonlocal marked
            body: list[cst.BaseStatement] = []
            for statement in updated.body:
                body.append(statement)
                attribute = assigned_self_attribute(statement)
                if attribute in parameters:
                    body.extend(parse_statements(f"self.{attribute}.{FLAG} = {FLAG}"))
                    marked += 1
            return updated.with_changes(body=body)

    result = init.visit(_Mark())
    if not marked:
        raise ScaffoldError(
            f"{rule}: {cls.name.value}.__init__ creates none of {', '.join(parameters)} directly"
        )
    assert isinstance(result, cst.FunctionDef)
    return pc.with_method(cls, result)
