"""Parameter lists in one comparable form: a released function read with `ast`, ours read with `inspect`.

A parameter is `(name, kind, default)`. Kinds: `posonly`, `pos` (positional or keyword), `*args`,
`kwonly`, `**kwargs`. A default is `REQUIRED`, a Python literal, or `Source("text")` for an expression
that is not a literal (`torch.float32`, `os.environ.get(...)`): those compare by source text, ours taken
from our own function's source with `ast` as well.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_KINDS = {
    inspect.Parameter.POSITIONAL_ONLY: "posonly",
    inspect.Parameter.POSITIONAL_OR_KEYWORD: "pos",
    inspect.Parameter.VAR_POSITIONAL: "*args",
    inspect.Parameter.KEYWORD_ONLY: "kwonly",
    inspect.Parameter.VAR_KEYWORD: "**kwargs",
}


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()


@dataclass(frozen=True)
class Source:
    """A default that is not a literal, kept as its normalised source text."""

    text: str

    def __repr__(self) -> str:
        return f"<{self.text}>"


Param = tuple[str, str, Any]


def default_from_node(node: ast.expr) -> Any:
    """A literal default's value, otherwise its source text (normalised by `ast.unparse`)."""
    try:
        return ast.literal_eval(node)
    except ValueError:
        return Source(ast.unparse(node))


def params_from_node(
    function: ast.FunctionDef | ast.AsyncFunctionDef, drop_first: bool = False
) -> list[Param]:
    """The parameters of a parsed `def`, in order; `drop_first` removes `self` / `cls`."""
    arguments = function.args
    positional = arguments.posonlyargs + arguments.args
    defaults: list[ast.expr | None] = [None] * (len(positional) - len(arguments.defaults))
    defaults += arguments.defaults
    params: list[Param] = []
    for index, (arg, default) in enumerate(zip(positional, defaults, strict=True)):
        kind = "posonly" if index < len(arguments.posonlyargs) else "pos"
        params.append((arg.arg, kind, REQUIRED if default is None else default_from_node(default)))
    if arguments.vararg is not None:
        params.append((arguments.vararg.arg, "*args", REQUIRED))
    for arg, default in zip(arguments.kwonlyargs, arguments.kw_defaults, strict=True):
        params.append((arg.arg, "kwonly", REQUIRED if default is None else default_from_node(default)))
    if arguments.kwarg is not None:
        params.append((arguments.kwarg.arg, "**kwargs", REQUIRED))
    return params[1:] if drop_first else params


def _own_def(function: Callable[..., Any]) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
    try:
        source = textwrap.dedent(inspect.getsource(function))
    except (OSError, TypeError):
        return None
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == function.__name__:
            return node
    return None


def params_of(function: Callable[..., Any], drop_first: bool = False) -> list[Param]:
    """Our function's parameters by `inspect.signature`; a non-literal default is an `Ours` value."""
    unwrapped = inspect.unwrap(function)
    signature = inspect.signature(unwrapped)
    node = _own_def(unwrapped)
    texts = {name: default for name, _, default in params_from_node(node)} if node is not None else {}
    namespace = getattr(unwrapped, "__globals__", {})
    params: list[Param] = []
    for parameter in signature.parameters.values():
        if parameter.default is inspect.Parameter.empty:
            default = REQUIRED
        elif _is_literal(parameter.default):
            default = parameter.default
        else:
            text = texts.get(parameter.name)
            default = Ours(parameter.default, text.text if isinstance(text, Source) else None, namespace)
        params.append((parameter.name, _KINDS[parameter.kind], default))
    return params[1:] if drop_first else params


@dataclass(frozen=True, eq=False)
class Ours:
    """A non-literal default of ours: its value, its source text, and the namespace its module sees."""

    value: Any
    text: str | None
    namespace: dict[str, Any]

    def __repr__(self) -> str:
        return f"<{self.text}>" if self.text else f"<{self.value!r}>"


def _is_literal(value: Any) -> bool:
    try:
        return ast.literal_eval(repr(value)) == value
    except (ValueError, SyntaxError):
        return False


def _resolve(dotted: str, namespace: dict[str, Any]) -> Any:
    """The object a dotted name (`torch.float32`) names in `namespace`; `_Required` when it names none."""
    head, *rest = dotted.split(".")
    if head not in namespace:
        return REQUIRED
    value = namespace[head]
    for attribute in rest:
        if not hasattr(value, attribute):
            return REQUIRED
        value = getattr(value, attribute)
    return value


def _same_default(expected: Any, actual: Any) -> bool:
    """Literals compare by type and value; a `Source` default matches ours by text or by the object it names."""
    if isinstance(actual, Ours):
        if isinstance(expected, Source):
            if expected.text == actual.text:
                return True
            named = _resolve(expected.text, actual.namespace)
            return named is not REQUIRED and (named is actual.value or named == actual.value)
        return expected is actual.value or bool(expected == actual.value)
    if isinstance(expected, Source) or expected is REQUIRED or actual is REQUIRED:
        return expected is actual
    return type(expected) is type(actual) and expected == actual


def differences(expected: list[Param], actual: list[Param]) -> list[str]:
    """Readable differences between two parameter lists (empty when they agree), in a stable order."""
    found: list[str] = []
    expected_names = [name for name, _, _ in expected]
    actual_names = [name for name, _, _ in actual]
    for name in expected_names:
        if name not in actual_names:
            found.append(f"missing parameter {name}")
    for name in actual_names:
        if name not in expected_names:
            found.append(f"extra parameter {name}")
    common_expected = [name for name in expected_names if name in actual_names]
    common_actual = [name for name in actual_names if name in expected_names]
    if common_expected != common_actual:
        found.append(f"order {common_actual} instead of {common_expected}")
    actual_by_name = {name: (kind, default) for name, kind, default in actual}
    for name, kind, default in expected:
        if name not in actual_by_name:
            continue
        actual_kind, actual_default = actual_by_name[name]
        if kind != actual_kind:
            found.append(f"{name}: kind {actual_kind} instead of {kind}")
        if not _same_default(default, actual_default):
            found.append(f"{name}: default {actual_default!r} instead of {default!r}")
    return found
