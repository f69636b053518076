"""Detect constructs a tensor-parallel rewrite cannot handle, each reported with code and file:line.

Detection reads structure (constructors by qualified name, the dataflow, reshape shapes), never a
model's name: the same detector that refuses Mixtral's experts refuses any list of expert modules
routed by top-k.
"""

from __future__ import annotations

import libcst as cst

from ..blueprint import (
    AttentionGeometry,
    Expr,
    LayerKind,
    LayerSite,
    Location,
    MLPBlock,
    NormScope,
    NormSite,
    Refusal,
    Role,
)
from ..refusal_codes import (
    CONV1D_TRANSPOSED,
    CROSS_ATTENTION,
    FULL_WIDTH_NORM,
    FUSED_PROJECTION,
    HEAD_SHARDED_NORM,
    INTERLEAVED_QKV,
    LAYER_STACK,
    MOE,
    NON_SOFTMAX_MIXER,
    UNKNOWN_LAYER,
    UNMAPPED_PARAMETER,
    UNRECOGNISED_ATTENTION,
)
from ..syntax import code, walk
from .constructors import ChildKind, Construct
from .context import (
    Context,
    base_instance_path,
    class_scope,
    decoder_layer_class,
    decoder_layer_list,
    stack_class,
)
from .dataflow import PARAM_PREFIX, mentions_heads, sources
from .embedding_subclasses import is_replicated_lookup, is_scaled_lookup
from .expressions import Scope, resolved_text, substitute, to_expr
from .norms import PER_HEAD_LIST, has_distributed_form, norm_call_location
from .parsing import SourceIndex
from .sharded_products import sharded_times_input
from .sites import member_location


def detect(
    context: Context,
    sites: list[LayerSite],
    norms: list[NormSite],
    geometries: list[AttentionGeometry],
    moe_classes: frozenset[str] = frozenset(),
    mlps: tuple[MLPBlock, ...] = (),
) -> list[Refusal]:
    """Every refusal the structure calls for (role refusals come from `sites.layer_sites`; the sparse
    blocks of `moe_classes` are judged by `moe.moe_blocks`)."""
    found: list[Refusal] = []
    refused: set[str] = set()  # classes whose attention-like structure is already refused
    found += _mixture_of_experts(context, moe_classes)
    found += _layer_types(context, sites)
    found += _interleaved_qkv(context, refused)
    found += _full_width_norms(context, norms, geometries)
    found += _non_softmax_layers(context, {geometry.path for geometry in geometries})
    found += _per_head_norm_weights(context, norms, geometries)
    found += _cross_attention(context, refused)
    found += _fused_projections(context, refused)
    found += _unrecognised_attention(context, refused)
    found += _parameters_and_unknown_layers(context, moe_classes)
    found += [refusal for _, refusal in learnable_activations(context, mlps) if refusal is not None]
    found += _layer_stack(context)
    found += sharded_times_input(context, sites)
    return _first_per_line(found)


