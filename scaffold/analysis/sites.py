"""Instance-level facts: every layer, norm and bare parameter at its module path, with its role.

Per-class facts from the context are combined with each instance's scope, so sizes resolve to config
expressions for that instance, and with the tp plan entry for its path.
"""

from __future__ import annotations

import dataclasses

import libcst as cst

from ..blueprint import (
    AttentionGeometry,
    Backbone,
    Expr,
    LayerKind,
    LayerSite,
    Location,
    MLPBlock,
    NormScope,
    NormSite,
    ParameterSite,
    Refusal,
    Role,
)
from ..refusal_codes import UNKNOWN_ROLE
from ..syntax import find_method, names_in, self_attribute, walk
from .attention import geometry
from .constructors import ChildKind
from .context import Context, decoder_layer_list, decoder_stack, stack_class
from .expressions import Scope, to_expr
from .mlp import mlp_block
from .norms import norm_site
from .parsing import SourceIndex
from .roles import Decision, FlowRole, decide_embedding, decide_projection, head_transforms, plan_key
from .tree import Member

_ARGUMENTS: dict[LayerKind, tuple[tuple[int, str], tuple[int, str], tuple[int, str] | None]] = {
    # (in, out, bias) as (position, keyword); Conv1D(nf, nx) takes the output size first.
    LayerKind.LINEAR: ((0, "in_features"), (1, "out_features"), (2, "bias")),
    LayerKind.EMBEDDING: ((0, "num_embeddings"), (1, "embedding_dim"), None),
    LayerKind.CONV1D_TRANSPOSED: ((1, "nx"), (0, "nf"), None),
    LayerKind.CONVOLUTION: ((0, "in_channels"), (1, "out_channels"), (7, "bias")),
}


def base_prefix(context: Context) -> str:
    """Attribute of the causal LM that holds the base model."""
    for member in context.tree.members:
        if member.owner.parent is None and member.construct.qualified == context.source.base_model_class:
            return member.attribute
    return ""


def causal_lm_head_transforms(context: Context) -> frozenset[str]:
    """Children of the causal LM applied to the base model's output before the vocabulary projection."""
    head = context.classes.get(context.source.causal_lm_class)
    if head is None:
        return frozenset()
    return head_transforms(head.forward, head.flow_roles, base_prefix(context))


def layer_sites(context: Context) -> tuple[list[LayerSite], list[Refusal]]:
    """Every layer with weights, in module-tree order, and the refusals its role decision raised."""
    prefix = base_prefix(context)
    transforms = causal_lm_head_transforms(context)
    sites: list[LayerSite] = []
    refusals: list[Refusal] = []
    for member in context.tree.members:
        construct = member.construct.element if member.construct.kind is ChildKind.LIST else member.construct
        if construct is None or construct.kind is not ChildKind.LAYER or construct.call is None:
            continue
        kind = construct.layer_kind or LayerKind.OTHER
        call = construct.call
        scope = member.owner.scope
        in_spec, out_spec, bias_spec = _ARGUMENTS.get(kind, ((0, ""), (1, ""), None))
        in_node, out_node = _arg(call, *in_spec), _arg(call, *out_spec)
        bias_node = _arg(call, *bias_spec) if bias_spec else None
        in_features = to_expr(in_node, scope) if in_node is not None else Expr("?", None)
        out_features = to_expr(out_node, scope) if out_node is not None else Expr("?", None)
        if bias_node is not None:
            bias = to_expr(bias_node, scope)
        else:
            bias = Expr("False", "False") if kind is LayerKind.EMBEDDING else Expr("True", "True")
        padding = _arg(call, 2, "padding_idx") if kind is LayerKind.EMBEDDING else None
        location = Location(context.display_path, context.index.line(member.assign.statement))
        key = plan_key(member.path, prefix)
        style = context.tp_plan.get(key) if key is not None else None
        if kind is LayerKind.EMBEDDING:
            decision = decide_embedding(in_features)
        elif kind in (LayerKind.LINEAR, LayerKind.CONV1D_TRANSPOSED):
            analysis = context.classes[member.owner.class_name]
            flow_role = analysis.flow_roles.get(member.attribute, FlowRole(None, "not called in forward"))
            decision = decide_projection(style, flow_role, location, member.path)
            if (
                decision.refusal is not None
                and decision.refusal.code == UNKNOWN_ROLE.code
                and member.path.partition(".")[0] in transforms
                and member.owner.class_name != context.source.causal_lm_class
            ):
                decision = Decision(
                    Role.REPLICATED,
                    f"head transform: the causal LM applies '{member.path.partition('.')[0]}' to the hidden "
                    "stream before the vocabulary projection (sequence-sharded under SP); "
                    f"dataflow: {flow_role.evidence}",
                )
            if kind is LayerKind.CONV1D_TRANSPOSED:  # refused as R002 whatever its role
                decision = dataclasses.replace(decision, refusal=None)
        else:
            decision = None
        if decision is not None and decision.refusal is not None:
            refusals.append(decision.refusal)
        sites.append(
            LayerSite(
                path=member.path,
                owner=member.owner.class_name,
                attribute=member.attribute,
                kind=kind,
                constructor=construct.qualified,
                source=SourceIndex.code(call),
                in_features=in_features,
                out_features=out_features,
                bias=bias,
                padding_idx=to_expr(padding, scope) if padding is not None else None,
                role=decision.role if decision is not None else Role.UNRESOLVED,
                evidence=decision.evidence if decision is not None else "refused layer type",
                plan_key=key if style is not None else None,
                conditional=member.assign.conditional,
                location=location,
            )
        )
    return sites, refusals


