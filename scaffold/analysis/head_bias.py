"""Attention biases with one slice per head that the layer stack builds once for every layer (ALiBi).

Some base models compute a bias for the attention scores from the total head count and pass it to each
layer (BLOOM's and MPT's ALiBi: one slope per head times the key positions):

    alibi = self.build_alibi_tensor(attention_mask, self.num_heads, dtype=...)   # self.num_heads = config.n_head
    for block in self.h:
        outputs = block(hidden_states, alibi=alibi, ...)

Under tensor parallelism each rank computes the attention of its own heads only, so it must add the
slices of those heads. Such a bias is recognised by its dataflow, not by a name: a forward statement
`x = <expression calling something with the attention's total head count>` (the argument resolves, in the
stack's instance scope, to the same config expression as the attention's `num_heads`), `x` bound nowhere
else in the forward and passed to the layers in the loop over them. Where that statement reads the
forward's padding mask (`attention_mask`: BLOOM counts ALiBi positions over the unpadded tokens), the bias
must ignore it when the host does (`recompute_causal_mask`): the rule is told which name it is.
"""

from __future__ import annotations

from collections.abc import Callable

import libcst as cst

from ..blueprint import AttentionGeometry, HeadBias
from ..syntax import code, names_in, walk
from .context import Context
from .expressions import resolved_text

PADDING_MASK = "attention_mask"  # transformers' name for the (batch, sequence) padding mask


def head_biases(
    context: Context, stack_class: str, geometries: list[AttentionGeometry]
) -> tuple[HeadBias, ...]:
    """The per-head biases the layer stack `stack_class` builds and passes to its layers."""
    totals = {geometry.num_heads.resolved for geometry in geometries} - {None}
    analysis = context.classes.get(stack_class)
    instance = next((i for i in context.tree.instances if i.class_name == stack_class), None)
    if not totals or analysis is None or instance is None:
        return ()
    forward = next(
        (
            s
            for s in analysis.facts.node.body.body
            if isinstance(s, cst.FunctionDef) and s.name.value == "forward"
        ),
        None,
    )
    if forward is None:
        return ()
    passed = _passed_to_layers(forward)
    parameters = {param.name.value for param in forward.params.params}
    found: list[HeadBias] = []
    for statement in forward.body.body:
        assigned = _assigned(statement)
        if assigned is None or assigned[0] not in passed or _bindings(forward, assigned[0]) != 1:
            continue
        name, value = assigned
        heads = _heads_argument(value, lambda node: resolved_text(node, instance.scope) in totals)
        if heads is not None:
            mask = PADDING_MASK if PADDING_MASK in parameters and PADDING_MASK in names_in(value) else None
            location = context.index.location(statement)
            found.append(HeadBias(stack_class, name, code(heads).strip(), location, mask))
    return tuple(found)


def _assigned(statement: cst.BaseStatement) -> tuple[str, cst.BaseExpression] | None:
    """(x, value) of a statement `x = value`."""
    if isinstance(statement, cst.SimpleStatementLine) and len(statement.body) == 1:
        small = statement.body[0]
        if isinstance(small, cst.Assign) and len(small.targets) == 1:
            target = small.targets[0].target
            if isinstance(target, cst.Name):
                return target.value, small.value
    return None


def _bindings(forward: cst.FunctionDef, name: str) -> int:
    """How many targets in `forward` bind `name`."""
    return sum(
        1
        for node in walk(forward)
        if isinstance(node, cst.AssignTarget | cst.AugAssign | cst.AnnAssign | cst.For)
        and name in names_in(node.target)
    )


def _passed_to_layers(forward: cst.FunctionDef) -> set[str]:
    """Names passed as call arguments (`x` or `k=x`) inside the forward's `for` loops over its layers."""
    passed: set[str] = set()
    for node in walk(forward):
        if not isinstance(node, cst.For):
            continue
        for inner in walk(node.body):
            if isinstance(inner, cst.Call):
                passed.update(arg.value.value for arg in inner.args if isinstance(arg.value, cst.Name))
    return passed


def _heads_argument(
    value: cst.BaseExpression, is_total: Callable[[cst.BaseExpression], bool]
) -> cst.BaseExpression | None:
    """The argument of a call in `value` that is the total head count (`is_total(node)`), if any."""
    for node in walk(value):
        if isinstance(node, cst.Call):
            for arg in node.args:
                if is_total(arg.value):
                    return arg.value
    return None
