"""Recognise sparse MoE blocks whose experts are packed parameters: what NXS040 needs to rebuild one.

The experts of such a block live in modules that each hold one `[experts, ., .]` parameter (a "packed
expert" module, built as a child of the block), and the block's forward reads the layout from the source:

- the packed module's forward applies expert `i`'s slice as `F.linear(x, self.w[i])` (stored `[E, out,
  in]`, transposed with respect to NxD's `x @ W`) or as `x @ self.w[i]` / `torch.matmul(x, self.w[i])`
  (stored `[E, in, out]`);
- the block's forward runs the first packed module, splits its output in two with `chunk(2, dim=-1)` and
  multiplies the activation of one half by the other: the activated half is the gate (gate | up order when
  it is the first), and the packed module that takes the product is the down projection;
- the router is a child module holding one linear to the number of experts: its forward takes the top k of
  the logits (optionally cast) and a softmax over the k values, which is NxD's `RouterTopK` softmax with the
  top-k affinities renormalised (the softmax is monotone, and renormalising its top k gives the softmax of
  the top-k logits).

Sizes come from the packed parameters' shapes, resolved to the config through the constructors' arguments,
and are checked against each other and the router's. A block that has packed experts but another structure
is refused (R001, narrowed: the message names the parameter or statement and why).
"""

from __future__ import annotations

from dataclasses import dataclass

import libcst as cst

from ..blueprint import Expr, PackedExperts
from ..syntax import code, self_attribute, walk
from .constructors import ChildKind, Construct
from .context import ClassAnalysis, Context
from .expressions import Scope, to_expr
from .tree import bind_arguments, instance_scope

LINEAR = frozenset({"torch.nn.functional.linear"})
MATMUL = frozenset({"torch.matmul", "torch.bmm"})
SOFTMAX = frozenset({"torch.nn.functional.softmax", "torch.softmax"})
TOPK = frozenset({"torch.topk"})
IGNORED = (ChildKind.ACTIVATION, ChildKind.STATELESS, ChildKind.VALUE)


@dataclass(frozen=True)
class PackedSizes:
    """The packed parameter of one packed-expert child: its path relative to the block and its shape."""

    attribute: str  # the child's attribute in the block
    parameter: str  # the parameter's attribute in the child
    transposed: bool  # applied as `F.linear` (stored [E, out, in])
    shape: tuple[Expr, Expr, Expr]  # resolved in the child's instance scope
    location_node: cst.CSTNode

    @property
    def path(self) -> str:
        return f"{self.attribute}.{self.parameter}"

    def sizes(self) -> tuple[str | None, str | None, str | None]:
        """(experts, in features, out features) as resolved text."""
        experts, first, second = (dim.resolved for dim in self.shape)
        return (experts, second, first) if self.transposed else (experts, first, second)


@dataclass(frozen=True)
class PackedRouting:
    """What the router child contributes: its linear's path, top k, renormalisation and hidden size."""

    router: str  # `<child>.<linear>` relative to the block
    router_class: str
    top_k: Expr
    normalize: Expr
    hidden_size: Expr
    num_experts: str | None


@dataclass(frozen=True)
class PackedFindings:
    """A recognised packed block's parts (MoEBlock fields) or why not, with the node to blame."""

    experts: PackedExperts | None
    routing: PackedRouting | None
    num_experts: Expr | None
    intermediate_size: Expr | None
    activation: Expr | None
    why: str | None = None
    node: cst.CSTNode | None = None


@dataclass(frozen=True)
class PackedChild:
    """A child of the block that holds packed `[experts, ., .]` parameters, and what else it holds."""

    attribute: str
    construct: Construct
    parameters: tuple[str, ...]  # its 3-D parameters
    others: tuple[str, ...]  # its other parameters and modules