def _arg(call: cst.Call, position: int, keyword: str) -> cst.BaseExpression | None:
    for arg in call.args:
        if arg.keyword is not None and arg.keyword.value == keyword:
            return arg.value
    positional = [arg for arg in call.args if arg.keyword is None and not arg.star]
    return positional[position].value if position < len(positional) else None


def norm_sites(context: Context) -> list[NormSite]:
    """Every norm instance with the scope its dataflow gives it."""
    found: list[NormSite] = []
    for member in context.tree.members:
        analysis = context.classes[member.owner.class_name]
        columns = frozenset(attr for attr, found in analysis.flow_roles.items() if found.role is Role.COLUMN)
        site = norm_site(
            member,
            context.norm_kinds,
            {name: other.facts for name, other in context.classes.items()},
            analysis.forward,
            columns,
            context.index,
        )
        if site is not None:
            found.append(site)
    return found


def parameter_sites(context: Context) -> list[ParameterSite]:
    """Bare parameters created outside norm classes."""
    found: list[ParameterSite] = []
    for member in context.tree.members:
        if member.construct.kind is not ChildKind.PARAMETER or member.owner.class_name in context.norm_kinds:
            continue
        found.append(
            ParameterSite(
                path=member.path,
                owner=member.owner.class_name,
                attribute=member.attribute,
                source=SourceIndex.code(member.assign.value),
                location=Location(context.display_path, context.index.line(member.assign.statement)),
            )
        )
    return found


def attention_geometries(context: Context, norms: list[NormSite]) -> list[AttentionGeometry]:
    """One geometry per instance of each attention class."""
    found: list[AttentionGeometry] = []
    for instance in context.tree.instances:
        analysis = context.classes.get(instance.class_name)
        if analysis is None or analysis.attention is None or analysis.forward is None:
            continue
        found.append(
            geometry(
                analysis.attention,
                instance.class_name,
                instance.path,
                analysis.forward,
                instance.scope,
                _out_features(context, instance.class_name),
                norms,
                context.index,
                context.default_config,
            )
        )
    return found


def mlp_blocks(context: Context) -> list[MLPBlock]:
    """One block per instance of each feed-forward class."""
    found: list[MLPBlock] = []
    for instance in context.tree.instances:
        block = class_mlp_block(context, instance.class_name, instance.path, instance.scope)
        if block is not None:
            found.append(block)
    return found


def class_mlp_block(context: Context, class_name: str, path: str, scope: Scope) -> MLPBlock | None:
    """The feed-forward block of an instance of `class_name` at `path` resolved in `scope`, if it is one."""
    analysis = context.classes.get(class_name)
    if analysis is None or analysis.mlp is None:
        return None
    activations = {
        attr: assign.value
        for attr in analysis.constructs
        if analysis.constructs[attr].kind is ChildKind.ACTIVATION
        and (assign := analysis.facts.last_assign(attr)) is not None
    }
    return mlp_block(
        analysis.mlp, class_name, path, scope, _out_features(context, class_name), activations, context.index
    )


