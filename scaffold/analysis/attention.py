"""Find softmax attention in a class's dataflow and express its head geometry through the config.

The attention kernel is the call that takes three projections' outputs, each split into heads, as
separate positional arguments (`attention_interface(self, q, k, v, mask, ...)`); their order gives
q, k and v, and the projection that consumes the kernel's output is o. `head_dim` is the last entry of
the shape q is viewed with; the head counts are the other factor of each projection's
`out_features = heads * head_dim`.
"""

from __future__ import annotations

from dataclasses import dataclass

import libcst as cst

from ..blueprint import AttentionGeometry, Expr, NormSite
from ..syntax import self_attribute, walk
from .dataflow import Flow, FunctionCall, Reshape, sources
from .expressions import Scope, resolved_text, substitute, to_expr
from .parsing import SourceIndex


@dataclass(frozen=True)
class AttentionFacts:
    """Class-level facts of one attention: projections, kernel call and the views into heads."""

    q: str
    k: str
    v: str
    o: str
    kernel: FunctionCall
    q_view: Reshape | None
    k_view: Reshape | None


def find_attention(flow: Flow | None, projections: frozenset[str]) -> AttentionFacts | None:
    """The attention in `flow`, if its kernel call and output projection can be found."""
    if flow is None:
        return None
    for call in flow.function_calls:
        singles = _headed_singles(call, projections)
        if len(singles) < 3:
            continue
        q, k, v = singles[:3]
        output = _output_projection(flow, projections, {q, k, v})
        if output is None:
            continue
        return AttentionFacts(q, k, v, output, call, _view_of(flow, q), _view_of(flow, k))
    return _inline_attention(flow, projections)


def _headed_singles(call: FunctionCall, projections: frozenset[str]) -> list[str]:
    """Positional arguments that each come from exactly one projection, split into heads."""
    singles: list[str] = []
    for prov in call.positional:
        fed = sources(prov) & projections
        if len(fed) == 1:
            (name,) = fed
            if all(origin.headed for origin in prov if origin.source == name) and name not in singles:
                singles.append(name)
    return singles


def _inline_attention(flow: Flow, projections: frozenset[str]) -> AttentionFacts | None:
    """Eager attention written out: `matmul(q, k^T)` first, then the scores applied to v.

    q and k are the two headed projections of the first call that takes exactly two of them; v is the
    one other headed projection that the output projection consumes.
    """
    for call in flow.function_calls:
        singles = _headed_singles(call, projections)
        if len(singles) != 2:
            continue
        q, k = singles
        for output_call in flow.module_calls:
            if output_call.attribute not in projections or not {q, k} <= sources(output_call.inputs):
                continue
            rest = {
                name
                for name in sources(output_call.inputs) & projections
                if name not in (q, k) and _view_of(flow, name) is not None
            }
            if len(rest) == 1:
                (v,) = rest
                return AttentionFacts(
                    q, k, v, output_call.attribute, call, _view_of(flow, q), _view_of(flow, k)
                )
    return None


def _output_projection(flow: Flow, projections: frozenset[str], qkv: set[str]) -> str | None:
    for call in flow.module_calls:
        if call.attribute in projections and call.attribute not in qkv and qkv <= sources(call.inputs):
            return call.attribute
    return None


def _view_of(flow: Flow, projection: str) -> Reshape | None:
    for reshape in flow.reshapes:
        if reshape.headed and any(origin.source == projection for origin in reshape.inputs):
            return reshape
    return None


def geometry(
    facts: AttentionFacts,
    owner: str,
    path: str,
    flow: Flow,
    scope: Scope,
    out_features: dict[str, cst.BaseExpression],
    norms: list[NormSite],
    index: SourceIndex,
    config: object = None,
) -> AttentionGeometry:
    """Instance-level geometry: every size as an Expr resolved in the instance's scope."""
    head_dim_node = facts.q_view.shape[-1] if facts.q_view is not None and facts.q_view.shape else None
    head_dim = _forward_expr(head_dim_node, flow, scope) if head_dim_node is not None else Expr("?", None)
    head_dim_text = resolved_text(_locals(head_dim_node, flow), scope) if head_dim_node is not None else None
    num_heads = _heads(out_features.get(facts.q), facts.q_view, head_dim, head_dim_text, flow, scope, config)
    num_kv_heads = _heads(
        out_features.get(facts.k), facts.k_view, head_dim, head_dim_text, flow, scope, config
    )

    def keyword(*names: str) -> Expr | None:
        for name in names:
            node = facts.kernel.keyword(name)
            if node is not None:
                return _forward_expr(node, flow, scope)
        return None

    def norm_of(projection: str) -> str | None:
        for norm in norms:
            if norm.owner == owner and projection in norm.normalises and norm.path.startswith(path + "."):
                return norm.attribute
        return None

    scaling = keyword("scaling", "softmax_scale", "scale") or _inline_scaling(facts, flow, scope)
    return AttentionGeometry(
        owner=owner,
        path=path,
        q=facts.q,
        k=facts.k,
        v=facts.v,
        o=facts.o,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        scaling=scaling,
        sliding_window=keyword("sliding_window"),
        softcap=keyword("softcap", "logit_softcapping"),
        q_norm=norm_of(facts.q),
        k_norm=norm_of(facts.k),
        core_call=index.location(facts.kernel.node),
        total_head_counts=_total_head_counts(flow, scope, num_heads, num_kv_heads),
    )


