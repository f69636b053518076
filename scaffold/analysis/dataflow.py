"""Trace where tensors come from inside one method, to read roles and shapes off the dataflow.

Every value gets a provenance: the set of child modules (and method parameters) whose outputs it was
computed from, each marked whether it has been split into heads and whether an activation has been
applied since. Along the way the tracer records the events the concerns need: calls of child modules
with the provenance of their inputs, reshapes (into heads or back), products of two traced tensors
(the gated MLP), constant factors applied to a traced tensor (embedding / residual / logits scales),
splits of a tensor, and calls of other functions (the attention kernel) with per-argument provenance.

The analysis is flow-insensitive inside branches (both arms of an `if` are taken) and over-approximates
otherwise: a call of an unknown function depends on all its arguments. One precision rule keeps q and k
apart: `a, b = f(x, y, ...)` binds `a` to `x` and `b` to `y` when exactly two arguments carry
provenance (the rotary `apply_rotary_pos_emb(q, k, cos, sin)` pattern).

A call of one of the class's own helper methods (`self._split_heads(q, self.num_heads, self.head_dim)`,
`self._attn(q, k, v, mask)`) is traced inline: the helper's parameters take the arguments' provenance
(and, for untraced arguments, their expressions, so shapes written with the helper's parameter names
read as the caller's), its events are recorded in the caller's flow at the call, and the call's value is
what the helper returns. Helpers calling helpers are inlined too, never recursively.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

import libcst as cst

from ..syntax import self_attribute
from .constructors import ACTIVATION_FUNCTIONS, ACTIVATION_TABLES, ChildKind, Construct
from .expressions import Scope, resolved_text, substitute
from .parsing import SourceIndex

PARAM_PREFIX = "param:"
HEAD_TERMS = re.compile(
    r"\b(head_dim|head_size|num_heads|num_attention_heads|num_key_value_heads|num_kv_heads|n_head|n_heads"
    r"|attention_head_size|n_kv_heads)\b"
)
_RESHAPES = frozenset({"view", "reshape", "unflatten"})
# Tensor metadata carries no data dependence: shapes built from `x.shape` are not traced values.
_METADATA_ATTRIBUTES = frozenset({"shape", "dtype", "device", "ndim", "is_cuda", "requires_grad"})
_METADATA_METHODS = frozenset({"size", "dim", "numel", "get_device", "element_size"})
_SPLITS = frozenset({"split", "chunk", "unbind", "tensor_split"})
_TORCH_SPLITS = frozenset(f"torch.{name}" for name in _SPLITS)
_MAX_INLINE_DEPTH = 3
_BIASED_PRODUCT = "baddbmm"


@dataclass(frozen=True)
class Origin:
    """One source of a value: a child module's output or a method parameter."""

    source: str
    headed: bool = False
    activated: bool = False

    @property
    def is_param(self) -> bool:
        """Whether the origin is a parameter of the traced method."""
        return self.source.startswith(PARAM_PREFIX)


Prov = frozenset[Origin]
_NONE: Prov = frozenset()


@dataclass(frozen=True)
class ModuleCall:
    """`self.<attribute>(...)` (or a loop variable over a module list) with its inputs' provenance."""

    attribute: str
    inputs: Prov
    node: cst.Call


@dataclass(frozen=True)
class Reshape:
    """`x.view(...)` / `x.reshape(...)`; `headed` when the shape names a head count or head size."""

    inputs: Prov
    shape: tuple[cst.BaseExpression, ...]
    headed: bool
    node: cst.Call


@dataclass(frozen=True)
class Combine:
    """A binary operation between two traced tensors (`act(gate(x)) * up(x)`)."""

    op: str
    left: Prov
    right: Prov
    node: cst.CSTNode


@dataclass(frozen=True)
class ScaleStep:
    """A traced tensor multiplied or divided by an untraced value."""

    op: str
    inputs: Prov
    factor: cst.BaseExpression
    node: cst.CSTNode


@dataclass(frozen=True)
class Split:
    """`x.split(...)`, `x.chunk(...)`, `x.unbind(...)` or a slice `x[..., a:b]`."""

    method: str
    inputs: Prov
    node: cst.CSTNode


