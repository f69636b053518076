"""NXS030: the imports nothing uses any more go.

Pruning (NXS001), the cache removal (NXS002) and the rewrites after them leave imports of names the
file no longer reads (`GenerationMixin`, `DynamicCache`, transformers' attention-function table, ...).
Every import is offered to libcst's `RemoveImportsVisitor`, which keeps the ones scope analysis finds a
use for, in one pass at the end (the visitor's scope analysis is the costly part of a rule). The visitor
leaves `pass` where it empties a block; a module-level guard it emptied (`if is_flash_attn_available():`
around optional imports) then goes too (`without_emptied_guards`, run by the pipeline after the visitor).
"""

from __future__ import annotations

import libcst as cst
from libcst.codemod import CodemodContext
from libcst.codemod.visitors import RemoveImportsVisitor

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
