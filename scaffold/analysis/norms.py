"""Norm classes and norm instances, with what each one reduces over.

A local class is a norm when it subclasses a torch norm or its forward computes one (`rsqrt`, or the
functional layer/rms/group norm). Where a norm sits in the dataflow decides its scope: applied to a
projection's output after the split into heads it is per-head (local to a rank under tensor
parallelism); applied to a projection's output before that split it reduces over the sharded width. A
per-head norm whose weight holds one row per head of its projection (`(num_heads, head_dim)`) has head
rows: sharded with the heads (`with_head_rows`, once the attention geometry is known).
"""

from __future__ import annotations

import dataclasses

import libcst as cst

from ..blueprint import AttentionGeometry, Expr, Location, NormScope, NormSite
from ..syntax import code, walk
from .classes import ClassFacts
from .constructors import TORCH_NORMS, ChildKind, Construct
from .dataflow import Flow, sources
from .expressions import to_expr
from .parsing import SourceIndex
from .tree import Member, bind_arguments

_FUNCTIONAL_NORMS = {
    "torch.nn.functional.layer_norm": "layer",
    "torch.nn.functional.rms_norm": "rms",
    "torch.nn.functional.group_norm": "group",
}
_RSQRT = frozenset({"torch.rsqrt"})
_SQRT = frozenset({"torch.sqrt"})
_MEAN = frozenset({"torch.mean"})
_WIDTH_KEYWORDS = ("normalized_shape", "hidden_size", "dim", "num_channels", "size")


def norm_classes(facts: dict[str, ClassFacts], index: SourceIndex) -> dict[str, str]:
    """Local norm classes and their kind ("rms", "layer", "group" or "other")."""
    found: dict[str, str] = {}
    for name, class_facts in facts.items():
        kind = _kind_from_bases(class_facts, index) or _kind_from_forward(class_facts, index)
        if kind is not None:
            found[name] = kind
    return found


PER_HEAD_LIST = (
    "per_head_list"  # the kind of a class holding one norm per head (shard_by_head keeps the rank's)
)


def per_head_norm_lists(
    facts: dict[str, ClassFacts], constructs: dict[str, dict[str, Construct]], index: SourceIndex
) -> dict[str, str]:
    """Local classes that hold one norm per head and apply each to its head (stablelm's
    `StableLmLayerNormPerHead`): their only member with weights is a `nn.ModuleList` of torch norms, and
    their forward splits its input into heads of one (`torch.split(x, 1, dim=1)`) and zips them with that
    list. Kind PER_HEAD_LIST."""
    found: dict[str, str] = {}
    for name, class_facts in facts.items():
        members = constructs[name]
        lists = [
            attribute
            for attribute, construct in members.items()
            if construct.kind is ChildKind.LIST
            and construct.element is not None
            and construct.element.kind is ChildKind.TORCH_NORM
        ]
        others = [
            construct
            for attribute, construct in members.items()
            if attribute not in lists and construct.kind not in (ChildKind.ACTIVATION, ChildKind.STATELESS)
        ]
        forward = class_facts.forward
        if (
            len(lists) == 1
            and not others
            and forward is not None
            and _splits_and_zips(forward, lists[0], index)
        ):
            found[name] = PER_HEAD_LIST
    return found


def _splits_and_zips(forward: cst.FunctionDef, attribute: str, index: SourceIndex) -> bool:
    """The forward splits a tensor into slices of one along dim 1 and zips `self.<attribute>` with them."""
    splits = zips = False
    for node in walk(forward.body):
        if not isinstance(node, cst.Call):
            continue
        names = index.qualified_names(node.func)
        is_split = "torch.split" in names or (
            isinstance(node.func, cst.Attribute) and node.func.attr.value == "split"
        )
        if is_split:
            values = [code(arg.value) for arg in node.args]
            splits |= "1" in values and any(
                arg.keyword is not None and arg.keyword.value == "dim" and code(arg.value) == "1"
                for arg in node.args
            )
        elif isinstance(node.func, cst.Name) and node.func.value == "zip":
            zips |= any(code(arg.value) == f"self.{attribute}" for arg in node.args)
    return splits and zips