@dataclass(frozen=True)
class FunctionCall:
    """A call of anything that is not a child module: positional provenance and keyword expressions."""

    func: cst.BaseExpression
    positional: tuple[Prov, ...]
    keywords: tuple[tuple[str, cst.BaseExpression], ...]
    node: cst.Call

    def keyword(self, name: str) -> cst.BaseExpression | None:
        """The expression passed as `name=...`, if any."""
        return dict(self.keywords).get(name)


@dataclass(frozen=True)
class ActivationCall:
    """An activation applied to a traced value; `callable` is the attribute or function as written."""

    callable: str
    inputs: Prov
    node: cst.CSTNode


@dataclass
class Flow:
    """Everything recorded while tracing one method."""

    method: str
    module_calls: list[ModuleCall] = field(default_factory=list)
    reshapes: list[Reshape] = field(default_factory=list)
    combines: list[Combine] = field(default_factory=list)
    scales: list[ScaleStep] = field(default_factory=list)
    splits: list[Split] = field(default_factory=list)
    function_calls: list[FunctionCall] = field(default_factory=list)
    activations: list[ActivationCall] = field(default_factory=list)
    returns: Prov = _NONE
    local_scope: Scope = field(default_factory=Scope)  # the method's non-tensor locals only

    def calls_of(self, attribute: str) -> list[ModuleCall]:
        """Calls of the child `attribute`."""
        return [call for call in self.module_calls if call.attribute == attribute]


def sources(prov: Prov) -> frozenset[str]:
    """Names of the children (not parameters) a value depends on."""
    return frozenset(origin.source for origin in prov if not origin.is_param)


def mentions_heads(text: str) -> bool:
    """Whether an expression's text names a head count or a head size."""
    return HEAD_TERMS.search(text) is not None


def trace(
    function: cst.FunctionDef,
    constructs: dict[str, Construct],
    norm_classes: frozenset[str],
    weightless_classes: frozenset[str],
    class_scope: Scope,
    index: SourceIndex,
    methods: dict[str, cst.FunctionDef] | None = None,
) -> Flow:
    """Trace one method of a class whose children are `constructs` (and whose own helper `methods`
    are inlined where the method calls them).

    Norm children pass provenance through; children of a weightless local class (a wrapped
    activation) pass it through as activated; any other child's output is a new origin.
    """
    tracer = _Tracer(function.name.value, constructs, norm_classes, weightless_classes, class_scope, index)
    tracer.methods = dict(methods or {})
    tracer.inlining = (function.name.value,)
    params = [*function.params.posonly_params, *function.params.params, *function.params.kwonly_params]
    for param in params[1:]:
        tracer.env[param.name.value] = frozenset({Origin(PARAM_PREFIX + param.name.value)})
    for star in (function.params.star_arg, function.params.star_kwarg):
        if isinstance(star, cst.Param):
            tracer.env[star.name.value] = frozenset({Origin(PARAM_PREFIX + star.name.value)})
    tracer.block(function.body)
    return tracer.flow