def _mixture_of_experts(context: Context, moe_classes: frozenset[str]) -> list[Refusal]:
    """A list of modules holding projections (other than the decoder stack), or top-k routing, outside
    the sparse blocks that `moe.moe_blocks` judges."""
    layer_list = decoder_layer_list(context)
    base_path = base_instance_path(context)
    stack = f"{base_path}.{layer_list[0]}.*" if layer_list is not None and base_path else None
    found: list[Refusal] = []
    for member in context.tree.members:
        construct = member.construct
        if construct.kind is not ChildKind.LIST or construct.element is None:
            continue
        if stack is None or not member.owner.path.startswith(stack):
            continue  # only lists inside a decoder layer can be experts
        if member.owner.class_name in moe_classes:
            continue
        element = construct.element
        holds_projections = (
            element.kind is ChildKind.CLASS
            and element.qualified in context.classes
            and bool(context.classes[element.qualified].projections)
        )
        if holds_projections:
            found.append(
                Refusal(
                    MOE.code,
                    f"{member.path} is a list of {element.qualified} modules with their own projections "
                    f"(experts); {MOE.why}",
                    member_location(context, member),
                )
            )
    for member in context.tree.members:
        dimensions = _packed_dimensions(member.assign.value)
        if (
            stack is not None
            and member.owner.path.startswith(stack)
            and member.construct.kind is ChildKind.PARAMETER
            and member.owner.class_name not in context.norm_kinds
            and member.owner.class_name not in moe_classes
            and dimensions is not None
        ):
            found.append(
                Refusal(
                    MOE.code,
                    f"{member.owner.class_name}.{member.attribute} is a {dimensions}-D parameter in a decoder layer "
                    f"(experts packed as one tensor, [experts, ...]); NXS040 rebuilds packed experts only from "
                    f"modules that each hold one [experts, ., .] parameter (gate | up and down), children of the "
                    f"block, not from parameters of the block itself; {MOE.why}",
                    member_location(context, member),
                )
            )
    for name, analysis in context.classes.items():
        if name in moe_classes:
            continue
        for flow in analysis.flows.values():
            for call in flow.function_calls:
                func = call.func
                if (isinstance(func, cst.Attribute) and func.attr.value == "topk") or (
                    "torch.topk" in context.index.qualified_names(func)
                ):
                    found.append(
                        Refusal(
                            MOE.code,
                            f"{name}.{flow.method} routes tokens with top-k; {MOE.why}",
                            context.index.location(call.node),
                        )
                    )
    return _first_per_line(found)


def _packed_dimensions(value: cst.BaseExpression) -> int | None:
    """The dimensions of `nn.Parameter(torch.empty(a, b, c, ...))` (any tensor factory) when three or more."""
    if not (isinstance(value, cst.Call) and value.args and isinstance(value.args[0].value, cst.Call)):
        return None
    sizes = [arg for arg in value.args[0].value.args if arg.keyword is None and not arg.star]
    return len(sizes) if len(sizes) >= 3 else None


def _layer_types(context: Context, sites: list[LayerSite]) -> list[Refusal]:
    found: list[Refusal] = []
    holder = stack_class(context)
    for site in sites:
        subclass = context.classes.get(site.constructor)
        # learned positions held by the stack module, kept whole (NXS012 moves their output to the layout)
        positions = (
            site.role is Role.REPLICATED
            and site.kind is LayerKind.EMBEDDING
            and site.owner == holder
            and subclass is not None
            and is_replicated_lookup(subclass.facts, context.index)
        )
        if (
            subclass is not None
            and "forward" in subclass.facts.methods
            and not (site.role is Role.EMBEDDING and is_scaled_lookup(subclass.facts, context.index))
            and not positions
        ):
            found.append(
                Refusal(
                    UNKNOWN_LAYER.code,
                    f"{site.path} is a {site.constructor}, a subclass of a torch layer with its own forward; "
                    f"{UNKNOWN_LAYER.why}",
                    site.location,
                )
            )
        if site.kind is LayerKind.CONV1D_TRANSPOSED:
            found.append(
                Refusal(
                    CONV1D_TRANSPOSED.code,
                    f"{site.path} = {site.source}; {CONV1D_TRANSPOSED.why}",
                    site.location,
                )
            )
        elif site.kind is LayerKind.CONVOLUTION:
            found.append(
                Refusal(
                    NON_SOFTMAX_MIXER.code,
                    f"{site.path} is a convolution ({site.constructor}); {NON_SOFTMAX_MIXER.why}",
                    site.location,
                )
            )
    return found


