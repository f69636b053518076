"""Recognise sparse mixture-of-experts blocks: what NXS040 needs to rebuild one on NxD's `MoE`.

A block is a class whose constructor builds a `nn.ModuleList` of expert classes that hold projections
(other than the decoder-layer list). It is recognised from its structure and its forward, never its name:

- the router: the linear whose output goes through a softmax and then `topk` (NxD's `RouterTopK` with
  `act_fn="softmax"`); the top-k count is `topk`'s second argument;
- the renormalisation of the top-k probabilities (`w /= w.sum(...)` or `w = w / w.sum(...)` on what
  `topk` returned): always, never, or under the condition of the `if` around it (`norm_topk_prob`);
- the router jitter: a `uniform_(1 - eps, 1 + eps)` noise in the forward;
- the experts: gated MLPs (gate, up, down as the MLP analysis finds them), their count the `range` of the
  list's comprehension, their intermediate size and activation resolved through the expert's constructor;
- a shared expert: another MLP child, optionally scaled by a sigmoid of a linear to one output.

A block that routes with a function of its own instead (`weights, indices = f(logits, ...)` on one linear
router's logits, `f` a function of the source module: PhiMoE's `sparsemixer`) keeps it: the block's
`routing` is that call as NxD's router writes it (`router_logits` for the logits, `self.config.<field>` for
what the block reads from the config, `self.training` kept), and its top-k count is the function's `top_k`
(or `k`) argument, passed or defaulted.

Every expression is resolved to the config. A block that has experts but another structure is refused:
R029 when the routing is neither (sigmoid or grouped top-k, a bias-corrected choice), R001 (narrowed)
when the block holds other modules or its experts are not gated MLPs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

import libcst as cst

from ..blueprint import Expr, MoEBlock, Refusal
from ..refusal_codes import MOE, UNRECOGNISED_ROUTING
from ..syntax import code, self_attribute, walk
from .classes import config_parameter
from .constructors import ChildKind, Construct
from .context import ClassAnalysis, Context, decoder_layer_list
from .expressions import CONFIG_SCOPE_NAME, Scope, to_expr
from .packed_experts import PackedChild, packed_block, packed_children
from .sites import class_mlp_block
from .tree import bind_arguments, instance_scope

SOFTMAX = frozenset({"torch.nn.functional.softmax", "torch.softmax"})
SIGMOID = frozenset({"torch.sigmoid", "torch.nn.functional.sigmoid"})
TOPK = frozenset({"torch.topk"})
TORCH_ACTIVATIONS = frozenset(
    {"silu", "gelu", "relu", "tanh", "sigmoid", "mish"}
)  # torch functions ACT2FN names
TRUE = Expr("True", "True")
FALSE = Expr("False", "False")


@dataclass(frozen=True)
class MoEFindings:
    """The recognised blocks, the refusals of blocks that were not, and the router paths NXS040 owns."""

    blocks: tuple[MoEBlock, ...]
    refusals: tuple[Refusal, ...]
    routers: frozenset[str]  # module paths of routers and shared-expert gates (kept whole: replicated)
    owned: frozenset[str] = frozenset()  # classes a packed or refused block is built from (experts, router)

    @property
    def refused(self) -> frozenset[str]:
        """The classes of the blocks that were refused."""
        return frozenset(refusal.subject for refusal in self.refusals if refusal.subject is not None)


def moe_blocks(context: Context) -> MoEFindings:
    """Every sparse MoE block of the closure, recognised or refused."""
    blocks: list[MoEBlock] = []
    refusals: list[Refusal] = []
    routers: set[str] = set()
    owned: set[str] = set()
    stack = decoder_layer_list(context)
    layer_class = stack[1].qualified if stack is not None else None
    for name in context.closure:
        analysis = context.classes.get(name)
        if analysis is None:
            continue
        experts = [
            (attribute, construct)
            for attribute, construct in analysis.constructs.items()
            if construct.kind is ChildKind.LIST
            and construct.element is not None
            and construct.element.kind is ChildKind.CLASS
            and construct.element.qualified != layer_class
            and construct.element.qualified in context.classes
            and context.classes[construct.element.qualified].projections
        ]
        packed = packed_children(context, analysis) if not experts else []
        if not experts and not packed:
            continue
        found = (
            _block(context, name, analysis, experts) if experts else _packed(context, name, analysis, packed)
        )
        if isinstance(found, Refusal):
            refusals.append(found)
            owned.update(child.construct.qualified for child in packed)
            owned.update(_only_in(context, name, analysis))  # its router: the block's refusal covers it
            continue
        blocks.append(found)
        if found.packed is not None:
            owned.update(found.packed.classes)
        for path in context.tree.paths_of(name):
            routers.update(
                f"{path}.{attribute}" for attribute in (found.router, found.shared_expert_gate) if attribute
            )
    return MoEFindings(tuple(blocks), tuple(refusals), frozenset(routers), frozenset(owned))


def _only_in(context: Context, name: str, analysis: ClassAnalysis) -> set[str]:
    """The local classes `name` builds as children that have no instance outside its instances."""
    blocks = tuple(f"{path}." for path in context.tree.paths_of(name))
    return {
        construct.qualified
        for construct in analysis.constructs.values()
        if construct.kind is ChildKind.CLASS
        and construct.qualified in context.classes
        and context.tree.paths_of(construct.qualified)
        and all(path.startswith(blocks) for path in context.tree.paths_of(construct.qualified))
    }


def _packed(
    context: Context, name: str, analysis: ClassAnalysis, children: list[PackedChild]
) -> MoEBlock | Refusal:
    """A block whose experts are packed parameters (see `packed_experts`), or its refusal."""
    facts = analysis.facts
    parameter = config_parameter(facts, context.config.class_name) or "config"
    scope = instance_scope(facts, Scope(names={parameter: (CONFIG_SCOPE_NAME, None)}))
    found = packed_block(context, analysis, scope, children)
    if found.why is not None:
        first = children[0]
        assign = context.classes[first.construct.qualified].facts.last_assign(first.parameters[0])
        node = found.node or (assign.statement if assign is not None else facts.node)
        return Refusal(
            MOE.code,
            f"{name} (experts packed as parameters, `{first.attribute}.{first.parameters[0]}`...): "
            f"{found.why}; {MOE.why}",
            context.index.location(node),
            subject=name,
            rules=("NXS040",),
        )
    experts, routing = found.experts, found.routing
    assert experts is not None and routing is not None and found.num_experts is not None
    assert found.intermediate_size is not None and found.activation is not None
    holder = _holder(context, name)
    if isinstance(holder, str):
        return Refusal(
            MOE.code,
            f"{name}: {holder}; {MOE.why}",
            context.index.location(facts.node),
            subject=name,
            rules=("NXS040",),
        )
    layer_class, layer_attribute, dense_layers, plumbed = holder
    gate_up_module = experts.gate_up.rpartition(".")[0]
    return MoEBlock(
        owner=name,
        router=routing.router,
        experts=gate_up_module,
        expert_class=analysis.constructs[gate_up_module].qualified,
        gate=experts.gate_up,
        up=experts.gate_up,
        down=experts.down,
        num_experts=found.num_experts,
        top_k=routing.top_k,
        hidden_size=routing.hidden_size,
        intermediate_size=found.intermediate_size,
        activation=found.activation,
        normalize=routing.normalize,
        jitter=None,
        shared_expert=None,
        shared_expert_gate=None,
        layer_class=layer_class,
        layer_attribute=layer_attribute,
        dense_layers=dense_layers,
        logits_plumbed=plumbed,
        location=context.index.location(facts.node),
        packed=experts,
    )


def _block(
    context: Context, name: str, analysis: ClassAnalysis, experts: list[tuple[str, Construct]]
) -> MoEBlock | Refusal:
    facts = analysis.facts

    def refuse(code_: str, why: str, attribute: str) -> Refusal:
        """A refusal at the statement that builds `attribute` (the expert list, or the router)."""
        assign = facts.last_assign(attribute)
        node = assign.statement if assign is not None else facts.node
        return Refusal(code_, f"{name}: {why}", context.index.location(node), subject=name, rules=("NXS040",))

    experts_attribute, experts_construct = experts[0]
    if len(experts) != 1:
        return refuse(MOE.code, f"holds {len(experts)} expert lists; {MOE.why}", experts_attribute)
    forward = facts.forward
    if forward is None:
        return refuse(MOE.code, f"has no forward; {MOE.why}", experts_attribute)
    parameter = config_parameter(facts, context.config.class_name) or "config"
    scope = instance_scope(facts, Scope(names={parameter: (CONFIG_SCOPE_NAME, None)}))
    count = _expert_count(facts.last_assign(experts_attribute))
    if count is None:
        return refuse(
            MOE.code,
            f"`self.{experts_attribute}` is not built as `[...for _ in range(n)]`; {MOE.why}",
            experts_attribute,
        )
    routing = _routing(context, forward, analysis)
    function_routing: FunctionRouting | None = None
    if isinstance(routing, str):
        routers = _routers(analysis, count, scope)
        if not routers:
            return refuse(
                MOE.code,
                f"no linear sized by the number of experts routes them; {MOE.why}",
                experts_attribute,
            )
        found = _function_routing(context, forward, routers, scope)
        if isinstance(found, str):
            consumer = _consumer(forward, routers[0])
            routing += f" (the router's logits go to `{consumer}`: {found})" if consumer else f" ({found})"
            return refuse(UNRECOGNISED_ROUTING.code, f"{routing}; {UNRECOGNISED_ROUTING.why}", routers[0])
        function_routing = found
        routing = (found.router, found.top_k, FALSE, _jitter(forward))
    router, top_k, normalize, jitter = routing

    expert_class = experts_construct.qualified
    assert experts_construct.element is not None and experts_construct.element.call is not None
    expert_scope = instance_scope(
        context.classes[expert_class].facts,
        bind_arguments(experts_construct.element.call, context.classes[expert_class].facts, scope),
    )
    mlp = class_mlp_block(context, expert_class, f"{experts_attribute}.*", expert_scope)
    if mlp is not None and mlp.activation is not None and mlp.activation.resolved is None:
        # `F.silu(...)` in the expert: NxD's ExpertMLPs takes the activation by its ACT2FN name.
        function = mlp.activation.source.rsplit(".", 1)[-1]
        if function in TORCH_ACTIVATIONS:
            mlp = dataclasses.replace(mlp, activation=Expr(mlp.activation.source, f'"{function}"'))
    if mlp is None or mlp.gate is None or mlp.activation is None or mlp.activation.resolved is None:
        return refuse(
            MOE.code,
            f"its experts ({expert_class}) are not gated MLPs with a named activation; {MOE.why}",
            experts_attribute,
        )

    shared, shared_gate, others = None, None, []
    for attribute, construct in analysis.constructs.items():
        if attribute in (router, experts_attribute) or construct.kind in (
            ChildKind.ACTIVATION,
            ChildKind.STATELESS,
        ):
            continue
        shared_class = context.classes.get(construct.qualified) if construct.kind is ChildKind.CLASS else None
        if shared_class is not None and shared_class.mlp is not None and shared is None:
            shared = attribute
            continue
        if (
            construct.kind is ChildKind.LAYER
            and shared_gate is None
            and _sigmoid_gate(context, forward, attribute)
        ):
            shared_gate = attribute
            continue
        others.append(attribute)
    if others:
        listed = ", ".join(f"`{attribute}`" for attribute in others)
        return refuse(
            MOE.code,
            f"also holds {listed} besides the router, the experts and a shared expert; {MOE.why}",
            others[0],
        )
    if shared_gate is not None and shared is None:
        return refuse(MOE.code, f"gates `{shared_gate}` without a shared expert; {MOE.why}", shared_gate)

    holder = _holder(context, name)
    if isinstance(holder, str):
        return refuse(MOE.code, f"{holder}; {MOE.why}", experts_attribute)
    layer_class, layer_attribute, dense_layers, plumbed = holder

    router_call = analysis.constructs[router].call
    assert router_call is not None
    return MoEBlock(
        owner=name,
        router=router,
        experts=experts_attribute,
        expert_class=expert_class,
        gate=mlp.gate,
        up=mlp.up,
        down=mlp.down,
        num_experts=to_expr(count, scope),
        top_k=to_expr(top_k, scope),
        hidden_size=to_expr(router_call.args[0].value, scope),
        intermediate_size=mlp.intermediate_size,
        activation=mlp.activation,
        normalize=normalize if normalize in (TRUE, FALSE) else to_expr(normalize, scope),  # type: ignore[arg-type]
        jitter=to_expr(jitter, scope) if jitter is not None else None,
        shared_expert=shared,
        shared_expert_gate=shared_gate,
        layer_class=layer_class,
        layer_attribute=layer_attribute,
        dense_layers=dense_layers,
        logits_plumbed=plumbed,
        location=context.index.location(facts.node),
        routing=function_routing.call if function_routing is not None else None,
        routing_function=function_routing.function if function_routing is not None else None,
    )


def _holder(context: Context, block: str) -> tuple[str, str, bool, bool] | str:
    """(decoder layer class, attribute, built under a condition, logits already returned) of the block,
    or why it cannot return its router logits from there. A layer that takes `output_router_logits`
    returns them already (transformers' older MoE files, with their base model collecting them); else it
    must unpack the block's `(hidden_states, router_logits)` as `x, _ = ...` and return one value, which
    NXS040 turns into `(x, router_logits)`."""
    stack = decoder_layer_list(context)
    layer = stack[1].qualified if stack is not None else None
    facts = context.classes[layer].facts if layer in context.classes else None
    holders = [
        assign
        for assign in (facts.assigns if facts is not None else [])
        if isinstance(assign.value, cst.Call)
        and isinstance(assign.value.func, cst.Name)
        and assign.value.func.value == block
    ]
    if facts is None or len(holders) != 1 or facts.forward is None:
        return "no decoder layer builds the block once"
    assert layer is not None
    attribute = holders[0].attribute
    forward = facts.forward
    if any(param.name.value == "output_router_logits" for param in forward.params.params):
        return layer, attribute, holders[0].conditional, True
    if not any(_drops_second(node) for node in walk(forward)):
        return f"{layer}.forward does not unpack the block's output as `hidden_states, _ = ...`"
    returns = [node for node in walk(forward) if isinstance(node, cst.Return)]
    if len(returns) != 1 or not isinstance(returns[0].value, cst.Name):
        return f"{layer}.forward does not return one value (the router logits cannot be added to it)"
    return layer, attribute, holders[0].conditional, False


def _drops_second(node: cst.CSTNode) -> bool:
    """`x, _ = ...`: an unpacking that drops the second value."""
    if not isinstance(node, cst.Assign) or len(node.targets) != 1:
        return False
    target = node.targets[0].target
    return (
        isinstance(target, cst.Tuple)
        and len(target.elements) == 2
        and isinstance(target.elements[1].value, cst.Name)
        and target.elements[1].value.value == "_"
    )


def _consumer(forward: cst.FunctionDef, router: str) -> str | None:
    """The function the router's logits are first passed to (`sparsemixer`), if one is."""
    logits = {
        name
        for name, statement in _assignments(forward)
        if isinstance(statement.value, cst.Call) and self_attribute(statement.value.func) == router
    }
    for node in walk(forward):
        if isinstance(node, cst.Call) and any(
            isinstance(arg.value, cst.Name) and arg.value.value in logits for arg in node.args
        ):
            return code(node.func)
    return None


@dataclass(frozen=True)
class FunctionRouting:
    """A block that routes with a function of the source module: `weights, indices = f(logits, ...)`."""

    router: str  # attribute of the linear router
    function: str  # the routing function's name
    call: str  # the call as NxD's router writes it
    top_k: cst.BaseExpression


TOP_K_PARAMETERS = ("top_k", "k")
ROUTER_LOGITS = cst.Name("router_logits")


def _function_routing(
    context: Context, forward: cst.FunctionDef, routers: list[str], scope: Scope
) -> FunctionRouting | str:
    """The routing function of the block, or why its router's logits do not go to one."""
    logits = {
        name: router
        for name, statement in _assignments(forward)
        for router in routers
        if isinstance(statement.value, cst.Call) and self_attribute(statement.value.func) == router
    }
    if len(logits) != 1:
        return "the router's logits are not assigned to one name"
    ((name, router),) = logits.items()
    calls = [
        node
        for node in walk(forward)
        if isinstance(node, cst.Call)
        and any(isinstance(arg.value, cst.Name) and arg.value.value == name for arg in node.args)
    ]
    call = calls[0] if calls else None
    function = call.func.value if call is not None and isinstance(call.func, cst.Name) else None
    definition = context.mapping.functions.get(function) if function is not None else None
    if call is None or definition is None:
        return "they go to no function of the modeling file"
    if not any(
        isinstance(node, cst.Assign)
        and node.value is call
        and len(node.targets) == 1
        and isinstance(node.targets[0].target, cst.Tuple)
        and len(node.targets[0].target.elements) == 2
        for node in walk(forward)
    ):
        return f"`{function}` is not unpacked as `weights, indices = {function}(...)`"
    arguments = _bound(call, definition)
    if arguments is None:
        return f"`{code(call)}` passes arguments by `*` or `**`"
    top_k = next((arguments[p] for p in TOP_K_PARAMETERS if p in arguments), None)
    if top_k is None or to_expr(top_k, scope).resolved is None:
        return f"`{function}` takes no `top_k` (or `k`) that resolves to the config or a constant"

    class _Written(cst.CSTTransformer):
        """The call's arguments as the router writes them (None where one cannot be)."""

        def __init__(self) -> None:
            self.unresolved: list[str] = []

        def leave_Arg(self, original: cst.Arg, updated: cst.Arg) -> cst.Arg:
            value = original.value
            if isinstance(value, cst.Name) and value.value == name:
                return updated.with_changes(value=ROUTER_LOGITS)
            if code(value) == "self.training":
                return updated
            resolved = to_expr(value, scope).resolved
            if resolved is None:
                self.unresolved.append(code(value))
                return updated
            return updated.with_changes(value=_on_self_config(cst.parse_expression(resolved)))

    written = _Written()
    rewritten = cst.ensure_type(call.visit(written), cst.Call)
    if written.unresolved:
        listed = ", ".join(f"`{text}`" for text in written.unresolved)
        return f"`{function}` is passed {listed}, which the router cannot compute (not from the config)"
    return FunctionRouting(router, function, code(rewritten), top_k)


def _bound(call: cst.Call, definition: cst.FunctionDef) -> dict[str, cst.BaseExpression] | None:
    """The function's parameters bound to the call's arguments, defaults included (None with `*`/`**`)."""
    if any(arg.star for arg in call.args):
        return None
    params = [*definition.params.posonly_params, *definition.params.params, *definition.params.kwonly_params]
    positional = [arg.value for arg in call.args if arg.keyword is None]
    keywords = {arg.keyword.value: arg.value for arg in call.args if arg.keyword is not None}
    bound: dict[str, cst.BaseExpression] = {}
    for position, param in enumerate(params):
        if position < len(positional):
            bound[param.name.value] = positional[position]
        elif param.name.value in keywords:
            bound[param.name.value] = keywords[param.name.value]
        elif param.default is not None:
            bound[param.name.value] = param.default
    return bound


def _on_self_config(node: cst.BaseExpression) -> cst.BaseExpression:
    """`config.x` -> `self.config.x` (the router keeps the config)."""

    class _Self(cst.CSTTransformer):
        def __init__(self) -> None:
            self.attributes: set[int] = set()  # the `x` of `a.x`: a name, not a reference

        def visit_Attribute(self, node: cst.Attribute) -> bool:
            self.attributes.add(id(node.attr))
            return True

        def leave_Name(self, original: cst.Name, updated: cst.Name) -> cst.BaseExpression:
            if updated.value == CONFIG_SCOPE_NAME.value and id(original) not in self.attributes:
                return cst.Attribute(cst.Name("self"), cst.Name("config"))
            return updated

    return cst.ensure_type(node.visit(_Self()), cst.BaseExpression)


def _routers(analysis: ClassAnalysis, count: cst.BaseExpression, scope: Scope) -> list[str]:
    """The linears whose output features are the number of experts (router candidates)."""
    experts = to_expr(count, scope).resolved
    return [
        attribute
        for attribute, construct in analysis.constructs.items()
        if construct.kind is ChildKind.LAYER
        and construct.call is not None
        and len(construct.call.args) >= 2
        and to_expr(construct.call.args[1].value, scope).resolved == experts
    ]


def _routing(
    context: Context, forward: cst.FunctionDef, analysis: ClassAnalysis
) -> tuple[str, cst.BaseExpression, Expr | cst.BaseExpression, cst.BaseExpression | None] | str:
    """(router attribute, top-k expression, renormalisation, jitter) of a softmax -> top-k forward, or why not."""
    index = context.index
    order = {id(node): position for position, node in enumerate(walk(forward))}
    assigned = list(_assignments(forward))
    topk = [
        node
        for node in walk(forward)
        if isinstance(node, cst.Call)
        and (
            (isinstance(node.func, cst.Attribute) and node.func.attr.value == "topk")
            or index.qualified_names(node.func) & TOPK
        )
    ]
    if not topk:
        return "its forward picks the experts without `topk`"
    if len(topk) > 1:
        return f"its forward calls `topk` {len(topk)} times (expected once, on softmax router probabilities)"
    call = topk[0]
    if len(call.args) < 2 or call.args[0].keyword is not None:
        return f"`{code(call)}` does not read as topk(probabilities, k)"
    probabilities = _definition(call.args[0].value, assigned, order)
    softmax = (
        probabilities if isinstance(probabilities, cst.Call) and _is_softmax(index, probabilities) else None
    )
    if softmax is None or not softmax.args:
        return f"`{code(call)}` takes the top-k of something other than a softmax of router logits"
    logits = _definition(softmax.args[0].value, assigned, order)
    router = self_attribute(logits.func) if isinstance(logits, cst.Call) else None
    construct = analysis.constructs.get(router) if router is not None else None
    if construct is None or construct.kind is not ChildKind.LAYER or construct.call is None:
        return f"`{code(softmax)}` is not the softmax of one linear router's logits"
    k = next((arg.value for arg in call.args[1:] if arg.keyword is None or arg.keyword.value == "k"), None)
    assert k is not None
    values = _topk_values(forward, call)
    normalize = _normalisation(forward, values) if values is not None else None
    return router, k, normalize if normalize is not None else FALSE, _jitter(forward)


def _assignments(function: cst.FunctionDef) -> Iterator[tuple[str, cst.Assign]]:
    """`name = value` statements of the function, in source order."""
    for node in walk(function):
        if (
            isinstance(node, cst.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0].target, cst.Name)
        ):
            yield node.targets[0].target.value, node


