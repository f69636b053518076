"""NXS030: the imports nothing uses any more go.

Pruning (NXS001), the cache removal (NXS002) and the rewrites after them leave imports of names the
file no longer reads (`GenerationMixin`, `DynamicCache`, transformers' attention-function table, ...).
Every import is offered to libcst's `RemoveImportsVisitor`, which keeps the ones scope analysis finds a
use for, in one pass at the end (the visitor's scope analysis is the costly part of a rule). A
module-level guard around optional imports (`if is_flash_attn_available():`) whose names the file reads
nowhere (not even in a string) goes first, so the same pass also drops the guard's predicate import.
The visitor leaves `pass` where it empties a block; a guard it emptied all the same (a name read only in
a scope that shadows it) goes afterwards (`without_emptied_guards`, a second pass run by the pipeline).
"""

from __future__ import annotations

import re

import libcst as cst
from libcst.codemod import CodemodContext
from libcst.codemod.visitors import RemoveImportsVisitor
from libcst.helpers import get_full_name_for_node

from .base import Rule, stored_example


class RemoveUnusedImports(Rule):
    CODE = "NXS030"
    NAME = "remove-unused-imports"
    SUMMARY = "imports the rewritten file no longer uses are removed"
    ADVICE = "Disable it to keep every import of the source (ruff's F401 then lists the unused ones)."
    EXAMPLES = (stored_example(CODE, "llama", "<imports>"),)

    def visit_SimpleStatementLine(self, node: cst.SimpleStatementLine) -> bool:
        # imports are statements of their own: nothing to look at inside other statements' expressions
        return any(isinstance(small, cst.Import | cst.ImportFrom) for small in node.body)

    def visit_Import(self, node: cst.Import) -> bool:
        self.remove_unused_import_by_node(node)
        return False

    def visit_ImportFrom(self, node: cst.ImportFrom) -> bool:
        if not node.relative:  # the relative ones are the host's, added by the rules for what they wrote
            self.remove_unused_import_by_node(node)
        return False

    def leave_Module(self, original_node: cst.Module, updated_node: cst.Module) -> cst.Module:
        guards = [statement for statement in updated_node.body if _import_guard(statement)]
        if not guards:
            return updated_node
        reader = _ReadNames()
        updated_node.visit(reader)
        unread = [guard for guard in guards if not _bound_names(guard) & reader.names]
        return updated_node.with_changes(
            body=[statement for statement in updated_node.body if statement not in unread]
        )


class _ReadNames(cst.CSTVisitor):
    """Every name the module reads outside import statements, and every word of its strings (a name in
    a string annotation or `__all__` counts as read, as `RemoveImportsVisitor` counts it)."""

    def __init__(self) -> None:
        self.names: set[str] = set()

    def visit_Import(self, node: cst.Import) -> bool:
        return False

    def visit_ImportFrom(self, node: cst.ImportFrom) -> bool:
        return False

    def visit_Name(self, node: cst.Name) -> None:
        self.names.add(node.value)

    def visit_SimpleString(self, node: cst.SimpleString) -> None:
        self.names.update(re.findall(r"\w+", node.value))

    def visit_FormattedStringText(self, node: cst.FormattedStringText) -> None:
        self.names.update(re.findall(r"\w+", node.value))


def _import_guard(statement: cst.BaseStatement) -> bool:
    """`if <call>():` at module level, without `else`, holding only import statements (no star import)."""
    return (
        isinstance(statement, cst.If)
        and statement.orelse is None
        and isinstance(statement.test, cst.Call)
        and all(
            isinstance(line, cst.SimpleStatementLine)
            and all(
                isinstance(small, cst.Import | cst.ImportFrom) and not isinstance(small.names, cst.ImportStar)
                for small in line.body
            )
            for line in statement.body.body
        )
    )


def _bound_names(guard: cst.If) -> set[str]:
    """The names the guard's imports bind (`import a.b` binds `a`; a star import binds anything)."""
    names: set[str] = set()
    for line in guard.body.body:
        for small in line.body:
            for alias in small.names:
                bound = alias.asname.name if alias.asname else alias.name
                names.add(str(get_full_name_for_node(bound)).split(".")[0])
    return names


def without_emptied_guards(module: cst.Module, filename: str | None = None) -> cst.Module:
    """`module` without the top-level `if <call>():` statements whose every line is `pass` and that have
    no `else` (what `RemoveImportsVisitor` leaves of a guard around imports it removed), and without the
    imports of the guards' predicates when nothing else reads them."""
    guards = [statement for statement in module.body if _is_emptied_guard(statement)]
    if not guards:
        return module
    module = module.with_changes(body=[statement for statement in module.body if statement not in guards])
    context = CodemodContext(filename=filename)
    for statement in module.body:
        if isinstance(statement, cst.SimpleStatementLine):
            for small in statement.body:
                if isinstance(small, cst.Import | cst.ImportFrom) and not getattr(small, "relative", ()):
                    RemoveImportsVisitor.remove_unused_import_by_node(context, small)
    return RemoveImportsVisitor(context).transform_module(module)


def _is_emptied_guard(statement: cst.BaseStatement) -> bool:
    if (
        not isinstance(statement, cst.If)
        or statement.orelse is not None
        or not isinstance(statement.test, cst.Call)
    ):
        return False
    return all(
        isinstance(line, cst.SimpleStatementLine) and all(isinstance(small, cst.Pass) for small in line.body)
        for line in statement.body.body
    )
