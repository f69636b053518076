"""Parse a modeling file once and answer position and qualified-name questions about its nodes.

Qualified names come from libcst's `QualifiedNameProvider`, so `nn.Linear`, `torch.nn.Linear` and
`from torch.nn import Linear as L` all resolve to `torch.nn.Linear`. Relative imports
(`from ...pytorch_utils import Conv1D`) are made absolute against the file's package, giving
`transformers.pytorch_utils.Conv1D`.
"""

from __future__ import annotations

import ast

import libcst as cst
from libcst._metadata_dependent import LazyValue
from libcst.metadata import MetadataWrapper, PositionProvider, QualifiedNameProvider

from ..blueprint import Location
from ..errors import ScaffoldError

_EMPTY_MODULE = cst.Module(body=[])


class SourceIndex:
    """A parsed module with node positions and absolute qualified names."""

    def __init__(self, module: cst.Module, display_path: str, package: str) -> None:
        wrapper = MetadataWrapper(module, unsafe_skip_copy=True)
        self.module = wrapper.module
        self.display_path = display_path
        self.package = package
        self._positions = wrapper.resolve(PositionProvider)
        self._qualified = wrapper.resolve(QualifiedNameProvider)

    def line(self, node: cst.CSTNode) -> int:
        """1-based line where `node` starts."""
        return self._positions[node].start.line

    def location(self, node: cst.CSTNode) -> Location:
        """Location of `node` for messages."""
        return Location(self.display_path, self.line(node))

    def qualified_names(self, node: cst.CSTNode) -> frozenset[str]:
        """Absolute qualified names `node` may refer to (empty when unknown)."""
        names = self._qualified.get(node, set())
        if isinstance(names, LazyValue):
            names = names()
        return frozenset(absolute_name(name.name, self.package) for name in names)

    def refers_to(self, node: cst.CSTNode, *candidates: str) -> bool:
        """Whether `node` resolves to one of the given absolute qualified names."""
        return not self.qualified_names(node).isdisjoint(candidates)

    @staticmethod
    def code(node: cst.CSTNode) -> str:
        """Source text of `node`, whitespace inside it as written."""
        return _EMPTY_MODULE.code_for_node(node)


def parse_module(text: str, display_path: str) -> cst.Module:
    """Parse with libcst; a syntax error becomes a ScaffoldError naming file:line."""
    try:
        return cst.parse_module(text)
    except cst.ParserSyntaxError as error:
        line, detail = _syntax_error_position(text, error)
        raise ScaffoldError(
            f"{display_path}:{line}: cannot parse the modeling file: {detail}",
            hint="pass a valid Python file with --source, or check the installed transformers",
        ) from error


def _syntax_error_position(text: str, error: cst.ParserSyntaxError) -> tuple[int, str]:
    """Prefer CPython's own location for the error (libcst reports where it gave up)."""
    try:
        ast.parse(text)
    except SyntaxError as python_error:
        return python_error.lineno or error.raw_line, python_error.msg
    return error.raw_line, error.message


def prune(module: cst.Module, keep: set[str]) -> cst.Module:
    """`module` without the top-level classes and functions not in `keep`, line numbers unchanged.

    Each dropped definition becomes as many empty lines, so positions in the pruned module are the
    positions in the file. Scope analysis (the cost of qualified names) then only sees what is kept.
    """
    body: list[cst.BaseStatement] = []
    pending = 0
    for statement in module.body:
        if isinstance(statement, cst.ClassDef | cst.FunctionDef) and statement.name.value not in keep:
            pending += module.code_for_node(statement).count("\n")
            continue
        if pending:
            blanks = [cst.EmptyLine() for _ in range(pending)]
            statement = statement.with_changes(leading_lines=[*blanks, *statement.leading_lines])
            pending = 0
        body.append(statement)
    footer = [*(cst.EmptyLine() for _ in range(pending)), *module.footer]
    return module.with_changes(body=body, footer=footer)


def absolute_name(name: str, package: str) -> str:
    """Make a libcst qualified name absolute: `...pytorch_utils.X` in `a.b.c` -> `a.pytorch_utils.X`."""
    dots = len(name) - len(name.lstrip("."))
    if dots == 0:
        return name
    parts = package.split(".")
    base = parts[: len(parts) - (dots - 1)] if dots > 1 else parts
    return ".".join([*base, name[dots:]])
