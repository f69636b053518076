"""Start lines of a module's nodes, as libcst's `PositionProvider` reports them, at a fraction of its cost.

One code generation pass with a state that counts lines and remembers where each node starts, through
the same hooks `PositionProvider` uses (a node's syntactic start when it records one, else where its
code begins). Columns and end positions, which the analysis never reads, are not computed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import libcst as cst
from libcst._nodes.internal import CodegenState

_NEWLINE = re.compile(r"\r\n?|\n")


class _LineCounter(CodegenState):
    """A codegen state that tracks the current line instead of collecting the code."""

    def __init__(self, module: cst.Module) -> None:
        super().__init__(default_indent=module.default_indent, default_newline=module.default_newline)
        self.line = 1
        self.starts: dict[cst.CSTNode, int] = {}
        self._stack: list[int] = []

    def add_indent_tokens(self) -> None:
        return None  # indentation holds no newline

    def add_token(self, value: str) -> None:
        if "\r" in value:
            self.line += len(_NEWLINE.findall(value))
        else:
            self.line += value.count("\n")

    def pop_trailing_newline(self) -> None:
        return None  # no tokens are kept; positions do not move

    def before_codegen(self, node: cst.CSTNode) -> None:
        self._stack.append(self.line)

    def after_codegen(self, node: cst.CSTNode) -> None:
        start = self._stack.pop()
        self.starts.setdefault(node, start)  # a recorded syntactic start wins

    @contextmanager
    def record_syntactic_position(
        self, node: cst.CSTNode, *, start_node: cst.CSTNode | None = None, end_node: cst.CSTNode | None = None
    ) -> Iterator[None]:
        start = self.line
        try:
            yield
        finally:
            self.starts[node] = self.starts[start_node] if start_node is not None else start


def start_lines(module: cst.Module) -> dict[cst.CSTNode, int]:
    """1-based start line of every node of `module` (the line `PositionProvider` gives as `start.line`)."""
    state = _LineCounter(module)
    module._codegen(state)
    return state.starts