def packed_children(context: Context, analysis: ClassAnalysis) -> list[PackedChild]:
    """The block's children that hold packed 3-D parameters."""
    found = []
    for attribute, construct in analysis.constructs.items():
        if construct.kind is not ChildKind.CLASS or construct.qualified not in context.classes:
            continue
        child = context.classes[construct.qualified]
        parameters = tuple(
            name
            for name, inner in child.constructs.items()
            if inner.kind is ChildKind.PARAMETER and packed_dimensions(child.facts.last_assign(name)) == 3
        )
        others = tuple(
            name
            for name, inner in child.constructs.items()
            if name not in parameters and inner.kind not in IGNORED
        )
        if parameters:
            found.append(PackedChild(attribute, construct, parameters, others))
    return found


def packed_dimensions(assign) -> int | None:  # type: ignore[no-untyped-def]
    """The dimensions of `nn.Parameter(torch.empty(a, b, c, ...))` (any tensor factory) when three or more."""
    value = assign.value if assign is not None else None
    if not (isinstance(value, cst.Call) and value.args and isinstance(value.args[0].value, cst.Call)):
        return None
    sizes = _sizes(value)
    return len(sizes) if len(sizes) >= 3 else None


def _sizes(value: cst.Call) -> list[cst.BaseExpression]:
    """The positional sizes of `nn.Parameter(torch.empty(a, b, c))` or `...(torch.empty((a, b, c)))`."""
    factory = value.args[0].value
    assert isinstance(factory, cst.Call)
    args = [arg for arg in factory.args if arg.keyword is None and not arg.star]
    if len(args) == 1 and isinstance(args[0].value, cst.Tuple):
        return [element.value for element in args[0].value.elements]
    return [arg.value for arg in args]


def packed_block(
    context: Context, analysis: ClassAnalysis, scope: Scope, children: list[PackedChild]
) -> PackedFindings:
    """The packed block's parts, or why it is not one NXS040 rebuilds."""
    facts = analysis.facts

    def refuse(why: str, node: cst.CSTNode | None = None) -> PackedFindings:
        return PackedFindings(None, None, None, None, None, why, node)

    forward = facts.forward
    if forward is None:
        return refuse("has no forward")
    for child in children:
        holder = context.classes[child.construct.qualified].facts
        statement = holder.last_assign(child.parameters[0])
        node = statement.statement if statement is not None else holder.node
        listed = ", ".join(f"`{name}`" for name in child.parameters)
        reasons = []
        if len(child.parameters) > 1:
            reasons.append(
                f"holds {len(child.parameters)} packed parameters ({listed}), where NXS040 reads packed experts "
                "from one module per packed parameter (gate | up, down), each applying one expert's slice at a time"
            )
        if child.others:
            others = ", ".join(f"`{name}`" for name in child.others)
            reasons.append(
                f"holds {others} besides its packed {listed}, where NxD's ExpertMLPs (as the reference backend "
                "provides it) holds the packed weights only, no expert biases (NXD-23)"
            )
        if reasons:
            return refuse(
                f"`{child.attribute}` ({child.construct.qualified}) " + ", and ".join(reasons), node
            )
    if len(children) != 2:
        names = ", ".join(f"`{child.attribute}.{child.parameters[0]}`" for child in children)
        return refuse(f"packs its experts in {len(children)} parameters ({names}), not gate | up and down")
    packed: dict[str, PackedSizes] = {}
    for child in children:
        attribute, construct, parameter = child.attribute, child.construct, child.parameters[0]
        found = _packed_sizes(context, construct, attribute, parameter, scope)
        if isinstance(found, str):
            return refuse(found, context.classes[construct.qualified].facts.last_assign(parameter).statement)  # type: ignore[union-attr]
        packed[attribute] = found
    glu = _gated_product(context, forward, analysis, set(packed))
    if isinstance(glu, str):
        return refuse(glu, forward)
    first, gate_index, activation_attribute, down = glu
    if gate_index != 0:
        return refuse(
            f"its forward activates the second half of `self.{first}`'s output (up | gate order); NxD's "
            "ExpertMLPs and the expert spec take gate | up",
            forward,
        )
    gate_up, down_sizes = packed[first], packed[down]
    experts, hidden, double = gate_up.sizes()
    down_experts, intermediate, down_hidden = down_sizes.sizes()
    if None in (experts, hidden, double, intermediate, down_hidden) or experts != down_experts:
        return refuse(
            f"the shapes of `{gate_up.path}` and `{down_sizes.path}` do not resolve to the config with the same "
            "number of experts",
            gate_up.location_node,
        )
    if hidden != down_hidden or double not in (f"{intermediate} * 2", f"2 * {intermediate}"):
        return refuse(
            f"`{gate_up.path}` ({', '.join(str(d.resolved) for d in gate_up.shape)}) is not the gate | up of "
            f"`{down_sizes.path}` ({', '.join(str(d.resolved) for d in down_sizes.shape)})",
            gate_up.location_node,
        )
    routing = _router(context, analysis, scope, {first, down, activation_attribute})
    if isinstance(routing, str):
        return refuse(routing, forward)
    if routing.num_experts != experts or routing.hidden_size.resolved != hidden:
        return refuse(
            f"its router `{routing.router}` maps {routing.hidden_size.resolved} features to "
            f"{routing.num_experts} experts, but the packed experts take {hidden} features and count {experts}",
            forward,
        )
    others = [
        attribute
        for attribute, construct in analysis.constructs.items()
        if attribute not in (first, down, routing.router.split(".")[0]) and construct.kind not in IGNORED
    ]
    if others:
        listed = ", ".join(f"`{attribute}`" for attribute in others)
        statement = facts.last_assign(others[0])
        return refuse(
            f"also holds {listed} besides the router and the packed experts; NXS040's MoE holds only those",
            statement.statement if statement is not None else forward,
        )
    assign = facts.last_assign(activation_attribute)
    assert assign is not None
    activation_value = assign.value
    if isinstance(activation_value, cst.Subscript):  # ACT2FN[config.hidden_act]: the table's key
        element = activation_value.slice[0].slice
        assert isinstance(element, cst.Index)
        activation = to_expr(element.value, scope)
    else:
        activation = to_expr(activation_value, scope)
    if activation.resolved is None:
        return refuse(f"its activation `self.{activation_attribute}` is not a name from the config", forward)
    classes = tuple(
        dict.fromkeys(
            [analysis.constructs[first].qualified, routing.router_class, analysis.constructs[down].qualified]
        )
    )
    experts_found = PackedExperts(
        gate_up=gate_up.path, down=down_sizes.path, transposed=gate_up.transposed, classes=classes
    )
    intermediate_expr = down_sizes.shape[2 if down_sizes.transposed else 1]
    return PackedFindings(
        experts_found,
        routing,
        gate_up.shape[0],
        intermediate_expr,
        activation,
    )