def _interleaved_qkv(context: Context, refused: set[str]) -> list[Refusal]:
    """A projection output viewed as (..., heads, 3, head_dim) or (..., 3 * head_dim)."""
    found: list[Refusal] = []
    for name, analysis in context.classes.items():
        if not analysis.projections:
            continue
        scope = class_scope(analysis.facts)
        for flow in analysis.flows.values():
            for reshape in flow.reshapes:
                if not reshape.inputs or not _interleaves_three(reshape.shape, flow.local_scope, scope):
                    continue
                shape = ", ".join(SourceIndex.code(element) for element in reshape.shape)
                refused.add(name)
                found.append(
                    Refusal(
                        INTERLEAVED_QKV.code,
                        f"{name}.{flow.method} views a fused projection as ({shape}): q, k and v are "
                        f"interleaved per head; {INTERLEAVED_QKV.why}",
                        context.index.location(reshape.node),
                    )
                )
    return found


def _interleaves_three(shape: tuple[cst.BaseExpression, ...], local_scope: Scope, scope: Scope) -> bool:
    """A shape with a 3 next to a head count or head size, or a `3 * head_size` factor, at any depth
    (locals such as `new_shape = x.size()[:-1] + (heads, 3 * head_size)` are expanded first)."""
    expanded = [substitute(element, local_scope) for element in shape]

    def heads(node: cst.BaseExpression) -> bool:
        return mentions_heads(resolved_text(node, scope))

    def three(node: cst.CSTNode) -> bool:
        return isinstance(node, cst.Integer) and node.evaluated_value == 3

    groups: list[list[cst.BaseExpression]] = [expanded]
    for element in expanded:
        for node in walk(element):
            if isinstance(node, cst.Tuple | cst.List):
                groups.append([item.value for item in node.elements])
            elif (
                isinstance(node, cst.BinaryOperation)
                and isinstance(node.operator, cst.Multiply)
                and ((three(node.left) and heads(node.right)) or (three(node.right) and heads(node.left)))
            ):
                return True
    return any(any(three(item) for item in group) and any(heads(item) for item in group) for group in groups)


def _full_width_norms(
    context: Context, norms: list[NormSite], geometries: list[AttentionGeometry]
) -> list[Refusal]:
    """Full-width norms NXS026 cannot distribute (not an RMS norm over one query or key projection)."""
    found: list[Refusal] = []
    seen: set[tuple[str, str]] = set()
    for norm in norms:
        if norm.scope is not NormScope.FULL_WIDTH or (norm.owner, norm.attribute) in seen:
            continue
        if has_distributed_form(norm, geometries, context.default_config):
            continue
        seen.add((norm.owner, norm.attribute))
        flow = context.classes[norm.owner].forward
        location = norm_call_location(norm.attribute, flow, context.index) or norm.location
        found.append(
            Refusal(
                FULL_WIDTH_NORM.code,
                f"{norm.owner}.{norm.attribute} ({norm.kind} norm) normalises the whole output of "
                f"{', '.join(norm.normalises)} (width {norm.width.source}) before it is split into heads; "
                f"{FULL_WIDTH_NORM.why}",
                location,
                subject=norm.owner,
                rules=("NXS026",),
            )
        )
    return found


def _per_head_norm_weights(
    context: Context, norms: list[NormSite], geometries: list[AttentionGeometry]
) -> list[Refusal]:
    """Per-head norms must have a head_dim-sized weight (checked on the default config)."""
    found: list[Refusal] = []
    head_dims = {geometry.path: geometry.head_dim for geometry in geometries}
    for norm in norms:
        if norm.scope is not NormScope.PER_HEAD:
            continue
        head_dim = head_dims.get(norm.path.rpartition(".")[0])
        if head_dim is None or _same_value(norm.width, head_dim, context.default_config):
            continue
        found.append(
            Refusal(
                HEAD_SHARDED_NORM.code,
                f"{norm.owner}.{norm.attribute} has width {norm.width.source}, not head_dim "
                f"({head_dim.source}); {HEAD_SHARDED_NORM.why}",
                norm.location,
            )
        )
    return _first_per_line(found)


def _same_value(first: Expr, second: Expr, config: object) -> bool:
    """Equal on the default config (texts compared when either cannot be evaluated there)."""
    try:
        return first.evaluate(config) == second.evaluate(config)
    except Exception:  # not config-only, or needs loop variables
        return (first.resolved or first.source) == (second.resolved or second.source)


