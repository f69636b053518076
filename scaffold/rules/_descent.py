"""Plain, pruned visitor dispatch for the rules' libcst transformers.

libcst's own codemod transformers gather matcher-decorated methods when built, dispatch through the
matcher machinery at every node and visit every node of the tree. The rules use no matchers, and most
of them only hook statements (classes, functions, imports, assignments): `StatementDescent` dispatches
to the `visit_X`/`leave_X` hooks directly and does not descend into nodes that cannot contain a
hooked node.
"""

from __future__ import annotations

from typing import ClassVar

import libcst as cst

from ._context import RuleContext

# Nodes whose children may hold statements.
STATEMENT_CONTAINERS: tuple[type[cst.CSTNode], ...] = (
    cst.Module,
    cst.BaseCompoundStatement,
    cst.BaseSuite,
    cst.Else,
    cst.ExceptHandler,
    cst.ExceptStarHandler,
    cst.Finally,
    cst.MatchCase,
)
_STATEMENT_TYPES = (cst.Module, cst.BaseStatement, cst.BaseSuite, cst.BaseSmallStatement)


class StatementDescent(cst.CSTTransformer):
    """A transformer holding a `RuleContext`, with direct hook dispatch.

    `DESCENT` holds the node types whose children are visited; None visits everything.
    """

    DESCENT: ClassVar[tuple[type[cst.CSTNode], ...] | None] = None

    def __init__(self, context: RuleContext) -> None:
        super().__init__()
        self.context = context

    def on_visit(self, node: cst.CSTNode) -> bool:
        if getattr(self, f"visit_{type(node).__name__}")(node) is False:
            return False
        return self.DESCENT is None or isinstance(node, self.DESCENT)

    def on_leave(self, original_node: cst.CSTNode, updated_node: cst.CSTNode) -> object:
        return getattr(self, f"leave_{type(original_node).__name__}")(original_node, updated_node)

    def on_visit_attribute(self, node: cst.CSTNode, attribute: str) -> None:
        return None

    def on_leave_attribute(self, original_node: cst.CSTNode, attribute: str) -> None:
        return None


def descent_for_hooks(classes: list[type]) -> tuple[type[cst.CSTNode], ...] | None:
    """Node types to descend into so that every `visit_X`/`leave_X` defined in `classes` still fires.

    None (descend everywhere) when a hook is on an expression or another non-statement node, or is an
    attribute hook (`visit_ClassDef_body`). Statements only sit in statement containers, small statements
    only in simple statement lines, so statement hooks never need a look inside expressions.
    """
    hooked: set[type[cst.CSTNode]] = set()
    for klass in classes:
        for name in vars(klass):
            prefix, _, node_name = name.partition("_")
            if prefix not in ("visit", "leave") or not node_name:
                continue
            node_type = getattr(cst, node_name, None)
            if not (isinstance(node_type, type) and issubclass(node_type, cst.CSTNode)):
                return None
            hooked.add(node_type)
    if not all(issubclass(node_type, _STATEMENT_TYPES) for node_type in hooked):
        return None
    if any(issubclass(node_type, cst.BaseSmallStatement | cst.SimpleStatementLine) for node_type in hooked):
        return (*STATEMENT_CONTAINERS, cst.SimpleStatementLine)
    return STATEMENT_CONTAINERS