def _packed_sizes(
    context: Context, construct: Construct, attribute: str, parameter: str, scope: Scope
) -> PackedSizes | str:
    """The packed parameter of a child, its orientation read from the child's forward."""
    child = context.classes[construct.qualified]
    assert construct.call is not None
    child_scope = instance_scope(child.facts, bind_arguments(construct.call, child.facts, scope))
    assign = child.facts.last_assign(parameter)
    assert assign is not None and isinstance(assign.value, cst.Call)
    shape = tuple(to_expr(size, child_scope) for size in _sizes(assign.value))
    forward = child.facts.forward
    if forward is None:
        return f"`{construct.qualified}` has no forward"
    transposed: set[bool] = set()
    slices = _expert_slices(parameter)
    for node in walk(forward):
        if isinstance(node, cst.Call) and len(node.args) >= 2 and slices(node.args[1].value):
            names = context.index.qualified_names(node.func)
            if names & LINEAR:
                transposed.add(True)
            elif names & MATMUL:
                transposed.add(False)
        elif (
            isinstance(node, cst.BinaryOperation)
            and isinstance(node.operator, cst.MatrixMultiply)
            and slices(node.right)
        ):
            transposed.add(False)
    if len(transposed) != 1:
        return (
            f"`{construct.qualified}.forward` does not apply one expert's slice of `self.{parameter}` as "
            "`F.linear(x, self.w[i])` or `x @ self.w[i]`"
        )
    (orientation,) = transposed
    return PackedSizes(attribute, parameter, orientation, shape, assign.statement)  # type: ignore[arg-type]