def _kind_from_bases(class_facts: ClassFacts, index: SourceIndex) -> str | None:
    for base in class_facts.node.bases:
        for name in index.qualified_names(base.value):
            if name in TORCH_NORMS:
                return TORCH_NORMS[name]
    return None


def _kind_from_forward(class_facts: ClassFacts, index: SourceIndex) -> str | None:
    """Kind of norm the forward (or a helper it may call, like `_norm`) computes, if any."""
    if class_facts.forward is None:
        return None
    rsqrt = False
    subtracts = False
    bodies = [method.body for name, method in class_facts.methods.items() if name != "__init__"]
    for node in (node for body in bodies for node in walk(body)):
        if isinstance(node, cst.Call):
            names = index.qualified_names(node.func)
            for name in names:
                if name in _FUNCTIONAL_NORMS:
                    return _FUNCTIONAL_NORMS[name]
            if names & _RSQRT or (isinstance(node.func, cst.Attribute) and node.func.attr.value == "rsqrt"):
                rsqrt = True
        elif isinstance(node, cst.BinaryOperation) and isinstance(node.operator, cst.Subtract):
            subtracts = True
        elif isinstance(node, cst.BinaryOperation) and isinstance(node.operator, cst.Divide):
            rsqrt |= _is_sqrt(node.right, index)  # `x / torch.sqrt(...)`: the same reduction as `x * rsqrt`
    if rsqrt:
        return "layer" if subtracts else "rms"
    return None


def _is_sqrt(node: cst.BaseExpression, index: SourceIndex) -> bool:
    """The root of a mean over a tensor: `torch.sqrt(<... .mean(...) ...>)` or `(<... .mean(...) ...>).sqrt()`
    (a scalar root, `math.sqrt(2 * n)`, is no norm)."""
    if not isinstance(node, cst.Call):
        return False
    if index.qualified_names(node.func) & _SQRT and node.args:
        radicand: cst.CSTNode = node.args[0].value
    elif isinstance(node.func, cst.Attribute) and node.func.attr.value == "sqrt" and not node.args:
        radicand = node.func.value
    else:
        return False
    return any(
        isinstance(child, cst.Call)
        and (
            (isinstance(child.func, cst.Attribute) and child.func.attr.value == "mean")
            or bool(index.qualified_names(child.func) & _MEAN)
        )
        for child in walk(radicand)
    )


def norm_site(
    member: Member,
    kinds: dict[str, str],
    facts: dict[str, ClassFacts],
    owner_flow: Flow | None,
    column_projections: frozenset[str],
    index: SourceIndex,
) -> NormSite | None:
    """The NormSite for a member holding a norm, or None when the member is not a norm.

    `column_projections` are the owner's column-parallel projections: a norm of their output reduces
    over a sharded width unless it is applied per head.
    """
    construct = member.construct
    call = construct.call
    if call is None:
        return None
    scope = member.owner.scope
    if construct.kind is ChildKind.TORCH_NORM:
        width_position = 1 if construct.norm_kind == "group" else 0
        width = _argument(call, width_position, _WIDTH_KEYWORDS)
        eps = _argument(call, 99, ("eps",))
        kind, norm_class = construct.norm_kind or "other", construct.qualified
    elif construct.kind is ChildKind.CLASS and construct.qualified in kinds:
        callee = facts[construct.qualified]
        bound = bind_arguments(call, callee, scope)
        params = [name for name, _ in callee.init_params]
        width = bound.names[params[0]][0] if params and params[0] in bound.names else None
        eps = next((bound.names[name][0] for name in ("eps", "epsilon") if name in bound.names), None)
        kind, norm_class = kinds[construct.qualified], construct.qualified
    else:
        return None
    normalises, norm_scope = _scope(member.attribute, owner_flow, column_projections)
    return NormSite(
        path=member.path,
        owner=member.owner.class_name,
        attribute=member.attribute,
        norm_class=norm_class,
        kind=kind,
        width=to_expr(width, scope) if width is not None else Expr("?", None),
        eps=to_expr(eps, scope) if eps is not None else None,
        scope=norm_scope,
        normalises=normalises,
        location=Location(index.display_path, index.line(member.assign.statement)),
    )