def _non_softmax_layers(context: Context, has_attention: set[str]) -> list[Refusal]:
    """A decoder layer whose subtree neither holds an attention nor splits anything into heads mixes
    tokens some other way (a fused or interleaved attention still splits into heads, and is refused by
    its own detector)."""
    layer_class = decoder_layer_class(context)
    if layer_class is None:
        return []
    paths = context.tree.paths_of(layer_class)
    if not paths or any(path.startswith(prefix) for path in has_attention for prefix in paths):
        return []
    subtree = {
        instance.class_name
        for instance in context.tree.instances
        if any(instance.path == prefix or instance.path.startswith(prefix + ".") for prefix in paths)
    }
    for name in subtree:
        for flow in context.classes[name].flows.values():
            if any(reshape.headed for reshape in flow.reshapes):
                return []
    analysis = context.classes[layer_class]
    return [
        Refusal(
            NON_SOFTMAX_MIXER.code,
            f"decoder layer {layer_class} contains no softmax attention (q/k/v into an attention kernel); "
            f"{NON_SOFTMAX_MIXER.why}",
            context.index.location(analysis.facts.node),
        )
    ]


def _cross_attention(context: Context, refused: set[str]) -> list[Refusal]:
    """Projections feeding the same consumer read different inputs of the forward (parameters that every
    call of the class binds to the same expression, `attention(x, x, x)`, are one input)."""
    found: list[Refusal] = []
    for name, analysis in context.classes.items():
        flow = analysis.forward
        if flow is None or len(analysis.projections) < 2:
            continue
        same = _same_inputs(context, name)
        for call in flow.module_calls:
            if call.attribute not in analysis.projections:
                continue
            feeding = sources(call.inputs) & analysis.projections
            inputs: dict[str, set[str]] = {}
            for producer in sorted(feeding):
                for producer_call in flow.calls_of(producer):
                    params = {o.source[len(PARAM_PREFIX) :] for o in producer_call.inputs if o.is_param}
                    for param in {same.get(param, param) for param in params}:
                        inputs.setdefault(param, set()).add(producer)
            if len(inputs) > 1:
                described = "; ".join(f"{', '.join(sorted(v))} read {k}" for k, v in sorted(inputs.items()))
                refused.add(name)
                found.append(
                    Refusal(
                        CROSS_ATTENTION.code,
                        f"{name}: projections feeding {call.attribute} read different inputs ({described}); "
                        f"{CROSS_ATTENTION.why}",
                        context.index.location(call.node),
                    )
                )
                break
    return found


def _same_inputs(context: Context, name: str) -> dict[str, str]:
    """The forward parameters of class `name` that every call of its instances binds to the same
    expression as an earlier parameter (`self.attn(normed, normed, normed)` into `forward(v, k, q)`),
    each mapped to that earlier one; empty when no call is seen or a call spreads `*args`."""
    forward = context.classes[name].facts.forward
    if forward is None:
        return {}
    names = [param.name.value for param in (*forward.params.posonly_params, *forward.params.params)][1:]
    bindings: list[dict[str, str]] = []
    for owner in context.classes.values():
        attributes = {
            attribute
            for attribute, construct in owner.constructs.items()
            if name in (construct.qualified, construct.element.qualified if construct.element else None)
        }
        for flow in owner.flows.values():
            for call in flow.module_calls:
                if call.attribute not in attributes:
                    continue
                if any(arg.star for arg in call.node.args):
                    return {}
                bound = dict(zip(names, (code(arg.value) for arg in call.node.args if arg.keyword is None)))
                bound.update((arg.keyword.value, code(arg.value)) for arg in call.node.args if arg.keyword)
                bindings.append(bound)
    if not bindings:
        return {}
    same: dict[str, str] = {}
    for index, later in enumerate(names):
        for earlier in names[:index]:
            if earlier not in same and all(
                later in bound and bound.get(earlier) == bound[later] for bound in bindings
            ):
                same[later] = earlier
                break
    return same