class _Tracer:
    def __init__(
        self,
        method: str,
        constructs: dict[str, Construct],
        norm_classes: frozenset[str],
        weightless_classes: frozenset[str],
        class_scope: Scope,
        index: SourceIndex,
    ) -> None:
        self.constructs = constructs
        self.norm_classes = norm_classes
        self.weightless_classes = weightless_classes
        self.index = index
        self.env: dict[str, Prov] = {}
        self.handles: dict[str, str] = {}
        self.flow = Flow(method)
        self.positional_of: dict[int, tuple[Prov, ...]] = {}
        self.class_scope = class_scope
        self.flow.local_scope = Scope()
        self.methods: dict[str, cst.FunctionDef] = {}
        self.inlining: tuple[str, ...] = (method,)

    # statements -------------------------------------------------------------------------------------
    def block(self, suite: cst.BaseSuite) -> None:
        statements = suite.body if isinstance(suite, cst.IndentedBlock) else [suite]
        for statement in statements:
            self.statement(statement)

    def statement(self, statement: cst.CSTNode) -> None:
        if isinstance(statement, cst.SimpleStatementLine | cst.SimpleStatementSuite):
            for small in statement.body:
                self.small(small)
        elif isinstance(statement, cst.If):
            self.value(statement.test)
            before = dict(self.env)
            self.block(statement.body)
            taken = self.env
            self.env = dict(before)
            if statement.orelse is not None:
                self.statement(statement.orelse)
            self.env = _merge(taken, self.env)
        elif isinstance(statement, cst.Else):
            self.block(statement.body)
        elif isinstance(statement, cst.For):
            before = dict(self.env)
            self.bind_loop(statement.target, statement.iter)
            self.block(statement.body)
            if statement.orelse is not None:
                self.block(statement.orelse.body)
            self.env = _merge(before, self.env)
        elif isinstance(statement, cst.While):
            self.value(statement.test)
            before = dict(self.env)
            self.block(statement.body)
            self.env = _merge(before, self.env)
        elif isinstance(statement, cst.With):
            for item in statement.items:
                prov = self.value(item.item)
                if item.asname is not None:
                    self.bind(item.asname.name, prov, item.item)
            self.block(statement.body)
        elif isinstance(statement, cst.Try):
            self.block(statement.body)
            for handler in statement.handlers:
                self.block(handler.body)
            if statement.orelse is not None:
                self.block(statement.orelse.body)
            if statement.finalbody is not None:
                self.block(statement.finalbody.body)

    def small(self, small: cst.BaseSmallStatement) -> None:
        if isinstance(small, cst.Assign):
            prov = self.value(small.value)
            for target in small.targets:
                self.bind(target.target, prov, small.value)
        elif isinstance(small, cst.AnnAssign) and small.value is not None:
            self.bind(small.target, self.value(small.value), small.value)
        elif isinstance(small, cst.AugAssign):
            current = self.value(small.target)
            other = self.value(small.value)
            op = _operator(small.operator)
            self.arith(op, current, other, small.value, small)
            self.bind(small.target, current | other, None)
        elif isinstance(small, cst.Expr):
            self.value(small.value)
        elif isinstance(small, cst.Return) and small.value is not None:
            self.flow.returns = self.flow.returns | self.value(small.value)

    def bind(self, target: cst.BaseExpression, prov: Prov, value: cst.BaseExpression | None) -> None:
        if isinstance(target, cst.Name):
            handle = self.handle_of(value) if value is not None else None
            if handle is not None:
                self.handles[target.value] = handle
                return
            self.env[target.value] = prov
            if not prov and value is not None:
                self.flow.local_scope.names[target.value] = (value, self.flow.local_scope)
        elif isinstance(target, cst.Tuple | cst.List):
            names = [element.value for element in target.elements]
            parts = self.unpack(value, len(names))
            if parts is None and _is_helper_call(value) and sources(prov):
                # A helper method spreading one traced value over several names splits it.
                self.flow.splits.append(Split("unpack", prov, value))
            for name, part in zip(names, parts or [prov] * len(names)):
                self.bind(name, part, None)
        elif isinstance(target, cst.Subscript) and isinstance(target.value, cst.Name):
            name = target.value.value
            self.env[name] = self.env.get(name, _NONE) | prov

    def unpack(self, value: cst.BaseExpression | None, count: int) -> list[Prov] | None:
        """Per-target provenance for `a, b = f(x, y, ...)` when exactly `count` arguments come from
        child modules (parameters such as `position_embeddings` do not count)."""
        if not isinstance(value, cst.Call):
            return None
        if isinstance(value.func, cst.Attribute):
            owner = value.func.value
            if not isinstance(owner, cst.Name) or sources(self.env.get(owner.value, _NONE)):
                return None
        traced = [prov for prov in self.positional_of.get(id(value), ()) if sources(prov)]
        return traced if len(traced) == count else None

    def bind_loop(self, target: cst.BaseExpression, iterable: cst.BaseExpression) -> None:
        handle = self.handle_of(iterable)
        if handle is None and _is_enumerate(iterable) and isinstance(target, cst.Tuple):
            assert isinstance(iterable, cst.Call)
            handle = self.handle_of(iterable.args[0].value)
            inner = target.elements[-1].value
            if handle is not None and len(target.elements) == 2 and isinstance(inner, cst.Name):
                self.handles[inner.value] = handle
                return
        if handle is not None and isinstance(target, cst.Name):
            self.handles[target.value] = handle
            return
        self.bind(target, self.value(iterable), None)

    def handle_of(self, value: cst.BaseExpression | None) -> str | None:
        """The child list a value designates (`self.layers`, `self.layers[:n]`, `self.experts[i]`)."""
        node = value
        while isinstance(node, cst.Subscript):
            node = node.value
        if node is not None and self_attribute(node) is not None:
            assert isinstance(node, cst.Attribute)
            construct = self.constructs.get(node.attr.value)
            if construct is not None and construct.kind is ChildKind.LIST:
                return node.attr.value
        return None

    # expressions ------------------------------------------------------------------------------------
    def value(self, node: cst.BaseExpression) -> Prov:
        if isinstance(node, cst.Name):
            return self.env.get(node.value, _NONE)
        if isinstance(node, cst.Attribute):
            if self_attribute(node) is not None or node.attr.value in _METADATA_ATTRIBUTES:
                return _NONE
            return self.value(node.value)
        if isinstance(node, cst.Call):
            return self.call(node)
        if isinstance(node, cst.BinaryOperation):
            left = self.value(node.left)
            right = self.value(node.right)
            self.arith(_operator(node.operator), left, right, None, node)
            return left | right
        if isinstance(node, cst.Subscript):
            base = self.value(node.value)
            for element in node.slice:
                if isinstance(element.slice, cst.Index):
                    self.value(element.slice.value)
            if base and any(isinstance(element.slice, cst.Slice) for element in node.slice):
                self.flow.splits.append(Split("slice", base, node))
            return base
        result: Prov = _NONE
        for child in node.children:
            if isinstance(child, cst.BaseExpression):
                result = result | self.value(child)
            elif isinstance(child, cst.Element | cst.DictElement | cst.StarredElement | cst.Arg):
                for inner in child.children:
                    if isinstance(inner, cst.BaseExpression):
                        result = result | self.value(inner)
        return result

    def arith(
        self, op: str, left: Prov, right: Prov, factor: cst.BaseExpression | None, node: cst.CSTNode
    ) -> None:
        if op not in {"*", "/", "@"}:
            return
        if left and right:
            self.flow.combines.append(Combine(op, left, right, node))
        elif (left or right) and op != "@":
            if factor is None:
                assert isinstance(node, cst.BinaryOperation)
                factor = node.right if left else node.left
            self.flow.scales.append(ScaleStep(op, left or right, factor, node))

    def call(self, node: cst.Call) -> Prov:
        positional = tuple(self.value(arg.value) for arg in node.args if arg.keyword is None and not arg.star)
        self.positional_of[id(node)] = positional
        every = _NONE
        for arg in node.args:
            every = every | (self.value(arg.value) if arg.keyword is not None or arg.star else _NONE)
        for prov in positional:
            every = every | prov
        func = node.func
        if self_attribute(func) is not None:
            assert isinstance(func, cst.Attribute)
            return self.child_call(func.attr.value, every, node)
        handle = self.handle_of(func) if isinstance(func, cst.Subscript) else None
        if isinstance(func, cst.Name) and func.value in self.handles:
            handle = self.handles[func.value]
        if handle is not None:
            self.flow.module_calls.append(ModuleCall(handle, every, node))
            return frozenset({Origin(handle)})
        qualified = self.index.qualified_names(func)
        if qualified & ACTIVATION_FUNCTIONS or (
            isinstance(func, cst.Subscript) and self.index.qualified_names(func.value) & ACTIVATION_TABLES
        ):
            self.flow.activations.append(ActivationCall(SourceIndex.code(func), every, node))
            return _activated(every)
        if qualified & _TORCH_SPLITS and positional:
            self.flow.splits.append(Split(min(qualified & _TORCH_SPLITS), positional[0], node))
        if isinstance(func, cst.Attribute):
            base = self.value(func.value)
            if base:
                return self.method_call(func.attr.value, base, every, node)
        keywords = tuple((arg.keyword.value, arg.value) for arg in node.args if arg.keyword is not None)
        self.flow.function_calls.append(FunctionCall(func, positional, keywords, node))
        return every

    def child_call(self, attribute: str, inputs: Prov, node: cst.Call) -> Prov:
        construct = self.constructs.get(attribute)
        if construct is None:
            helper = self.methods.get(attribute)
            if (
                helper is not None
                and attribute not in self.inlining
                and len(self.inlining) <= _MAX_INLINE_DEPTH
            ):
                return self.inline(helper, node)
            return inputs
        if construct.kind is ChildKind.ACTIVATION:
            self.flow.activations.append(ActivationCall(f"self.{attribute}", inputs, node))
            return _activated(inputs)
        if construct.kind in (ChildKind.STATELESS, ChildKind.VALUE):
            return inputs
        if construct.kind is ChildKind.CLASS and construct.qualified in self.weightless_classes:
            self.flow.activations.append(ActivationCall(f"self.{attribute}", inputs, node))
            return _activated(inputs)
        self.flow.module_calls.append(ModuleCall(attribute, inputs, node))
        is_norm = construct.kind is ChildKind.TORCH_NORM or (
            construct.kind is ChildKind.CLASS and construct.qualified in self.norm_classes
        )
        return inputs if is_norm else frozenset({Origin(attribute)})

    def inline(self, helper: cst.FunctionDef, node: cst.Call) -> Prov:
        """Trace the helper's body where it is called; its events join this flow, its return is the
        call's value."""
        inner = _Tracer(
            self.flow.method,
            self.constructs,
            self.norm_classes,
            self.weightless_classes,
            self.class_scope,
            self.index,
        )
        inner.flow = Flow(self.flow.method)
        inner.methods = self.methods
        inner.inlining = (*self.inlining, helper.name.value)
        inner.handles = dict(self.handles)
        params = [*helper.params.posonly_params, *helper.params.params, *helper.params.kwonly_params][1:]
        positional = [arg for arg in node.args if arg.keyword is None and not arg.star]
        keywords = {arg.keyword.value: arg for arg in node.args if arg.keyword is not None}
        for position, param in enumerate(params):
            name = param.name.value
            arg = positional[position] if position < len(positional) else keywords.get(name)
            value = arg.value if arg is not None else param.default
            prov = self.value(arg.value) if arg is not None else _NONE
            inner.env[name] = prov
            if not prov and value is not None:
                caller_value = substitute(value, self.flow.local_scope)
                inner.flow.local_scope.names[name] = (caller_value, inner.flow.local_scope)
        inner.block(helper.body)
        for events in (
            "module_calls",
            "reshapes",
            "combines",
            "scales",
            "splits",
            "function_calls",
            "activations",
        ):
            getattr(self.flow, events).extend(getattr(inner.flow, events))
        self.positional_of.update(inner.positional_of)
        return inner.flow.returns

    def method_call(self, method: str, base: Prov, every: Prov, node: cst.Call) -> Prov:
        if method in _RESHAPES:
            shape = self.shape_of(node)
            text = " ".join(
                resolved_text(substitute(element, self.flow.local_scope), self.class_scope)
                for element in shape
            )
            headed = mentions_heads(text) or (_keeps_last(node) and any(origin.headed for origin in base))
            self.flow.reshapes.append(Reshape(base, shape, headed, node))
            return frozenset(dataclasses.replace(origin, headed=headed) for origin in base)
        if method in _SPLITS:
            self.flow.splits.append(Split(method, base, node))
            return base
        if method in _METADATA_METHODS:
            return _NONE
        if method == "topk":
            self.flow.function_calls.append(FunctionCall(node.func, (base,), (), node))
        if method == _BIASED_PRODUCT:  # `bias.baddbmm(q, k)`: the batched product of q and k, bias added
            self.flow.function_calls.append(self.biased_product(node))
        return base | every

    def biased_product(self, node: cst.Call) -> FunctionCall:
        """`bias.baddbmm(batch1, batch2, ...)` as a call of its two factors (positional or by keyword)."""
        positional = [arg.value for arg in node.args if arg.keyword is None and not arg.star]
        keywords = {arg.keyword.value: arg.value for arg in node.args if arg.keyword is not None}
        factors = [*positional[:2], *(keywords[name] for name in ("batch1", "batch2") if name in keywords)]
        rest = tuple((name, value) for name, value in keywords.items() if name not in ("batch1", "batch2"))
        return FunctionCall(node.func, tuple(self.value(factor) for factor in factors), rest, node)

    def shape_of(self, node: cst.Call) -> tuple[cst.BaseExpression, ...]:
        """Shape elements of a view/reshape call, expanding a local tuple (`view(hidden_shape)`, or
        unpacked: `view(*hidden_shape)`)."""
        args = [arg for arg in node.args if arg.keyword is None]
        if len(args) == 1 and args[0].star in ("", "*"):
            only = args[0].value
            if isinstance(only, cst.Name) and only.value in self.flow.local_scope.names:
                only = self.flow.local_scope.names[only.value][0]
            if isinstance(only, cst.Tuple | cst.List):
                return self.in_caller_terms(tuple(element.value for element in only.elements))
            if (
                isinstance(only, cst.BinaryOperation)
                and isinstance(only.operator, cst.Add)
                and isinstance(only.right, cst.Tuple)
            ):  # `x.size()[:-1] + (heads, head_dim)`: the leading dims, then the trailing ones
                return self.in_caller_terms((only.left, *(element.value for element in only.right.elements)))
            return self.in_caller_terms((only,))
        return self.in_caller_terms(tuple(arg.value for arg in args))

    def in_caller_terms(self, shape: tuple[cst.BaseExpression, ...]) -> tuple[cst.BaseExpression, ...]:
        """Inside an inlined helper, a shape's parameter names replaced by the caller's arguments."""
        if len(self.inlining) == 1:
            return shape
        return tuple(substitute(element, self.flow.local_scope) for element in shape)