def _definition(
    node: cst.BaseExpression, assigned: list[tuple[str, cst.Assign]], order: dict[int, int]
) -> cst.BaseExpression:
    """The expression a name stands for where it is read: the last `name = value` before it (followed
    through plain reassignments), else the node itself."""
    seen: set[str] = set()
    while isinstance(node, cst.Name) and node.value not in seen:
        seen.add(node.value)
        before = [
            statement
            for name, statement in assigned
            if name == node.value and order[id(statement)] < order.get(id(node), 0)
        ]
        if not before:
            break
        node = before[-1].value
    return node


def _is_softmax(index, call: cst.Call) -> bool:  # type: ignore[no-untyped-def]
    return bool(index.qualified_names(call.func) & SOFTMAX) or (
        isinstance(call.func, cst.Attribute) and call.func.attr.value == "softmax"
    )


def _topk_values(function: cst.FunctionDef, call: cst.Call) -> str | None:
    """The name `values, indices = topk(...)` binds the top-k probabilities to."""
    for node in walk(function):
        if isinstance(node, cst.Assign) and node.value is call and len(node.targets) == 1:
            target = node.targets[0].target
            if (
                isinstance(target, cst.Tuple)
                and target.elements
                and isinstance(target.elements[0].value, cst.Name)
            ):
                return target.elements[0].value.value
    return None


