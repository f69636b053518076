"""transformers' head-pruning API, read as absent (what analysis and the rules both work on).

`PreTrainedModel.prune_heads` calls the base model's `_prune_heads`, which calls each attention's
`prune_heads`: they cut heads out of the projections' weights in place. A tensor-parallel training model
shards those projections by head and never prunes them, and the methods read the projections a rewrite
splits or replaces (a fused projection is then read outside its one call). The methods `prune_heads` and
`_prune_heads` of the file's classes go; blank lines take their place, so line numbers stay those of the
file. Calling `model.prune_heads` on the generated model then fails loudly (no `_prune_heads`).
"""

from __future__ import annotations

import libcst as cst

from ..syntax import code

HEAD_PRUNING_METHODS = frozenset({"prune_heads", "_prune_heads"})


def without_head_pruning(module: cst.Module) -> cst.Module:
    """`module` without the head-pruning methods of its classes (`module` itself when it has none)."""
    if not any(_prunes(s) for c in module.body if isinstance(c, cst.ClassDef) for s in c.body.body):
        return module
    return module.visit(_Remove())


def _prunes(statement: cst.BaseStatement) -> bool:
    return isinstance(statement, cst.FunctionDef) and statement.name.value in HEAD_PRUNING_METHODS


class _Remove(cst.CSTTransformer):
    def visit_FunctionDef(self, node: cst.FunctionDef) -> bool:
        return False

    def leave_ClassDef(self, original_node: cst.ClassDef, updated_node: cst.ClassDef) -> cst.ClassDef:
        body: list[cst.BaseStatement] = []
        pending = 0
        for statement in updated_node.body.body:
            if _prunes(statement):
                pending += code(statement).count("\n")
                continue
            if pending:
                blanks = [cst.EmptyLine(indent=False) for _ in range(pending)]
                statement = statement.with_changes(leading_lines=[*blanks, *statement.leading_lines])
                pending = 0
            body.append(statement)
        if not body:
            body = [cst.SimpleStatementLine([cst.Pass()])]
        footer = [*(cst.EmptyLine(indent=False) for _ in range(pending)), *updated_node.body.footer]
        return updated_node.with_changes(body=updated_node.body.with_changes(body=body, footer=footer))