def _fused_projections(context: Context, refused: set[str]) -> list[Refusal]:
    """A projection's output split or sliced on its features before any split into heads."""
    found: list[Refusal] = []
    for name, analysis in context.classes.items():
        flow = analysis.forward
        if flow is None:
            continue
        for split in flow.splits:
            fed = sources(split.inputs) & analysis.projections
            if len(fed) != 1 or any(origin.headed or origin.activated for origin in split.inputs):
                continue
            (projection,) = fed
            refused.add(name)
            found.append(
                Refusal(
                    FUSED_PROJECTION.code,
                    f"{name}: the output of {projection} is split ({split.method}) into several tensors; "
                    f"{FUSED_PROJECTION.why}",
                    context.index.location(split.node),
                )
            )
    return _first_per_line(found)


def _unrecognised_attention(context: Context, refused: set[str]) -> list[Refusal]:
    """Projections split into heads in a class where no attention was recognised."""
    found: list[Refusal] = []
    for name, analysis in context.classes.items():
        flow = analysis.forward
        if flow is None or analysis.attention is not None or name in refused:
            continue
        headed = [r for r in flow.reshapes if r.headed and sources(r.inputs) & analysis.projections]
        if headed:
            found.append(
                Refusal(
                    UNRECOGNISED_ATTENTION.code,
                    f"{name}: {', '.join(sorted(sources(headed[0].inputs) & analysis.projections))} "
                    f"is split into heads here; {UNRECOGNISED_ATTENTION.why}",
                    context.index.location(headed[0].node),
                )
            )
    return found


def learnable_activations(
    context: Context, mlps: tuple[MLPBlock, ...]
) -> list[tuple[tuple[str, str], Refusal | None]]:
    """`ACT2FN[config.x]` whose default activation has parameters (e.g. xIELU), by (owner, attribute): the
    activation of a parallel MLP block (its parameters act on the rank's columns of the intermediate; NXS025
    sums their gradients over TP) with no refusal, any other refused (R011)."""
    learnable = dict(context.source.facts.learnable_activations)
    mlp_activations = {
        (block.owner, block.activation.source) for block in mlps if block.activation is not None
    }
    found: list[tuple[tuple[str, str], Refusal | None]] = []
    seen: set[tuple[str, str]] = set()
    for member in context.tree.members:
        value = member.assign.value
        key = (member.owner.class_name, member.attribute)
        if (
            member.construct.kind is not ChildKind.ACTIVATION
            or key in seen
            or not isinstance(value, cst.Subscript)
        ):
            continue
        seen.add(key)
        index = value.slice[0].slice if len(value.slice) == 1 else None
        if not isinstance(index, cst.Index):
            continue
        name_expr = to_expr(index.value, member.owner.scope)
        if name_expr.resolved is None or name_expr.variables:
            continue
        try:
            activation = learnable.get(name_expr.evaluate(context.default_config))
        except (TypeError, ValueError, AttributeError):
            continue
        if activation is None:
            continue
        if (member.owner.class_name, SourceIndex.code(index.value)) in mlp_activations:
            found.append((key, None))
            continue
        refusal = Refusal(
            UNMAPPED_PARAMETER.code,
            f"{member.owner.class_name}.{member.attribute} = {SourceIndex.code(value)} builds "
            f"{activation}, an activation with learnable parameters, outside a parallel MLP's intermediate; "
            f"{UNMAPPED_PARAMETER.why}",
            member_location(context, member),
        )
        found.append((key, refusal))
    return found