def _keeps_last(node: cst.Call) -> bool:
    """Whether a reshape `x.view(...)` ends its shape with `x`'s own last dimension (`x.shape[-1]`,
    `x.size(-1)`, or `... + x.shape[-1:]`): a tensor split into heads stays split (CodeGen's second view
    folds groups of heads into one head dimension, `x.shape[:-2] + (-1,) + x.shape[-1:]`)."""
    if not isinstance(node.func, cst.Attribute):
        return False
    receiver = SourceIndex.code(node.func.value)
    args = [arg.value for arg in node.args if arg.keyword is None and not arg.star]
    if not args:
        return False
    last = args[-1]
    if isinstance(last, cst.BinaryOperation) and isinstance(last.operator, cst.Add):
        last = last.right
    elif isinstance(last, cst.Tuple) and last.elements:
        last = last.elements[-1].value
    return SourceIndex.code(last) in {
        f"{receiver}.shape[-1:]",
        f"{receiver}.size()[-1:]",
        f"{receiver}.shape[-1]",
        f"{receiver}.size(-1)",
    }


def _is_enumerate(node: cst.BaseExpression) -> bool:
    return (
        isinstance(node, cst.Call)
        and isinstance(node.func, cst.Name)
        and node.func.value == "enumerate"
        and bool(node.args)
    )


def _is_helper_call(value: cst.BaseExpression | None) -> bool:
    """`self.<method>(...)`: a call of the class's own helper (children are classified separately)."""
    return isinstance(value, cst.Call) and self_attribute(value.func) is not None


def _merge(first: dict[str, Prov], second: dict[str, Prov]) -> dict[str, Prov]:
    """Environment after two alternative paths: each name may hold either path's value."""
    merged = dict(first)
    for name, prov in second.items():
        merged[name] = merged.get(name, _NONE) | prov
    return merged


def _activated(prov: Prov) -> Prov:
    return frozenset(dataclasses.replace(origin, activated=True) for origin in prov)


def _operator(operator: cst.CSTNode) -> str:
    names = {
        cst.Multiply: "*",
        cst.Divide: "/",
        cst.MatrixMultiply: "@",
        cst.MultiplyAssign: "*",
        cst.DivideAssign: "/",
        cst.MatrixMultiplyAssign: "@",
    }
    return names.get(type(operator), "other")