def _normalisation(function: cst.FunctionDef, values: str) -> Expr | cst.BaseExpression | None:
    """TRUE when `values` is divided by its sum unconditionally, the `if` test when under one, else None."""
    for statement, condition in _statements(function.body, None):
        if not isinstance(statement, cst.SimpleStatementLine):
            continue
        for small in statement.body:
            if _divides_by_own_sum(small, values):
                return TRUE if condition is None else condition
    return None


def _statements(
    suite: cst.BaseSuite, condition: cst.BaseExpression | None
) -> Iterator[tuple[cst.BaseStatement, cst.BaseExpression | None]]:
    """Every statement with the test of the innermost plain `if` around it (None at the top level)."""
    for statement in suite.body if isinstance(suite, cst.IndentedBlock) else []:
        yield statement, condition
        if isinstance(statement, cst.If) and statement.orelse is None:
            yield from _statements(statement.body, statement.test)
        elif isinstance(statement, cst.If | cst.For | cst.While | cst.With):
            yield from _statements(statement.body, condition)


def _divides_by_own_sum(small: cst.BaseSmallStatement, values: str) -> bool:
    def own_sum(node: cst.BaseExpression) -> bool:
        return (
            isinstance(node, cst.Call)
            and isinstance(node.func, cst.Attribute)
            and node.func.attr.value == "sum"
            and isinstance(node.func.value, cst.Name)
            and node.func.value.value == values
        )

    if isinstance(small, cst.AugAssign) and isinstance(small.operator, cst.DivideAssign):
        return isinstance(small.target, cst.Name) and small.target.value == values and own_sum(small.value)
    if isinstance(small, cst.Assign) and isinstance(small.value, cst.BinaryOperation):
        operation = small.value
        return (
            isinstance(operation.operator, cst.Divide)
            and isinstance(operation.left, cst.Name)
            and operation.left.value == values
            and own_sum(operation.right)
        )
    return False