def _scope(
    attribute: str, owner_flow: Flow | None, projections: frozenset[str]
) -> tuple[tuple[str, ...], NormScope]:
    """Which column projections the norm is applied to, and whether after the split into heads."""
    if owner_flow is None:
        return (), NormScope.HIDDEN
    inputs = frozenset().union(*(call.inputs for call in owner_flow.calls_of(attribute)))
    fed = sorted(sources(inputs) & projections)
    if not fed:
        return (), NormScope.HIDDEN
    headed = all(origin.headed for origin in inputs if origin.source in fed)
    return tuple(fed), NormScope.PER_HEAD if headed else NormScope.FULL_WIDTH


def _argument(call: cst.Call, position: int, keywords: tuple[str, ...]) -> cst.BaseExpression | None:
    """Argument by keyword, else by position."""
    for arg in call.args:
        if arg.keyword is not None and arg.keyword.value in keywords:
            return arg.value
    positional = [arg for arg in call.args if arg.keyword is None and not arg.star]
    return positional[position].value if position < len(positional) else None


def norm_call_location(attribute: str, owner_flow: Flow | None, index: SourceIndex) -> Location | None:
    """Where the norm is applied in its owner's forward (first call)."""
    if owner_flow is None:
        return None
    calls = owner_flow.calls_of(attribute)
    return index.location(calls[0].node) if calls else None


def normalised_heads(
    norm: NormSite, geometries: list[AttentionGeometry]
) -> tuple[AttentionGeometry, str] | None:
    """The attention whose query or key projection alone the norm normalises, and which one ("query" or
    "key"); None for a norm of anything else (several projections, the values, another module's)."""
    owner_path = norm.path.rpartition(".")[0]
    for geometry in geometries:
        if geometry.path != owner_path or len(norm.normalises) != 1:
            continue
        if norm.normalises[0] == geometry.q:
            return geometry, "query"
        if norm.normalises[0] == geometry.k:
            return geometry, "key"
    return None


def head_count(geometry: AttentionGeometry, projection: str) -> Expr:
    """The number of heads of the attention's query or key projection."""
    return geometry.num_heads if projection == "query" else geometry.num_kv_heads


def _evaluated(expression: Expr, config: object) -> object:
    try:
        return expression.evaluate(config)
    except Exception:  # not config-only, or needs loop variables
        return None


def with_head_rows(
    norms: list[NormSite], geometries: list[AttentionGeometry], config: object
) -> list[NormSite]:
    """The norms, a per-head one whose width is `(heads, head_dim)` of its projection (on the default
    config) rescoped to HEAD_ROWS."""
    found: list[NormSite] = []
    for norm in norms:
        target = normalised_heads(norm, geometries) if norm.scope is NormScope.PER_HEAD else None
        if target is not None and norm.kind == PER_HEAD_LIST:
            norm = dataclasses.replace(norm, scope=NormScope.HEAD_ROWS)
        elif target is not None:
            geometry, projection = target
            width = _evaluated(norm.width, config)
            rows = (
                _evaluated(head_count(geometry, projection), config),
                _evaluated(geometry.head_dim, config),
            )
            if isinstance(width, tuple | list) and None not in rows and tuple(width) == rows:
                norm = dataclasses.replace(norm, scope=NormScope.HEAD_ROWS)
        found.append(norm)
    return found


def has_distributed_form(norm: NormSite, geometries: list[AttentionGeometry], config: object) -> bool:
    """Whether a full-width norm becomes `ColumnParallelRMSNorm`: an RMS norm with a known eps over the
    whole output of the query or key projection (width `heads * head_dim` on the default config)."""
    target = normalised_heads(norm, geometries)
    if norm.kind != "rms" or norm.eps is None or target is None:
        return False
    geometry, projection = target
    width = _evaluated(norm.width, config)
    heads, head_dim = (
        _evaluated(head_count(geometry, projection), config),
        _evaluated(geometry.head_dim, config),
    )
    return (
        isinstance(width, int)
        and isinstance(heads, int)
        and isinstance(head_dim, int)
        and width == heads * head_dim
    )
