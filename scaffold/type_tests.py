"""Branches that only test an object's class: `if isinstance(module, SomeClass): ...`.

A class named only as the type of such a branch is never built by the code that tests it, so the test
alone does not make the class part of the training closure (a shared `_init_weights` that initialises
the audio tower's modules does not make the text model depend on the audio tower). The branch of a class
the closure drops can never be taken by a kept model, and goes with the class.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import libcst as cst
import libcst.matchers as m

from .patterns import CLASS_TEST
from .syntax import name_nodes


def isinstance_class(test: cst.BaseExpression) -> str | None:
    """`T` when `test` is `isinstance(<expression>, T)` with `T` a plain name."""
    if not m.matches(test, CLASS_TEST):
        return None
    return test.args[1].value.value  # type: ignore[attr-defined]


# What a statement is made of, down to its statements (an `if` test or a call is never entered).
_STATEMENT_PARTS = (
    cst.BaseStatement,
    cst.BaseSuite,
    cst.Else,
    cst.ExceptHandler,
    cst.ExceptStarHandler,
    cst.Finally,
    cst.MatchCase,
)


def branch_only_type_tests(node: cst.CSTNode, occurrences: Counter[str] | None = None) -> set[str]:
    """Names that occur under `node` only as `T` of `if`/`elif isinstance(<expression>, T):` tests.

    `occurrences` counts the variable names under `node` (`name_nodes`), when the caller has them."""
    tested = Counter(name for branch in _branches(node) if (name := isinstance_class(branch.test)))
    if not tested:
        return set()
    if occurrences is None:
        occurrences = Counter(name.value for name in name_nodes(node) if name.value in tested)
    return {name for name, count in tested.items() if occurrences[name] == count}


def _branches(node: cst.CSTNode) -> Iterator[cst.If]:
    """The `if`/`elif` statements under `node`, found through statements only (no expression is walked)."""
    stack: list[cst.CSTNode] = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, cst.If):
            yield current
        if not isinstance(current, cst.SimpleStatementLine | cst.BaseExpression):
            stack.extend(child for child in current.children if isinstance(child, _STATEMENT_PARTS))


def without_type_tests(node: cst.CSTNode, dropped: frozenset[str]) -> cst.CSTNode:
    """`node` without the `if`/`elif isinstance(<expression>, T):` branches whose `T` is in `dropped`.

    An `elif` branch goes from its chain; a leading `if` gives way to its `elif` (which becomes the `if`),
    to its `else` body, or to nothing (a block left empty holds `pass`); comments before a removed
    leading `if` move to what replaces it."""
    if not dropped:
        return node
    return node.visit(_DropTypeTests(dropped))


class _DropTypeTests(cst.CSTTransformer):
    def __init__(self, dropped: frozenset[str]) -> None:
        super().__init__()
        self.dropped = dropped

    def _taken(self, branch: cst.If) -> bool:
        return isinstance_class(branch.test) not in self.dropped

    def leave_If(self, original_node: cst.If, updated_node: cst.If) -> cst.If:
        orelse = updated_node.orelse
        while isinstance(orelse, cst.If) and not self._taken(orelse):
            orelse = orelse.orelse
        return updated_node.with_changes(orelse=orelse)

    def leave_IndentedBlock(
        self, original_node: cst.IndentedBlock, updated_node: cst.IndentedBlock
    ) -> cst.IndentedBlock:
        body: list[cst.BaseStatement] = []
        changed = False
        for statement in updated_node.body:
            if isinstance(statement, cst.If) and not self._taken(statement):
                changed = True
                body += _replacement(statement)
            else:
                body.append(statement)
        if not changed:
            return updated_node
        return updated_node.with_changes(body=body or [cst.SimpleStatementLine(body=[cst.Pass()])])


def _replacement(statement: cst.If) -> list[cst.BaseStatement]:
    """What stands in for the leading `if` of a chain whose first branch goes."""
    orelse = statement.orelse
    if isinstance(orelse, cst.If):
        return [orelse.with_changes(leading_lines=[*statement.leading_lines, *orelse.leading_lines])]
    if isinstance(orelse, cst.Else) and isinstance(orelse.body, cst.IndentedBlock):
        rest = list(orelse.body.body)
        if rest:
            first = rest[0]
            rest[0] = first.with_changes(leading_lines=[*statement.leading_lines, *first.leading_lines])
        return rest
    return []
