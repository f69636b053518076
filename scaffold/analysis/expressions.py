"""Rewrite source expressions in terms of the config alone.

`nn.Linear(config.hidden_size, config.num_attention_heads * self.head_dim)` inside an attention class
built as `LlamaAttention(config=config, layer_idx=layer_idx)` has an out-features expression that
mentions `self.head_dim`; substituting the `__init__` assignment of `head_dim` (and, transitively, the
parent's arguments for the class's parameters) gives an expression of `config` only, which a test or a
rule can evaluate on a concrete config. Names that cannot be bound (loop variables, module constants)
are left in place and the expression is reported as not config-only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import libcst as cst

from ..blueprint import SAFE_BUILTINS, Expr
from ..syntax import self_attribute, walk
from .parsing import SourceIndex

_MAX_DEPTH = 24
_ALLOWED_NAMES = frozenset({"config", "True", "False", "None", *SAFE_BUILTINS})
_ATOMIC = (
    cst.Name,
    cst.Attribute,
    cst.Call,
    cst.Subscript,
    cst.Integer,
    cst.Float,
    cst.SimpleString,
    cst.ConcatenatedString,
    cst.Tuple,
    cst.List,
    cst.Dict,
)


@dataclass
class Scope:
    """Bindings visible inside one class instance: bare names and `self.<attr>` values.

    Each binding keeps the scope its expression must itself be resolved in (the parent's scope for an
    argument passed to `__init__`); `None` means the expression is final.
    """

    names: dict[str, tuple[cst.BaseExpression, Scope | None]] = field(default_factory=dict)
    self_attrs: dict[str, tuple[cst.BaseExpression, Scope | None]] = field(default_factory=dict)
    loop_variables: frozenset[str] = frozenset()  # module-list loop targets (e.g. layer_idx) above here


CONFIG_SCOPE_NAME = cst.Name("config")


def root_scope() -> Scope:
    """Scope of the causal-LM class: its `config` parameter is the config."""
    scope = Scope()
    scope.names["config"] = (CONFIG_SCOPE_NAME, None)
    scope.self_attrs["config"] = (CONFIG_SCOPE_NAME, None)
    return scope


def substitute(node: cst.BaseExpression, scope: Scope | None, depth: int = 0) -> cst.BaseExpression:
    """`node` with bound names and `self.<attr>` replaced by their (recursively resolved) values."""
    if scope is None or depth > _MAX_DEPTH:
        return node
    return node.visit(_Substituter(scope, depth))  # type: ignore[return-value]


def to_expr(node: cst.BaseExpression, scope: Scope | None) -> Expr:
    """The source text of `node` and, when it depends on the config (and loop variables) only, the
    resolved text."""
    resolved = substitute(node, scope)
    if resolved.lpar and not node.lpar:  # a whole-expression substitution needs no outer parentheses
        resolved = resolved.with_changes(lpar=[], rpar=[])
    loop_variables = scope.loop_variables if scope is not None else frozenset()
    free = free_names(resolved)
    if free is None or not free <= loop_variables:
        return Expr(SourceIndex.code(node), None)
    return Expr(SourceIndex.code(node), SourceIndex.code(resolved), tuple(sorted(free)))


def resolved_text(node: cst.BaseExpression, scope: Scope | None) -> str:
    """The substituted text, config-only or not (for display and structural comparisons)."""
    return SourceIndex.code(substitute(node, scope))


def free_names(node: cst.BaseExpression) -> frozenset[str] | None:
    """Free names other than `config`, literal constants and allowed builtins; None when the
    expression cannot be evaluated safely (self references, lambdas, comprehensions)."""
    skip: set[int] = set()
    free: set[str] = set()
    for current in walk(node):
        if isinstance(current, cst.Attribute):
            if current.attr.value.startswith("__"):
                return None  # never evaluate dunder access
            skip.add(id(current.attr))
        elif isinstance(current, cst.Arg) and current.keyword is not None:
            skip.add(id(current.keyword))
        elif (
            isinstance(current, cst.Name) and id(current) not in skip and current.value not in _ALLOWED_NAMES
        ):
            if current.value == "self":
                return None
            free.add(current.value)
        elif isinstance(current, cst.Lambda | cst.ListComp | cst.GeneratorExp | cst.Await | cst.Yield):
            return None
    return frozenset(free)


class _Substituter(cst.CSTTransformer):
    def __init__(self, scope: Scope, depth: int) -> None:
        super().__init__()
        self.scope = scope
        self.depth = depth
        self.skip: set[int] = set()

    def visit_Attribute(self, node: cst.Attribute) -> bool:
        self.skip.add(id(node.attr))
        return self_attribute(node) is None

    def visit_Arg(self, node: cst.Arg) -> bool:
        if node.keyword is not None:
            self.skip.add(id(node.keyword))
        return True

    def leave_Attribute(self, original: cst.Attribute, updated: cst.Attribute) -> cst.BaseExpression:
        if self_attribute(original) is not None and original.attr.value in self.scope.self_attrs:
            value, scope = self.scope.self_attrs[original.attr.value]
            return _parenthesize(substitute(value, scope, self.depth + 1))
        return updated

    def leave_Name(self, original: cst.Name, updated: cst.Name) -> cst.BaseExpression:
        if id(original) in self.skip or original.value not in self.scope.names:
            return updated
        value, scope = self.scope.names[original.value]
        if value is CONFIG_SCOPE_NAME or (isinstance(value, cst.Name) and value.value == original.value):
            return updated if scope is None else _parenthesize(substitute(value, scope, self.depth + 1))
        return _parenthesize(substitute(value, scope, self.depth + 1))


def _parenthesize(node: cst.BaseExpression) -> cst.BaseExpression:
    if isinstance(node, _ATOMIC) or node.lpar:
        return node
    return node.with_changes(lpar=[cst.LeftParen()], rpar=[cst.RightParen()])