def _parameters_and_unknown_layers(context: Context, moe_classes: frozenset[str]) -> list[Refusal]:
    """Bare parameters, lists of non-modules and unknown layers (the packed experts of the sparse blocks
    that `moe.moe_blocks` judges are theirs)."""
    found: list[Refusal] = []
    seen: set[tuple[str, str]] = set()
    for member in context.tree.members:
        owner = member.owner.class_name
        key = (owner, member.attribute)
        if key in seen:
            continue
        seen.add(key)
        kind = member.construct.kind
        if kind is ChildKind.PARAMETER and owner not in context.norm_kinds and owner not in moe_classes:
            found.append(
                Refusal(
                    UNMAPPED_PARAMETER.code,
                    f"{owner}.{member.attribute} = {SourceIndex.code(member.assign.value)}; {UNMAPPED_PARAMETER.why}",
                    member_location(context, member),
                )
            )
        elif (
            kind is ChildKind.LIST
            and context.norm_kinds.get(owner) != PER_HEAD_LIST  # one norm per head: sharded by head (NXS026)
            and member.construct.element is not None
            and member.construct.element.kind
            not in (
                ChildKind.CLASS,
                ChildKind.LAYER,
            )
        ):
            element = member.construct.element
            found.append(
                Refusal(
                    UNKNOWN_LAYER.code,
                    f"{owner}.{member.attribute} is a list of {element.qualified or element.kind.value} "
                    f"(one per head or per position?); {UNKNOWN_LAYER.why}",
                    member_location(context, member),
                )
            )
        elif kind is ChildKind.UNKNOWN_LAYER and not _weightless_dict(context, member.construct):
            found.append(
                Refusal(
                    UNKNOWN_LAYER.code,
                    f"{owner}.{member.attribute} is a {member.construct.qualified}; {UNKNOWN_LAYER.why}",
                    member_location(context, member),
                )
            )
    return found


def _weightless_dict(context: Context, construct: Construct) -> bool:
    """`nn.ModuleDict({key: C(...), ...})` of local classes that hold no weights (rotary embeddings of
    several kinds): nothing in it to convert."""
    call = construct.call
    if construct.qualified != "torch.nn.ModuleDict" or call is None or len(call.args) != 1:
        return False
    table = call.args[0].value
    return (
        isinstance(table, cst.Dict)
        and bool(table.elements)
        and all(
            isinstance(element, cst.DictElement)
            and isinstance(element.value, cst.Call)
            and isinstance(element.value.func, cst.Name)
            and element.value.func.value in context.weightless
            for element in table.elements
        )
    )


def _layer_stack(context: Context) -> list[Refusal]:
    if base_instance_path(context) is None:
        root = context.classes[context.source.causal_lm_class]
        return [
            Refusal(
                LAYER_STACK.code,
                f"{context.source.causal_lm_class} does not hold {context.source.base_model_class} directly "
                f"(e.g. an encoder-decoder wrapper); {LAYER_STACK.why}",
                context.index.location(root.facts.node),
            )
        ]
    layers = decoder_layer_list(context)
    if layers is None:
        base = context.classes[context.source.base_model_class]
        return [
            Refusal(
                LAYER_STACK.code,
                f"{context.source.base_model_class} has no nn.ModuleList of decoder layers; {LAYER_STACK.why}",
                context.index.location(base.facts.node),
            )
        ]
    attribute, construct = layers
    if not construct.heterogeneous:
        return []
    holder = context.classes[stack_class(context)]
    own = attribute.rsplit(".", 1)[-1]
    assign = holder.facts.last_assign(own)
    location = (
        context.index.location(assign.statement)
        if assign is not None
        else context.index.location(holder.facts.node)
    )
    return [
        Refusal(
            LAYER_STACK.code,
            f"{holder.facts.name}.{own} builds its layers indirectly or from several classes; {LAYER_STACK.why}",
            location,
        )
    ]


def _first_per_line(refusals: list[Refusal]) -> list[Refusal]:
    seen: set[tuple[str, Location]] = set()
    kept: list[Refusal] = []
    for refusal in refusals:
        key = (refusal.code, refusal.location)
        if key not in seen:
            seen.add(key)
            kept.append(refusal)
    return kept
