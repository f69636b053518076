"""NXS030: the imports nothing uses any more go.

Pruning (NXS001), the cache removal (NXS002) and the rewrites after them leave imports of names the
file no longer reads (`GenerationMixin`, `DynamicCache`, transformers' attention-function table, ...).
Every import is offered to libcst's `RemoveImportsVisitor`, which keeps the ones scope analysis finds a
use for, in one pass at the end (the visitor's scope analysis is the costly part of a rule).
"""

from __future__ import annotations

import libcst as cst

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
