"""Apply the imports rules schedule (`AddImportsVisitor` / `RemoveImportsVisitor`), cheaply.

Rules schedule imports through libcst's context API; libcst's visitors then apply them with full scope
analysis and a full traversal each. Here the same edits run on a pruned traversal:

- `TopImportAdder` is libcst's adder, reading the existing imports only where libcst looks for them
  (the imports leading the module) and walking only top-level statements (the only imports it edits);
- `UnusedImportRemover` is libcst's remover with its own answer to "is this import used": a bound name
  is used when the module reads it (as a name or the head of a dotted name), lists it in `__all__`, or
  names it in a string annotation. Names read by Python's own parser of the module text, not by scope
  analysis, so a local that shadows an import counts as a use (the import is kept).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator

import libcst as cst
from libcst.codemod import CodemodContext, ContextAwareVisitor
from libcst.codemod.visitors import AddImportsVisitor, RemoveImportsVisitor
from libcst.codemod.visitors._add_imports import _GatherTopImportsBeforeStatements

from ..errors import ScaffoldError
from ._descent import STATEMENT_CONTAINERS, StatementDescent

_IGNORED_MODULES = frozenset({"__future__"})  # as libcst: never reported unused
_STRING_ANNOTATION_CALLS = frozenset({"TypeVar"})  # as libcst: string arguments are annotations


class _PlainInit(ContextAwareVisitor):
    """`ContextAwareVisitor` construction without the scan for matcher-decorated methods."""

    def __init__(self, context: CodemodContext) -> None:
        self.context = context
        self.metadata = {}
        cst.CSTVisitor.__init__(self)


class _LeadingImportsGatherer(_GatherTopImportsBeforeStatements, _PlainInit):
    """libcst's gatherer of the imports leading a module, without the matcher scan at construction."""


class TopImportAdder(AddImportsVisitor, StatementDescent):
    """libcst's `AddImportsVisitor`, visiting only the module's top-level statements."""

    DESCENT = (cst.Module, cst.SimpleStatementLine)

    def visit_Module(self, node: cst.Module) -> None:
        """Drop the scheduled imports the module already has (among its leading imports, as libcst)."""
        present = _LeadingImportsGatherer(self.context)
        present.leave_Module(node)  # its whole job: it reads the module's leading statements
        self.all_imports = present.all_imports
        self.module_imports = self.module_imports - present.module_imports
        for module, alias in present.module_aliases.items():
            if self.module_aliases.get(module) == alias:
                del self.module_aliases[module]
        for module, pairs in present.alias_mapping.items():
            if module in self.alias_mapping:
                remaining = [pair for pair in self.alias_mapping[module] if pair not in pairs]
                if remaining:
                    self.alias_mapping[module] = remaining
                else:
                    del self.alias_mapping[module]
        for module, objects in present.object_mapping.items():
            if module in self.module_mapping:
                remaining = set() if "*" in objects else self.module_mapping[module] - objects
                if remaining:
                    self.module_mapping[module] = remaining
                else:
                    del self.module_mapping[module]


class UnusedImportRemover(RemoveImportsVisitor, StatementDescent):
    """libcst's `RemoveImportsVisitor` without scope analysis (see the module docstring)."""

    DESCENT = (*STATEMENT_CONTAINERS, cst.SimpleStatementLine)

    @classmethod
    def get_inherited_dependencies(cls) -> frozenset[object]:
        return frozenset()  # the parent's scope analysis is what this class replaces

    def visit_Module(self, node: cst.Module) -> None:
        used = referenced_names(node)
        self._unused_imports = {
            alias: statement
            for statement in _imports(node)
            for alias in statement.names  # type: ignore[union-attr]
            if not any(name in used for name in _bound_names(alias))
        }


def _imports(module: cst.Module) -> Iterator[cst.Import | cst.ImportFrom]:
    """Every import statement whose names may be reported unused, at any depth."""
    for statement in _simple_statements(module.body):
        if isinstance(statement, cst.Import) or (
            isinstance(statement, cst.ImportFrom)
            and not isinstance(statement.names, cst.ImportStar)
            and statement.module is not None
            and not (isinstance(statement.module, cst.Name) and statement.module.value in _IGNORED_MODULES)
        ):
            yield statement