def _expert_slices(parameter: str):  # type: ignore[no-untyped-def]
    """A predicate: the expression is `self.<parameter>[i]`."""

    def slices(expression: cst.BaseExpression) -> bool:
        return (
            isinstance(expression, cst.Subscript)
            and self_attribute(expression.value) == parameter
            and len(expression.slice) == 1
        )

    return slices


def _gated_product(
    context: Context, forward: cst.FunctionDef, analysis: ClassAnalysis, packed: set[str]
) -> tuple[str, int, str, str] | str:
    """(first packed child, index of the activated half, activation attribute, down child) of
    `h = self.a(...); c = h.chunk(2, dim=-1); h = self.act(c[g]) * c[1 - g]; self.b(h, ...)`."""
    assigned = {
        node.targets[0].target.value: node.value
        for node in walk(forward)
        if isinstance(node, cst.Assign)
        and len(node.targets) == 1
        and isinstance(node.targets[0].target, cst.Name)
    }  # the chunk names: each is assigned once
    chunks = {
        name: value
        for name, value in assigned.items()
        if isinstance(value, cst.Call)
        and isinstance(value.func, cst.Attribute)
        and value.func.attr.value == "chunk"
        and value.args
        and code(value.args[0].value) == "2"
    }
    for name, value in chunks.items():
        assert isinstance(value, cst.Call) and isinstance(value.func, cst.Attribute)
        source = _before(forward, value.func.value)
        first = self_attribute(source.func) if isinstance(source, cst.Call) else None
        if first not in packed:
            continue
        if not all(code(arg.value) == "-1" for arg in value.args[1:]):
            return f"`{code(value)}` splits the packed gate | up along another dimension than the last"
        for node in walk(forward):
            if not (isinstance(node, cst.BinaryOperation) and isinstance(node.operator, cst.Multiply)):
                continue
            for activated, other in ((node.left, node.right), (node.right, node.left)):
                half = _half(activated, name, wrapped=True)
                if half is None or _half(other, name, wrapped=False) != 1 - half[0]:
                    continue
                down = next(
                    (
                        attribute
                        for call in walk(forward)
                        if isinstance(call, cst.Call)
                        and (attribute := self_attribute(call.func)) in packed - {first}
                        and call.args
                        and _before(forward, call.args[0].value) is node
                    ),
                    None,
                )
                if down is None:
                    return f"no packed expert module takes the gated product `{code(node)}`"
                return first, half[0], half[1], down
        return f"`{code(value)}` is not multiplied as activation(one half) * the other"
    return "its forward does not split a packed module's output in two halves (gate and up)"


def _before(function: cst.FunctionDef, node: cst.BaseExpression) -> cst.BaseExpression:
    """What a name stands for where it is read: the value of the last `name = value` before it."""
    if not isinstance(node, cst.Name):
        return node
    value: cst.BaseExpression = node
    for item in walk(function):
        if item is node:
            break
        if (
            isinstance(item, cst.Assign)
            and len(item.targets) == 1
            and isinstance(item.targets[0].target, cst.Name)
            and item.targets[0].target.value == node.value
            and not any(inner is node for inner in walk(item.value))
        ):
            value = item.value
    return value


def _half(node: cst.BaseExpression, chunks: str, *, wrapped: bool) -> tuple[int, str] | int | None:
    """`self.act(c[i])` -> (i, "act") when `wrapped`, `c[i]` -> i otherwise."""
    if wrapped:
        if not (isinstance(node, cst.Call) and len(node.args) == 1):
            return None
        attribute = self_attribute(node.func)
        inner = _half(node.args[0].value, chunks, wrapped=False)
        return (inner, attribute) if attribute is not None and isinstance(inner, int) else None
    if (
        isinstance(node, cst.Subscript)
        and isinstance(node.value, cst.Name)
        and node.value.value == chunks
        and len(node.slice) == 1
        and isinstance(node.slice[0].slice, cst.Index)
        and isinstance(node.slice[0].slice.value, cst.Integer)
    ):
        return int(node.slice[0].slice.value.value)
    return None


