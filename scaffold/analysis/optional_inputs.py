"""Optional inputs a base model builds only under a config flag, read with the flag off.

Some base models compute an extra input for their attention only when a config flag asks for it, and
pass `None` otherwise; the attention then branches on it (Falcon's ALiBi bias):

    alibi = None                                  # the base model's forward
    if self.use_alibi:                            # self.use_alibi = config.alibi in __init__
        alibi = build_alibi_tensor(...)
    ... layer(hidden_states, alibi=alibi, ...)
    if alibi is None: <rotary, plain scores> else: <the bias added to the scores>    # the attention

Where the scaffolder cannot convert what the flag turns on, the analysis reads the model with the flag off:
the block that builds the input goes, and every `if <input> is None:` / `if <input> is not None:` of a
method taking a parameter of that name keeps the branch taken for `None`. The generated model must then
refuse the flag: each `InputGuard` records the condition (in the constructor's terms, `config.alibi`) for
NXS028 to raise on at construction, so no configuration is trained wrongly.

The block is recognised by shape only: `x = None`, then one `if` without `else` whose test reads only
`self` attributes the constructor copies from the config, and which binds `x`; `x` bound nowhere else and
passed on as `x=x`; some method of the file takes a parameter `x` and tests it against `None`.
"""

from __future__ import annotations

import libcst as cst
import libcst.matchers as m
from libcst.metadata import MetadataWrapper, PositionProvider

from ..blueprint import InputGuard, Location
from ..syntax import code, names_in, walk

NONE_TEST = m.Comparison(
    left=m.Name(), comparisons=[m.ComparisonTarget(operator=m.Is() | m.IsNot(), comparator=m.Name("None"))]
)


def optional_inputs(module: cst.Module, display_path: str) -> tuple[cst.Module, tuple[InputGuard, ...]]:
    """`module` read with every flag-built optional input off, and the guards that reading needs."""
    tested = _tested_parameters(module)
    guards: list[InputGuard] = []
    body = list(module.body)
    positions = None
    for number, statement in enumerate(body):
        if not isinstance(statement, cst.ClassDef):
            continue
        found = _flag_block(statement, tested)
        if found is None:
            continue
        name, block, condition = found
        if positions is None:
            positions = MetadataWrapper(module, unsafe_skip_copy=True).resolve(PositionProvider)
        line = positions[block].start.line
        body[number] = statement.visit(_Without(block))  # type: ignore[assignment]
        guards.append(InputGuard(statement.name.value, name, code(condition), Location(display_path, line)))
    if not guards:
        return module, ()
    names = {guard.name for guard in guards}
    result = module.with_changes(body=body).visit(_NoneBranches(names))
    assert isinstance(result, cst.Module)
    return result, tuple(guards)


def _tested_parameters(module: cst.Module) -> set[str]:
    """Parameters of methods that test them against `None` (`if x is None:`)."""
    found: set[str] = set()
    for node in walk(module):
        if not isinstance(node, cst.FunctionDef):
            continue
        params = {p.name.value for p in node.params.params}
        for inner in walk(node.body):
            if isinstance(inner, cst.If) and m.matches(inner.test, NONE_TEST):
                tested = inner.test.left.value  # type: ignore[attr-defined]
                if tested in params:
                    found.add(tested)
    return found


def _config_copies(cls: cst.ClassDef) -> dict[str, cst.BaseExpression]:
    """`self.x = config.y` (or `self.config.y`) of the constructor, once each: x -> `config.y`."""
    init = next(
        (s for s in cls.body.body if isinstance(s, cst.FunctionDef) and s.name.value == "__init__"), None
    )
    if init is None:
        return {}
    copies: dict[str, cst.BaseExpression] = {}
    seen: set[str] = set()
    for statement in init.body.body:
        found = m.extract(
            statement,
            m.SimpleStatementLine(
                body=[
                    m.Assign(
                        targets=[
                            m.AssignTarget(
                                target=m.Attribute(
                                    value=m.Name("self"), attr=m.SaveMatchedNode(m.Name(), "attr")
                                )
                            )
                        ],
                        value=m.SaveMatchedNode(m.Attribute(value=m.Name("config")), "value"),
                    )
                ]
            ),
        )
        if found:
            attribute = found["attr"].value  # type: ignore[union-attr]
            if attribute in seen:
                copies.pop(attribute, None)
            else:
                copies[attribute] = found["value"]  # type: ignore[assignment]
            seen.add(attribute)
    return copies


def _flag_block(cls: cst.ClassDef, tested: set[str]) -> tuple[str, cst.If, cst.BaseExpression] | None:
    """(input, block, condition) of the forward's `x = None` ... `if <flag>: ... x = ...` (see module)."""
    forward = next(
        (s for s in cls.body.body if isinstance(s, cst.FunctionDef) and s.name.value == "forward"), None
    )
    if forward is None:
        return None
    copies = _config_copies(cls)
    body = list(forward.body.body)
    for index, statement in enumerate(body):
        if not m.matches(
            statement,
            m.SimpleStatementLine(
                body=[m.Assign(targets=[m.AssignTarget(target=m.Name())], value=m.Name("None"))]
            ),
        ):
            continue
        name = statement.body[0].targets[0].target.value  # type: ignore[attr-defined]
        if name not in tested:
            continue
        binders = [i for i, s in enumerate(body) if i != index and _binds(s, name)]
        if len(binders) != 1 or binders[0] < index:
            continue
        block = body[binders[0]]
        if not isinstance(block, cst.If) or block.orelse is not None:
            continue
        condition = _in_config_terms(block.test, copies)
        if condition is None or not _passed_on(forward, name):
            continue
        return name, block, condition
    return None