def _simple_statements(body: object) -> Iterator[cst.BaseSmallStatement]:
    for statement in body:  # type: ignore[attr-defined]
        if isinstance(statement, cst.SimpleStatementLine):
            yield from statement.body
        elif isinstance(statement, cst.BaseCompoundStatement):
            yield from _compound_statements(statement)


def _compound_statements(node: cst.CSTNode) -> Iterator[cst.BaseSmallStatement]:
    """Small statements inside a compound statement: its suites and its else/except/finally parts."""
    for field in ("body", "orelse", "handlers", "finalbody", "cases"):
        part = getattr(node, field, None)
        if part is None:
            continue
        for item in part if isinstance(part, list | tuple) else [part]:
            if isinstance(item, cst.SimpleStatementSuite):
                yield from item.body
            elif isinstance(item, cst.IndentedBlock):
                yield from _simple_statements(item.body)
            elif isinstance(item, STATEMENT_CONTAINERS):  # `elif` branches, except/else/finally parts
                yield from _compound_statements(item)


def _bound_names(alias: cst.ImportAlias) -> list[str]:
    """Names an import alias binds: the alias, else the dotted name and each of its prefixes."""
    if alias.asname is not None:
        return [cst.ensure_type(alias.asname.name, cst.Name).value]
    parts = alias.evaluated_name.split(".")
    return [".".join(parts[:count]) for count in range(len(parts), 0, -1)]


def referenced_names(module: cst.Module) -> set[str]:
    """Names the module reads (with every dotted prefix of `a.b.c`), exports or names in string annotations."""
    try:
        tree = ast.parse(module.code)
    except SyntaxError as error:
        raise ScaffoldError(f"a rule produced invalid Python (line {error.lineno}): {error.msg}") from error
    used: set[str] = set()
    _read_names(tree, used)
    for node in ast.walk(tree):
        for annotation in _annotations(node):
            for inner in ast.walk(annotation):
                if isinstance(inner, ast.Constant) and isinstance(inner.value, str):
                    _read_string_annotation(inner.value, used)
    used |= _exported(tree)
    return used


def _read_names(tree: ast.AST, used: set[str]) -> None:
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Store):
            used.add(node.id)
        elif isinstance(node, ast.Attribute):
            dotted = _dotted(node)
            if dotted is not None:
                used.add(dotted)


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return None if base is None else f"{base}.{node.attr}"
    return None


def _annotations(node: ast.AST) -> Iterator[ast.AST]:
    """Annotation expressions attached to `node`, and the string arguments of `TypeVar(...)`."""
    if isinstance(node, ast.arg | ast.AnnAssign) and node.annotation is not None:
        yield node.annotation
    elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.returns is not None:
        yield node.returns
    elif (
        isinstance(node, ast.Call)
        and (_dotted(node.func) or "").rsplit(".", 1)[-1] in _STRING_ANNOTATION_CALLS
    ):
        yield from node.args


def _read_string_annotation(text: str, used: set[str]) -> None:
    try:
        expression = ast.parse(text.strip(), mode="eval")
    except SyntaxError:
        return
    _read_names(expression, used)


def _exported(tree: ast.Module) -> set[str]:
    """Strings listed in module-level `__all__` assignments."""
    found: set[str] = set()
    for statement in tree.body:
        if isinstance(statement, ast.Assign):
            targets = statement.targets
        elif isinstance(statement, ast.AugAssign | ast.AnnAssign):
            targets = [statement.target]
        else:
            continue
        if any(isinstance(target, ast.Name) and target.id == "__all__" for target in targets):
            value = statement.value
            if isinstance(value, ast.List | ast.Tuple | ast.Set):
                found |= {
                    element.value
                    for element in value.elts
                    if isinstance(element, ast.Constant) and isinstance(element.value, str)
                }
    return found