def _jitter(function: cst.FunctionDef) -> cst.BaseExpression | None:
    """`eps` of a `uniform_(1.0 - eps, 1.0 + eps)` noise in the forward (the router jitter), if any."""
    for node in walk(function):
        if (
            isinstance(node, cst.Call)
            and isinstance(node.func, cst.Attribute)
            and node.func.attr.value == "uniform_"
            and len(node.args) == 2
            and isinstance(node.args[0].value, cst.BinaryOperation)
            and isinstance(node.args[0].value.operator, cst.Subtract)
        ):
            return node.args[0].value.right
    return None


def _expert_count(assign) -> cst.BaseExpression | None:  # type: ignore[no-untyped-def]
    """`n` of `nn.ModuleList([Expert(...) for _ in range(n)])`."""
    value = assign.value if assign is not None else None
    if not isinstance(value, cst.Call) or not value.args:
        return None
    comprehension = value.args[0].value
    if not isinstance(comprehension, cst.ListComp | cst.GeneratorExp):
        return None
    iterable = comprehension.for_in.iter
    if (
        isinstance(iterable, cst.Call)
        and isinstance(iterable.func, cst.Name)
        and iterable.func.value == "range"
        and len(iterable.args) == 1
    ):
        return iterable.args[0].value
    return None


def _sigmoid_gate(context: Context, forward: cst.FunctionDef, attribute: str) -> bool:
    """The forward passes `self.<attribute>(...)` through a sigmoid (a shared expert's gate)."""
    for node in walk(forward):
        if isinstance(node, cst.Call) and context.index.qualified_names(node.func) & SIGMOID and node.args:
            inner = node.args[0].value
            if isinstance(inner, cst.Call) and self_attribute(inner.func) == attribute:
                return True
    return False
