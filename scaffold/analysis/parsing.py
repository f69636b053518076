"""Parse a modeling file once and answer position and qualified-name questions about its nodes.

Both come from libcst's metadata providers over the parsed module: lines from `PositionProvider`,
qualified names from `QualifiedNameProvider` (the names a node refers to through the module's imports,
so `nn.Linear`, `torch.nn.Linear` and `from torch.nn import Linear as L` all resolve to
`torch.nn.Linear`; local definitions and variables have none). Relative imports
(`from ...pytorch_utils import Conv1D`) are made absolute against the file's package, giving
`transformers.pytorch_utils.Conv1D`.
"""

from __future__ import annotations

import ast
from collections.abc import Collection, Mapping

import libcst as cst
from libcst.metadata import (
    CodeRange,
    MetadataWrapper,
    PositionProvider,
    QualifiedName,
    QualifiedNameProvider,
    QualifiedNameSource,
)

from ..blueprint import Location
from ..errors import ScaffoldError
from ..syntax import absolute_name, code, walk


class SourceIndex:
    """A parsed module with node positions and absolute qualified names (computed when first asked)."""

    def __init__(self, module: cst.Module, display_path: str, package: str) -> None:
        self.module = module
        self.display_path = display_path
        self.package = package
        self._wrapper = MetadataWrapper(module, unsafe_skip_copy=True)  # answers about `module`'s own nodes
        self._positions: Mapping[cst.CSTNode, CodeRange] | None = None
        self._names: Mapping[cst.CSTNode, Collection[QualifiedName]] | None = None
        self._nodes: list[cst.CSTNode] | None = None
        self._cache: dict[cst.CSTNode, frozenset[str]] = {}

    def line(self, node: cst.CSTNode) -> int:
        """1-based line where `node` starts."""
        if self._positions is None:
            self._positions = self._wrapper.resolve(PositionProvider)
        return self._positions[node].start.line

    def location(self, node: cst.CSTNode) -> Location:
        """Location of `node` for messages."""
        return Location(self.display_path, self.line(node))

    @property
    def nodes(self) -> list[cst.CSTNode]:
        """Every node of the module in source order (one walk, shared by the questions that scan it all)."""
        if self._nodes is None:
            self._nodes = list(walk(self.module))
        return self._nodes

    def qualified_names(self, node: cst.CSTNode) -> frozenset[str]:
        """Absolute qualified names `node` refers to through imports (empty when none)."""
        found = self._cache.get(node)
        if found is None:
            if self._names is None:
                self._names = self._wrapper.resolve(QualifiedNameProvider)
            names = self._names.get(node, ())
            if callable(names):  # QualifiedNameProvider computes a node's names when first read
                names = names()
            found = frozenset(
                absolute
                for name in names
                if name.source is QualifiedNameSource.IMPORT
                and (absolute := _absolute(name.name, self.package)) is not None
            )
            self._cache[node] = found
        return found

    def refers_to(self, node: cst.CSTNode, *candidates: str) -> bool:
        """Whether `node` resolves to one of the given absolute qualified names."""
        return not self.qualified_names(node).isdisjoint(candidates)

    @staticmethod
    def code(node: cst.CSTNode) -> str:
        """Source text of `node`, whitespace inside it as written."""
        return code(node)


def _absolute(name: str, package: str) -> str | None:
    """`absolute_name`, or None for a relative import that climbs above the package (refused as R016)."""
    try:
        return absolute_name(name, package)
    except ValueError:
        return None


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
