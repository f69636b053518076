"""Find feed-forward blocks in a class's dataflow: gated `down(act(gate(x)) * up(x))` or plain.

Gate and up are told apart by the activation: in the product feeding the row projection, the factor
that went through an activation comes from the gate. Their names play no part.
"""

from __future__ import annotations

from dataclasses import dataclass

import libcst as cst

from ..blueprint import Expr, MLPBlock
from .dataflow import ActivationCall, Flow, sources
from .expressions import Scope, to_expr
from .parsing import SourceIndex


@dataclass(frozen=True)
class MLPFacts:
    """Class-level facts of one feed-forward block."""

    gate: str | None
    up: str
    down: str
    activation: ActivationCall | None
    down_call: cst.Call


def find_mlp(flow: Flow | None, projections: frozenset[str], exclude: frozenset[str]) -> MLPFacts | None:
    """The feed-forward block of `flow`, ignoring projections in `exclude` (the attention's)."""
    if flow is None:
        return None
    candidates = projections - exclude
    for call in flow.module_calls:
        if call.attribute not in candidates:
            continue
        producers = (sources(call.inputs) & candidates) - {call.attribute}
        if len(producers) == 2:
            gated = _gated_pair(flow, producers)
            if gated is not None:
                gate, up = gated
                return MLPFacts(gate, up, call.attribute, _activation_of(flow, gate), call.node)
        if len(producers) == 1:
            (up,) = producers
            if any(origin.source == up and origin.activated for origin in call.inputs):
                return MLPFacts(None, up, call.attribute, _activation_of(flow, up), call.node)
    return None


def _gated_pair(flow: Flow, producers: set[str]) -> tuple[str, str] | None:
    for combine in flow.combines:
        if combine.op != "*":
            continue
        for first, second in ((combine.left, combine.right), (combine.right, combine.left)):
            activated = {origin.source for origin in first if origin.activated} & producers
            plain = {origin.source for origin in second if not origin.activated} & producers
            if len(activated) == 1 and len(plain) == 1 and activated != plain:
                return next(iter(activated)), next(iter(plain))
    return None


def _activation_of(flow: Flow, projection: str) -> ActivationCall | None:
    for activation in flow.activations:
        if projection in sources(activation.inputs):
            return activation
    return None


def mlp_block(
    facts: MLPFacts,
    owner: str,
    path: str,
    scope: Scope,
    out_features: dict[str, cst.BaseExpression],
    activation_values: dict[str, cst.BaseExpression],
    index: SourceIndex,
) -> MLPBlock:
    """Instance-level block with its intermediate size and activation as expressions."""
    first = facts.gate or facts.up
    intermediate = out_features.get(first)
    activation: Expr | None = None
    if facts.activation is not None:
        name = facts.activation.callable
        attribute = name[5:] if name.startswith("self.") else None
        value = activation_values.get(attribute) if attribute is not None else None
        if (
            isinstance(value, cst.Subscript)
            and len(value.slice) == 1
            and isinstance(value.slice[0].slice, cst.Index)
        ):
            activation = to_expr(value.slice[0].slice.value, scope)  # the ACT2FN key
        elif value is not None:
            activation = to_expr(value, scope)
        else:
            activation = Expr(name, None)
    return MLPBlock(
        owner=owner,
        path=path,
        gate=facts.gate,
        up=facts.up,
        down=facts.down,
        activation=activation,
        intermediate_size=to_expr(intermediate, scope) if intermediate is not None else Expr("?", None),
        location=index.location(facts.down_call),
    )