def _out_features(context: Context, class_name: str) -> dict[str, cst.BaseExpression]:
    """Out-features argument of each projection of a class (as written)."""
    analysis = context.classes[class_name]
    found: dict[str, cst.BaseExpression] = {}
    for attr, construct in analysis.constructs.items():
        if construct.kind is ChildKind.LAYER and construct.call is not None and construct.layer_kind:
            spec = _ARGUMENTS.get(construct.layer_kind)
            if spec is not None:
                node = _arg(construct.call, *spec[1])
                if node is not None:
                    found[attr] = node
    return found


def backbone(context: Context, sites: list[LayerSite], norms: list[NormSite]) -> Backbone:
    """Where the embedding, layers, final norm, rotary embedding and lm_head live."""
    prefix = base_prefix(context)
    layers = decoder_layer_list(context)
    layer_path = f"{prefix}.{layers[0]}.*" if layers and prefix else None
    embedding = next((site.path for site in sites if site.role is Role.EMBEDDING), None)
    lm_head = next((site.path for site in sites if site.role is Role.LM_HEAD), None)
    holder = stack_class(context)
    stack = decoder_stack(context)
    stack_path = f"{prefix}.{stack[1]}" if stack is not None and stack[1] and prefix else prefix
    # Embeddings the base model holds besides the token embedding, not sized by the vocabulary: learned
    # absolute positions, looked up from position ids and added to the hidden stream.
    positions = tuple(
        site.path
        for site in sites
        if site.kind is LayerKind.EMBEDDING
        and site.role is Role.REPLICATED
        and stack_path
        and site.path.rpartition(".")[0] == stack_path
    )
    positions += computed_positions(context, holder)
    base_norms = [norm.path for norm in norms if norm.owner == holder and norm.scope is NormScope.HIDDEN]
    rotary = next(
        (
            member.path
            for member in context.tree.members
            if member.owner.class_name == holder
            and member.construct.kind is ChildKind.CLASS
            and context.classes.get(member.construct.qualified) is not None
            and context.classes[member.construct.qualified].kind.value == "rotary"
        ),
        None,
    )
    return Backbone(
        base_model_prefix=prefix,
        embedding=embedding,
        layers=layer_path,
        decoder_layer=layers[1].qualified if layers and not layers[1].heterogeneous else None,
        final_norm=base_norms[-1] if base_norms else None,
        rotary=rotary,
        lm_head=lm_head,
        positions=positions,
        stack_class=holder,
        head_transforms=tuple(sorted(causal_lm_head_transforms(context))),
    )


_WEIGHTED = frozenset({ChildKind.LAYER, ChildKind.TORCH_NORM, ChildKind.PARAMETER, ChildKind.UNKNOWN_LAYER})
POSITION_IDS = "position_ids"


def computed_positions(context: Context, holder: str | None) -> tuple[str, ...]:
    """Paths of the stack class's position modules that hold no weights (sinusoidal tables): a local class
    other than the rotary embedding, with no layer or parameter of its own, that the stack's forward calls
    on `position_ids`. Like learned positions they come out `(B, S, D)`, batch-first over the whole
    sequence, and are added to the hidden stream."""
    if holder is None or holder not in context.classes:
        return ()
    forward = find_method(context.classes[holder].facts.node, "forward")
    if forward is None:
        return ()
    called = {
        attribute
        for node in walk(forward)
        if isinstance(node, cst.Call)
        and (attribute := self_attribute(node.func)) is not None
        and any(POSITION_IDS in names_in(arg.value) for arg in node.args)
    }
    found = []
    for member in context.tree.members:
        construct = member.construct
        local = context.classes.get(construct.qualified or "") if construct.kind is ChildKind.CLASS else None
        if (
            member.owner.class_name == holder
            and member.attribute in called
            and local is not None
            and local.kind.value not in ("rotary", "norm")
            and all(
                child.kind not in _WEIGHTED and child.kind is not ChildKind.CLASS
                for child in local.constructs.values()
            )
        ):
            found.append(member.path)
    return tuple(sorted(set(found)))


def member_location(context: Context, member: Member) -> Location:
    """Location of the `__init__` statement that builds a member."""
    return Location(context.display_path, context.index.line(member.assign.statement))
