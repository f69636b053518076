"""Parse a modeling file once and answer position and qualified-name questions about its nodes.

Qualified names are the names a node refers to through the module's imports, so `nn.Linear`,
`torch.nn.Linear` and `from torch.nn import Linear as L` all resolve to `torch.nn.Linear`; local
definitions and variables have none. They come from the module's import table (`imported_names`), or
from libcst's scope analysis (`QualifiedNameProvider`, its import-sourced names) where that table would
not be exact. Relative imports (`from ...pytorch_utils import Conv1D`) are made absolute against the
file's package, giving `transformers.pytorch_utils.Conv1D`. Lines are libcst's `PositionProvider` start
lines, computed by `positions`.
"""

from __future__ import annotations

import ast
from collections.abc import Callable

import libcst as cst

from ..blueprint import Location
from ..errors import ScaffoldError
from .imported_names import ImportTable
from .positions import start_lines

_EMPTY_MODULE = cst.Module(body=[])


class SourceIndex:
    """A parsed module with node positions and absolute qualified names."""

    def __init__(self, module: cst.Module, display_path: str, package: str) -> None:
        self.module = module
        self.display_path = display_path
        self.package = package
        self._lines: dict[cst.CSTNode, int] | None = None
        self._resolve: Callable[[cst.CSTNode], frozenset[str]] | None = None
        self._cache: dict[cst.CSTNode, frozenset[str]] = {}

    def line(self, node: cst.CSTNode) -> int:
        """1-based line where `node` starts."""
        if self._lines is None:
            self._lines = start_lines(self.module)
        return self._lines[node]

    def location(self, node: cst.CSTNode) -> Location:
        """Location of `node` for messages."""
        return Location(self.display_path, self.line(node))

    def qualified_names(self, node: cst.CSTNode) -> frozenset[str]:
        """Absolute qualified names `node` refers to through imports (empty when none)."""
        found = self._cache.get(node)
        if found is None:
            if self._resolve is None:
                self._resolve = _resolver(self.module)
            found = frozenset(absolute_name(name, self.package) for name in self._resolve(node))
            self._cache[node] = found
        return found

    def refers_to(self, node: cst.CSTNode, *candidates: str) -> bool:
        """Whether `node` resolves to one of the given absolute qualified names."""
        return not self.qualified_names(node).isdisjoint(candidates)

    @staticmethod
    def code(node: cst.CSTNode) -> str:
        """Source text of `node`, whitespace inside it as written."""
        return _EMPTY_MODULE.code_for_node(node)


def _resolver(module: cst.Module) -> Callable[[cst.CSTNode], frozenset[str]]:
    """Imported names of a node of `module`: by the import table, else by libcst's scope analysis."""
    table = ImportTable.of(ast.parse(module.code))
    if table is not None:
        return table.qualified_names
    return libcst_imported_names(module)


def libcst_imported_names(module: cst.Module) -> Callable[[cst.CSTNode], frozenset[str]]:
    """libcst's import-sourced qualified names of the nodes of `module` (a full scope analysis)."""
    from libcst.metadata import MetadataWrapper, QualifiedNameProvider, QualifiedNameSource

    names = MetadataWrapper(module, unsafe_skip_copy=True).resolve(QualifiedNameProvider)

    def resolve(node: cst.CSTNode) -> frozenset[str]:
        found = names.get(node, set())
        if callable(found):  # libcst's lazy values
            found = found()
        return frozenset(name.name for name in found if name.source is QualifiedNameSource.IMPORT)

    return resolve


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
