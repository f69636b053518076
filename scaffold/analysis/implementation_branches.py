"""Branches a forward takes for one attention implementation only, read as the eager path.

Some pre-refactor attentions pick their kernel inline (Falcon): `if self.config._attn_implementation ==
"sdpa" and not output_attentions: <SDPA> else: <eager>`, or make tensors contiguous for SDPA on CUDA under
such a test without an `else`. Training runs the eager path, and once the attention dispatches through
transformers' `ALL_ATTENTION_FUNCTIONS` (current_forms), SDPA and the Neuron flash path come back through
that table. So a branch whose test holds only for a named implementation other than eager (a conjunct
`self.config._attn_implementation == "<name>"`) is dropped, and its `else` (when there is one) takes its
place. Line numbers stay those of the file: blank lines take the place of what goes.

Nothing here names a model: only transformers' `_attn_implementation` convention.
"""

from __future__ import annotations

import libcst as cst
import libcst.matchers as m

from ..syntax import code

IMPLEMENTATION = "_attn_implementation"
EAGER = "eager"


def eager_branches(module: cst.Module) -> cst.Module:
    """`module` with every branch taken for a named non-eager implementation only replaced by its else."""
    result = module.visit(_EagerBranches())
    assert isinstance(result, cst.Module)
    return result


def other_implementation_only(test: cst.BaseExpression) -> bool:
    """The test holds only where `self.config._attn_implementation` is a named implementation other than
    eager: it is, or is an `and` of, such a comparison."""
    if isinstance(test, cst.BooleanOperation):
        return isinstance(test.operator, cst.And) and (
            other_implementation_only(test.left) or other_implementation_only(test.right)
        )
    if not (isinstance(test, cst.Comparison) and len(test.comparisons) == 1):
        return False
    (comparison,) = test.comparisons
    sides = (test.left, comparison.comparator)
    reads = [s for s in sides if m.matches(s, m.Attribute(attr=m.Name(IMPLEMENTATION)))]
    names = [s for s in sides if isinstance(s, cst.SimpleString)]
    return (
        isinstance(comparison.operator, cst.Equal)
        and len(reads) == 1
        and code(reads[0].value) in ("self.config", "config")  # type: ignore[attr-defined]
        and len(names) == 1
        and names[0].evaluated_value != EAGER
    )


def _lines(node: cst.CSTNode) -> int:
    return cst.Module(body=[node]).code.count("\n")  # type: ignore[list-item]


class _EagerBranches(cst.CSTTransformer):
    def leave_IndentedBlock(
        self, original_node: cst.IndentedBlock, updated_node: cst.IndentedBlock
    ) -> cst.IndentedBlock:
        body: list[cst.BaseStatement] = []
        pending = 0  # lines of dropped statements, to give back as blank lines
        for statement in updated_node.body:
            if isinstance(statement, cst.If) and other_implementation_only(statement.test):
                orelse = statement.orelse
                if isinstance(orelse, cst.Else):
                    kept = list(orelse.body.body)  # type: ignore[attr-defined]
                    bare = statement.with_changes(leading_lines=[])
                    dropped = _lines(bare) - sum(_lines(s) for s in kept)
                    kept[0] = kept[0].with_changes(
                        leading_lines=[
                            *statement.leading_lines,
                            *_blank(pending + dropped),
                            *kept[0].leading_lines,
                        ]
                    )
                    body.extend(kept)
                    pending = 0
                    continue
                if orelse is None:
                    pending += _lines(statement)
                    continue
            if pending:
                statement = statement.with_changes(leading_lines=[*_blank(pending), *statement.leading_lines])
                pending = 0
            body.append(statement)
        if not body:
            body = [cst.SimpleStatementLine(body=[cst.Pass()])]
        return updated_node.with_changes(body=body)


def _blank(count: int) -> list[cst.EmptyLine]:
    return [cst.EmptyLine(indent=False) for _ in range(max(count, 0))]