def _binds(statement: cst.BaseStatement, name: str) -> bool:
    return any(
        isinstance(node, cst.AssignTarget | cst.AugAssign | cst.AnnAssign) and name in names_in(node.target)
        for node in walk(statement)
    )


def _passed_on(forward: cst.FunctionDef, name: str) -> bool:
    """The forward passes the input on as `name=name` (to its layers)."""
    pattern = m.Arg(keyword=m.Name(name), value=m.Name(name))
    return any(isinstance(node, cst.Arg) and m.matches(node, pattern) for node in walk(forward))


def _in_config_terms(
    test: cst.BaseExpression, copies: dict[str, cst.BaseExpression]
) -> cst.BaseExpression | None:
    """The test with each `self.x` replaced by the config field it copies (None if it reads anything else)."""
    if m.matches(test, m.Attribute(value=m.Name("self"))):
        return copies.get(test.attr.value)  # type: ignore[attr-defined]
    if isinstance(test, cst.UnaryOperation) and isinstance(test.operator, cst.Not):
        inner = _in_config_terms(test.expression, copies)
        return None if inner is None else test.with_changes(expression=inner)
    if isinstance(test, cst.BooleanOperation):
        left, right = _in_config_terms(test.left, copies), _in_config_terms(test.right, copies)
        return None if left is None or right is None else test.with_changes(left=left, right=right)
    return None


class _Without(cst.CSTTransformer):
    """One statement removed, blank lines in its place (line numbers stay those of the file)."""

    def __init__(self, statement: cst.If) -> None:
        super().__init__()
        self.statement = statement
        self.lines = cst.Module(body=[statement]).code.count("\n")
        self.pending = 0

    def leave_IndentedBlock(
        self, original_node: cst.IndentedBlock, updated_node: cst.IndentedBlock
    ) -> cst.IndentedBlock:
        if not any(s is self.statement for s in original_node.body):
            return updated_node
        body: list[cst.BaseStatement] = []
        pending = 0
        for original, statement in zip(original_node.body, updated_node.body, strict=True):
            if original is self.statement:
                pending = self.lines
                continue
            if pending:
                blank = [cst.EmptyLine(indent=False) for _ in range(pending)]
                statement = statement.with_changes(leading_lines=[*blank, *statement.leading_lines])
                pending = 0
            body.append(statement)
        return updated_node.with_changes(body=body)


class _NoneBranches(cst.CSTTransformer):
    """In methods taking one of `names`, `if x is None: A else: B` -> A and `if x is not None: A else: B`
    -> B (blank lines where the other branch was)."""

    def __init__(self, names: set[str]) -> None:
        super().__init__()
        self.names = names
        self.depth = 0

    def visit_FunctionDef(self, node: cst.FunctionDef) -> bool:
        if self.names & {p.name.value for p in node.params.params}:
            self.depth += 1
        return True

    def leave_FunctionDef(
        self, original_node: cst.FunctionDef, updated_node: cst.FunctionDef
    ) -> cst.FunctionDef:
        if self.names & {p.name.value for p in original_node.params.params}:
            self.depth -= 1
        return updated_node

    def leave_IndentedBlock(
        self, original_node: cst.IndentedBlock, updated_node: cst.IndentedBlock
    ) -> cst.IndentedBlock:
        if not self.depth:
            return updated_node
        body: list[cst.BaseStatement] = []
        pending = 0
        for statement in updated_node.body:
            taken = self._taken(statement)
            if taken is None:
                if pending:
                    blank = [cst.EmptyLine(indent=False) for _ in range(pending)]
                    statement = statement.with_changes(leading_lines=[*blank, *statement.leading_lines])
                    pending = 0
                body.append(statement)
                continue
            assert isinstance(statement, cst.If)
            lines = cst.Module(body=[statement.with_changes(leading_lines=[])]).code.count("\n")
            kept = list(taken)
            if not kept:
                pending += lines + len(statement.leading_lines)
                continue
            gone = lines - sum(cst.Module(body=[s]).code.count("\n") for s in kept)
            before = 1 if taken is statement.body.body else gone  # the `if` body: its header goes before it
            kept[0] = kept[0].with_changes(
                leading_lines=[
                    *statement.leading_lines,
                    *(cst.EmptyLine(indent=False) for _ in range(pending + max(before, 0))),
                    *kept[0].leading_lines,
                ]
            )
            pending = max(gone - before, 0)  # the `else` part after a kept body
            body.extend(kept)
        if not body:
            body = [cst.SimpleStatementLine(body=[cst.Pass()])]
        return updated_node.with_changes(body=body)

    def _taken(self, statement: cst.BaseStatement) -> tuple[cst.BaseStatement, ...] | None:
        """The statements a `None` test of an input keeps (None: not such a test)."""
        if not (isinstance(statement, cst.If) and m.matches(statement.test, NONE_TEST)):
            return None
        test = statement.test
        if test.left.value not in self.names:  # type: ignore[attr-defined]
            return None
        is_none = isinstance(test.comparisons[0].operator, cst.Is)  # type: ignore[attr-defined]
        if is_none:
            return tuple(statement.body.body)  # type: ignore[arg-type]
        orelse = statement.orelse
        if orelse is None:
            return ()
        if isinstance(orelse, cst.Else):
            return tuple(orelse.body.body)  # type: ignore[arg-type]
        return (orelse,)  # an elif: the chain from there