def _router(context: Context, analysis: ClassAnalysis, scope: Scope, taken: set[str]) -> PackedRouting | str:
    """The router child: one linear to the experts, top-k and softmax in its forward."""
    candidates = [
        (attribute, construct)
        for attribute, construct in analysis.constructs.items()
        if attribute not in taken
        and construct.kind is ChildKind.CLASS
        and construct.qualified in context.classes
    ]
    routers = []
    for attribute, construct in candidates:
        child = context.classes[construct.qualified]
        linears = [(name, inner) for name, inner in child.constructs.items() if inner.kind is ChildKind.LAYER]
        others = [
            name for name, inner in child.constructs.items() if inner.kind not in (ChildKind.LAYER, *IGNORED)
        ]
        if len(linears) == 1 and not others and child.facts.forward is not None:
            routers.append((attribute, construct, child, linears[0]))
    if len(routers) != 1:
        return f"holds {len(routers)} router modules (one linear each), not one"
    attribute, construct, child, (linear, linear_construct) = routers[0]
    assert construct.call is not None and linear_construct.call is not None
    child_scope = instance_scope(child.facts, bind_arguments(construct.call, child.facts, scope))
    forward = child.facts.forward
    assert forward is not None
    found = _top_k(context, forward, linear)
    if isinstance(found, str):
        return f"its router `{construct.qualified}`: {found}"
    k, normalize = found
    top_k = to_expr(k, child_scope)
    if top_k.resolved is None:
        return f"its router's top k `{code(k)}` does not resolve to the config"
    args = linear_construct.call.args
    if len(args) < 2:
        return f"its router's linear `{code(linear_construct.call)}` does not name its sizes"
    return PackedRouting(
        router=f"{attribute}.{linear}",
        router_class=construct.qualified,
        top_k=top_k,
        normalize=normalize,
        hidden_size=to_expr(args[0].value, child_scope),
        num_experts=to_expr(args[1].value, child_scope).resolved,
    )


def _top_k(context: Context, forward: cst.FunctionDef, linear: str) -> tuple[cst.BaseExpression, Expr] | str:
    """(k, renormalisation) of `v, i = logits.topk(k); w = softmax(v)` (renormalised: True) on the
    logits of `self.<linear>`."""
    index = context.index
    topk = [
        node
        for node in walk(forward)
        if isinstance(node, cst.Call)
        and (
            (isinstance(node.func, cst.Attribute) and node.func.attr.value == "topk")
            or index.qualified_names(node.func) & TOPK
        )
    ]
    if len(topk) != 1:
        return f"its forward calls `topk` {len(topk)} times (expected once)"
    call = topk[0]
    method = isinstance(call.func, cst.Attribute) and not index.qualified_names(call.func) & TOPK
    operands = [arg.value for arg in call.args if arg.keyword is None]
    if method:
        assert isinstance(call.func, cst.Attribute)
        operands.insert(0, call.func.value)
    k = next((arg.value for arg in call.args if arg.keyword is not None and arg.keyword.value == "k"), None)
    if k is None and len(operands) >= 2:
        k = operands[1]
    if k is None or not operands:
        return f"`{code(call)}` does not read as topk(logits, k)"
    logits = _before(forward, operands[0])
    while (
        isinstance(logits, cst.Call)
        and isinstance(logits.func, cst.Attribute)
        and logits.func.attr.value in ("float", "to", "type_as")
    ):
        logits = logits.func.value  # a dtype cast of the logits
    if not (isinstance(logits, cst.Call) and self_attribute(logits.func) == linear):
        return f"`{code(call)}` does not take the top k of `self.{linear}`'s logits"
    values = None
    for node in walk(forward):
        if (
            isinstance(node, cst.Assign)
            and node.value is call
            and isinstance(node.targets[0].target, cst.Tuple)
        ):
            first = node.targets[0].target.elements[0].value
            values = first.value if isinstance(first, cst.Name) else None
    softmaxes = [
        node
        for node in walk(forward)
        if isinstance(node, cst.Call)
        and index.qualified_names(node.func) & SOFTMAX
        and node.args
        and isinstance(node.args[0].value, cst.Name)
        and node.args[0].value.value == values
    ]
    if values is None or len(softmaxes) != 1:
        return "its top-k logits do not go through one softmax (the weights of the chosen experts)"
    return k, Expr("True", "True")