def _times_head_dim_is(
    heads: Expr, head_dim: Expr, out: cst.BaseExpression | None, scope: Scope, config: object
) -> bool | None:
    """Whether `heads * head_dim == out_features` on the default config (None when it cannot be told)."""
    if out is None or config is None:
        return None
    try:
        return heads.evaluate(config) * head_dim.evaluate(config) == to_expr(out, scope).evaluate(config)
    except Exception:  # not config-only
        return None


PER_RANK_HEADS = "num_heads"  # the attributes NXS021 sets to the per-rank counts after construction
PER_RANK_KV_HEADS = "num_key_value_heads"


def _total_head_counts(flow: Flow, scope: Scope, heads: Expr, kv_heads: Expr) -> tuple[tuple[str, str], ...]:
    """`self.<attribute>` reads in the shapes of the forward's head reshapes (a helper's shape read in the
    caller's terms) whose value is the total query or K/V head count, paired with the per-rank attribute
    that replaces them; attributes already named as the per-rank ones are left out."""
    totals = {PER_RANK_HEADS: heads.resolved, PER_RANK_KV_HEADS: kv_heads.resolved}
    found: dict[str, str] = {}
    for reshape in flow.reshapes:
        if not reshape.headed:
            continue
        for element in reshape.shape:
            for node in walk(element):
                attribute = self_attribute(node)
                if attribute is None or attribute in totals or attribute in found:
                    continue
                value = resolved_text(node, scope)  # type: ignore[arg-type]
                for per_rank, total in totals.items():
                    if total is not None and value == total:
                        found[attribute] = per_rank
                        break
    return tuple(sorted(found.items()))


def _inline_scaling(facts: AttentionFacts, flow: Flow, scope: Scope) -> Expr | None:
    """Scaling of written-out attention: the factor applied to the q k^T scores (1 / factor for `/`)."""
    for step in flow.scales:
        if {facts.q, facts.k} <= sources(step.inputs):
            factor = _forward_expr(step.factor, flow, scope)
            if step.op == "*":
                return factor
            resolved = f"1 / ({factor.resolved})" if factor.resolved is not None else None
            return Expr(f"1 / ({factor.source})", resolved, factor.variables)
    return None


def _locals(node: cst.BaseExpression, flow: Flow) -> cst.BaseExpression:
    """Substitute the forward's local (non-tensor) variables, leaving `self.<attr>` in place."""
    return substitute(node, flow.local_scope)


def _forward_expr(node: cst.BaseExpression, flow: Flow, scope: Scope) -> Expr:
    """An expression written in a forward: its text, resolved through forward locals then the instance."""
    resolved = to_expr(_locals(node, flow), scope)
    return Expr(SourceIndex.code(node), resolved.resolved, resolved.variables)


def _heads(
    out: cst.BaseExpression | None,
    view: Reshape | None,
    head_dim: Expr,
    head_dim_text: str | None,
    flow: Flow,
    scope: Scope,
    config: object = None,
) -> Expr:
    """Heads of a projection: the factor of `out_features` that is not head_dim, else the view (its
    dividend when the view splits a tensor already cut into groups: `heads // groups` per group, which the
    default config tells apart), else `out_features // head_dim`."""
    if out is not None and isinstance(out, cst.BinaryOperation) and isinstance(out.operator, cst.Multiply):
        for factor, other in ((out.left, out.right), (out.right, out.left)):
            if head_dim_text is not None and resolved_text(other, scope) == head_dim_text:
                return to_expr(factor, scope)
    if view is not None and len(view.shape) >= 2:
        candidate = view.shape[-2]
        if not (isinstance(candidate, cst.UnaryOperation) or SourceIndex.code(candidate).strip() == "-1"):
            heads = _forward_expr(candidate, flow, scope)
            if _times_head_dim_is(heads, head_dim, out, scope, config) is not False:
                return heads
            if isinstance(candidate, cst.BinaryOperation) and isinstance(candidate.operator, cst.FloorDivide):
                dividend = _forward_expr(candidate.left, flow, scope)
                if _times_head_dim_is(dividend, head_dim, out, scope, config):
                    return dividend
    if out is not None:
        out_expr = to_expr(out, scope)
        source = f"({out_expr.source}) // ({head_dim.source})"
        resolved = (
            f"({out_expr.resolved}) // ({head_dim.resolved})"
            if out_expr.resolved is not None and head_dim.resolved is not None
            else None
        )
        return Expr(source, resolved)
    return Expr("?", None)
