"""libcst tree helpers shared by the analysis and the rules: reading nodes and small edits of them.

Reading: the code of a node, dotted names, the nodes under a node, the names it reads, what a statement
assigns. Editing: a class's methods and bases, a function's body, call arguments. None of it decides
*what* to rewrite: the analysis decides (the Blueprint), the rules apply it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

import libcst as cst
import libcst.matchers as m

from .patterns import DOCSTRING, NAME_ASSIGNMENT, PARENT_INIT_STATEMENT, SELF_ASSIGNMENT

_EMPTY = cst.Module(body=[])
_ATOMIC = cst.Name | cst.Attribute | cst.Call | cst.Subscript | cst.Integer | cst.Float


# --- reading ------------------------------------------------------------------------------------------


def code(node: cst.CSTNode) -> str:
    """The source text of a node, outside any indentation context."""
    return _EMPTY.code_for_node(node)


def dotted(node: cst.CSTNode) -> str | None:
    """`a.b.c` for a Name/Attribute chain, else None."""
    if isinstance(node, cst.Name):
        return node.value
    if isinstance(node, cst.Attribute):
        base = dotted(node.value)
        return None if base is None else f"{base}.{node.attr.value}"
    return None


def walk(node: cst.CSTNode) -> Iterator[cst.CSTNode]:
    """Every node under `node` (itself included), in source order, parents before children."""
    collector = _Collector()
    node.visit(collector)
    return iter(collector.nodes)


class _Collector(cst.CSTVisitor):
    def __init__(self) -> None:
        super().__init__()
        self.nodes: list[cst.CSTNode] = []

    def on_visit(self, node: cst.CSTNode) -> bool:
        self.nodes.append(node)
        return True


def name_nodes(node: cst.CSTNode) -> Iterator[cst.Name]:
    """Every Name node under `node` that names a variable: attribute names (`x.attr`) and keyword
    names (`f(key=...)`) are not variables."""
    stack: list[cst.CSTNode] = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, cst.Name):
            yield current
        elif isinstance(current, cst.Attribute | cst.Arg):
            stack.append(current.value)
        else:
            stack.extend(reversed(current.children))


def names_in(node: cst.CSTNode) -> set[str]:
    """The variable names read or bound under `node` (see `name_nodes`)."""
    return {name.value for name in name_nodes(node)}


def self_attribute(node: cst.CSTNode) -> str | None:
    """`attr` for the expression `self.attr`."""
    # SELF_ATTRIBUTE, spelled out: this runs on every node the analysis traces.
    if isinstance(node, cst.Attribute) and isinstance(node.value, cst.Name) and node.value.value == "self":
        return node.attr.value
    return None


def self_attributes(node: cst.CSTNode) -> set[str]:
    """Every attribute `self.<name>` the code under `node` reads or assigns."""
    return {name for child in walk(node) if (name := self_attribute(child)) is not None}


def assigned_self_attribute(statement: cst.CSTNode) -> str | None:
    """`attr` when `statement` is the single assignment `self.attr = ...` (or `self.attr: T = ...`)."""
    if not m.matches(statement, SELF_ASSIGNMENT):
        return None
    small = statement.body[0]  # type: ignore[attr-defined]
    target = small.targets[0].target if isinstance(small, cst.Assign) else small.target
    return target.attr.value


def assigned_name(statement: cst.CSTNode) -> str | None:
    """`name` when `statement` is the simple statement `name = ...` (one plain-name target)."""
    if not m.matches(statement, NAME_ASSIGNMENT):
        return None
    small = statement.body[0]  # type: ignore[attr-defined]
    target = small.targets[0].target if isinstance(small, cst.Assign) else small.target
    return target.value


def assigned_value(statement: cst.CSTNode) -> cst.BaseExpression | None:
    """The right-hand side of a one-target simple assignment."""
    if isinstance(statement, cst.SimpleStatementLine) and len(statement.body) == 1:
        small = statement.body[0]
        if isinstance(small, cst.Assign) and len(small.targets) == 1:
            return small.value
        if isinstance(small, cst.AnnAssign):
            return small.value
    return None


def assigned_target(statement: cst.CSTNode) -> str | None:
    """`a.b` for a one-target statement `a.b = ...`, `a.b: T` or `a.b: T = ...` (class attributes, module
    variables); None for anything else."""
    if not isinstance(statement, cst.SimpleStatementLine) or len(statement.body) != 1:
        return None
    small = statement.body[0]
    if isinstance(small, cst.Assign) and len(small.targets) == 1:
        return dotted(small.targets[0].target)
    if isinstance(small, cst.AnnAssign):
        return dotted(small.target)
    return None


def is_docstring(statement: cst.CSTNode) -> bool:
    """A statement line holding only a string."""
    return m.matches(statement, DOCSTRING)


def find_method(cls: cst.ClassDef, name: str) -> cst.FunctionDef | None:
    """The method `name` defined directly in the class body."""
    for statement in cls.body.body:
        if isinstance(statement, cst.FunctionDef) and statement.name.value == name:
            return statement
    return None


def find_definition(body: Sequence[cst.BaseStatement], name: str) -> int | None:
    """Index of the top-level class or function `name` in a module body."""
    for index, statement in enumerate(body):
        if isinstance(statement, cst.ClassDef | cst.FunctionDef) and statement.name.value == name:
            return index
    return None


def docstring_count(body: Sequence[cst.BaseStatement]) -> int:
    """1 when the block starts with a docstring, else 0."""
    return 1 if body and is_docstring(body[0]) else 0


def index_of_assignment(body: Sequence[cst.BaseStatement], attribute: str) -> int | None:
    """Index of the top-level statement `self.<attribute> = ...` in `body`."""
    for index, statement in enumerate(body):
        if assigned_self_attribute(statement) == attribute:
            return index
    return None


def self_calls(node: cst.CSTNode, attribute: str) -> list[cst.Call]:
    """Calls `self.<attribute>(...)` under `node`."""
    return [n for n in walk(node) if isinstance(n, cst.Call) and self_attribute(n.func) == attribute]


def reads_self_attribute(node: cst.CSTNode, attribute: str) -> bool:
    """Whether `self.<attribute>` appears under `node`."""
    return any(self_attribute(n) == attribute for n in walk(node))


def contains(node: cst.CSTNode, target: cst.CSTNode) -> bool:
    """Whether `target` (by identity) is `node` or under it."""
    return any(n is target for n in walk(node))


def absolute_name(name: str, package: str) -> str:
    """A dotted name made absolute against `package`: `...pytorch_utils.X` in `a.b.c` -> `a.pytorch_utils.X`.

    Raises ValueError when the leading dots climb above the top package.
    """
    dots = len(name) - len(name.lstrip("."))
    if dots == 0:
        return name
    parts = package.split(".")
    if dots - 1 >= len(parts):
        raise ValueError(f"a relative name with {dots} dots leaves the package {package}")
    base = parts[: len(parts) - (dots - 1)]
    rest = name[dots:]
    return ".".join([*base, rest] if rest else base)


def fresh_name(preferred: str, taken: set[str]) -> str:
    """`preferred`, or `preferred_<n>` when it is taken."""
    name, counter = preferred, 1
    while name in taken:
        counter += 1
        name = f"{preferred}_{counter}"
    return name


# --- editing ------------------------------------------------------------------------------------------


def parse_statements(text: str) -> list[cst.BaseStatement]:
    """Statements parsed from unindented text; blank lines and comments before the first stay with it."""
    # A module keeps leading comments in its header: parse after a placeholder statement instead.
    return list(cst.parse_module("pass\n" + text.strip("\n") + "\n").body[1:])


def with_body(node: cst.FunctionDef | cst.ClassDef, body: Sequence[cst.BaseStatement]) -> cst.CSTNode:
    """`node` with new top-level statements."""
    return node.with_changes(body=node.body.with_changes(body=list(body)))


def with_method(cls: cst.ClassDef, function: cst.FunctionDef) -> cst.ClassDef:
    """`cls` with its method of the same name replaced by `function`."""
    body = [
        function if isinstance(s, cst.FunctionDef) and s.name.value == function.name.value else s
        for s in cls.body.body
    ]
    return cls.with_changes(body=cls.body.with_changes(body=body))


def with_base(cls: cst.ClassDef, base: str, *, first: bool = False) -> cst.ClassDef:
    """`cls` with `base` among its bases, last (or `first`); unchanged when already there."""
    if any(code(arg.value) == base for arg in cls.bases):
        return cls
    comma = cst.Comma(whitespace_after=cst.SimpleWhitespace(" "))
    new = cst.Arg(value=cst.parse_expression(base))
    bases = list(cls.bases)
    if first:
        bases = [new.with_changes(comma=comma), *bases]
    else:
        if bases:
            bases[-1] = bases[-1].with_changes(comma=comma)
        bases.append(new)
    return cls.with_changes(bases=bases, lpar=cst.LeftParen(), rpar=cst.RightParen())


def is_parent_init(statement: cst.BaseStatement) -> bool:
    """`super().__init__(...)` or `Base.__init__(self, ...)` as a statement."""
    return m.matches(statement, PARENT_INIT_STATEMENT)


def insert_after_super_init(
    function: cst.FunctionDef, statements: Sequence[cst.BaseStatement]
) -> cst.FunctionDef:
    """Statements placed right after the parent-constructor call (else after the docstring)."""
    body = list(function.body.body)
    index = docstring_count(body)
    for position, statement in enumerate(body):
        if is_parent_init(statement):
            index = position + 1
            break
    body[index:index] = statements
    return function.with_changes(body=function.body.with_changes(body=body))


def with_statements_after(
    function: cst.FunctionDef, inserted: Callable[[cst.BaseStatement], Sequence[cst.BaseStatement]]
) -> cst.FunctionDef:
    """`function` with `inserted(statement)` right after each statement of each of its blocks (an `if`
    arm's too), so code placed after an assignment exists exactly when the assignment runs."""

    class _After(cst.CSTTransformer):
        def leave_IndentedBlock(
            self, original_node: cst.IndentedBlock, updated_node: cst.IndentedBlock
        ) -> cst.IndentedBlock:
            body: list[cst.BaseStatement] = []
            for statement in updated_node.body:
                body += [statement, *inserted(statement)]
            return updated_node.with_changes(body=body)

    result = function.visit(_After())
    assert isinstance(result, cst.FunctionDef)
    return result


def insert_module_statements(
    module: cst.Module, statements: Sequence[cst.BaseStatement], *, before: str | None = None
) -> cst.Module:
    """Top-level statements inserted before the definition `before` (else the first class or function);
    inserted definitions get the two blank lines before them that PEP 8 asks for."""
    body = list(module.body)
    index = len(body)
    for position, statement in enumerate(body):
        if isinstance(statement, cst.ClassDef | cst.FunctionDef) and before in (None, statement.name.value):
            index = position
            break
    body[index:index] = [with_definition_spacing(statement) for statement in statements]
    return module.with_changes(body=body)


def with_definition_spacing(statement: cst.BaseStatement) -> cst.BaseStatement:
    """A top-level class or function with the two blank lines before it that PEP 8 asks for."""
    if isinstance(statement, cst.FunctionDef | cst.ClassDef):
        return statement.with_changes(
            leading_lines=[cst.EmptyLine(indent=False), cst.EmptyLine(indent=False)]
        )
    return statement


def replace_nodes(
    node: cst.CSTNode,
    replacements: dict[cst.CSTNode, cst.CSTNode] | Callable[[cst.CSTNode], cst.CSTNode | None],
) -> cst.CSTNode:
    """`node` with the given nodes (matched by identity) replaced."""

    class _Replace(cst.CSTTransformer):
        def on_leave(self, original: cst.CSTNode, updated: cst.CSTNode) -> cst.CSTNode:
            found = replacements(original) if callable(replacements) else replacements.get(original)
            return updated if found is None else found

    return node.visit(_Replace())


def leading_to(
    source: cst.BaseStatement, target: cst.BaseStatement
) -> tuple[cst.BaseStatement, cst.BaseStatement]:
    """Move `source`'s leading blank lines and comments onto `target` (inserted before it)."""
    lines = list(source.leading_lines)
    return (
        source.with_changes(leading_lines=[]),
        target.with_changes(leading_lines=[*lines, *target.leading_lines]),
    )


def with_leading_comment(statement: cst.BaseStatement, comment: str) -> cst.BaseStatement:
    """`statement` with a comment line added just above it (after its own leading lines)."""
    line = cst.EmptyLine(comment=cst.Comment(comment))
    return statement.with_changes(leading_lines=[*statement.leading_lines, line])


def operand(expression: cst.BaseExpression) -> cst.BaseExpression:
    """`expression` ready to be an operand of `*`, `+` or a comparison: parenthesized unless atomic."""
    if isinstance(expression, _ATOMIC) or expression.lpar:
        return expression
    return expression.with_changes(lpar=[cst.LeftParen()], rpar=[cst.RightParen()])


def rewrite_assigned_call(
    function: cst.FunctionDef,
    attribute: str,
    rewrite: Callable[[cst.Call], cst.BaseExpression],
    arm: Callable[[cst.Call], bool] | None = None,
) -> tuple[cst.FunctionDef, int]:
    """`function` with each `self.<attribute> = <call>(...)` given the value `rewrite(call)`, and how many
    such assignments there were. With `arm`, a conditional value `a(...) if c else b(...)` has its arms
    for which `arm` holds rewritten (an optional norm beside `nn.Identity()`)."""
    found = 0

    def rewritten(value: cst.BaseExpression) -> cst.BaseExpression | None:
        if isinstance(value, cst.Call):
            return rewrite(value)
        if arm is not None and isinstance(value, cst.IfExp):
            body, orelse = value.body, value.orelse
            if isinstance(body, cst.Call) and arm(body):
                return value.with_changes(body=rewrite(body))
            if isinstance(orelse, cst.Call) and arm(orelse):
                return value.with_changes(orelse=rewrite(orelse))
        return None

    class _Rewriter(cst.CSTTransformer):
        def leave_Assign(self, original: cst.Assign, updated: cst.Assign) -> cst.Assign:
            nonlocal found
            if len(updated.targets) != 1 or self_attribute(updated.targets[0].target) != attribute:
                return updated
            value = rewritten(updated.value)
            if value is None:
                return updated
            found += 1
            return updated.with_changes(value=value)

    result = function.visit(_Rewriter())
    assert isinstance(result, cst.FunctionDef)
    return result, found


# --- calls --------------------------------------------------------------------------------------------

SINGLE_LINE_LIMIT = 88  # a rebuilt call longer than this is written one argument per line


def keyword_argument(name: str, value: cst.BaseExpression) -> cst.Arg:
    """`name=value`, spaced as people write keyword arguments."""
    no_space = cst.SimpleWhitespace("")
    return cst.Arg(
        keyword=cst.Name(name),
        value=value,
        equal=cst.AssignEqual(whitespace_before=no_space, whitespace_after=no_space),
    )


def laid_out(call: cst.Call, *, exploded: bool | None = None) -> cst.Call:
    """`call` with its arguments separated by ", ", ending in a trailing comma when the call is long (or
    `exploded`): ruff's formatter then writes it one argument per line, as a person would."""
    if (
        len(call.args) == 1
        and isinstance(call.args[0].value, cst.GeneratorExp)
        and not call.args[0].value.lpar
    ):
        exploded = False  # `f(x for x in y,)` is not Python: a lone generator argument takes no comma
    if exploded is None:
        flat = laid_out(call, exploded=False)
        exploded = len(code(flat)) > SINGLE_LINE_LIMIT or "\n" in code(flat)
        if not exploded:
            return flat
    args = list(call.args)
    space = cst.SimpleWhitespace(" ")
    for index, arg in enumerate(args):
        last = index == len(args) - 1
        comma: cst.Comma | cst.MaybeSentinel = cst.Comma(whitespace_after=space)
        if last:
            comma = cst.Comma() if exploded else cst.MaybeSentinel.DEFAULT
        args[index] = arg.with_changes(comma=comma, whitespace_after_arg=cst.SimpleWhitespace(""))
    return call.with_changes(args=args, whitespace_before_args=cst.SimpleWhitespace(""))


def with_arguments(
    call: cst.Call,
    *,
    add: Iterable[tuple[str, cst.BaseExpression]] = (),
    after: str | None = None,
    drop: Iterable[str] = (),
) -> cst.Call:
    """`call` without keywords `drop`, plus keywords `(name, value)`, laid out again (`laid_out`).

    Added keywords go right after the keyword `after` when the call passes it, else at the end but before
    a `**mapping`. A keyword the call already passes keeps its place and takes the new value.
    """
    added = dict(add)
    dropped = set(drop)
    passed = {arg.keyword.value for arg in call.args if arg.keyword is not None}
    pending = [keyword_argument(name, value) for name, value in added.items() if name not in passed]
    args: list[cst.Arg] = []
    placed = False
    for arg in call.args:
        name = arg.keyword.value if arg.keyword is not None else None
        if name in dropped:
            continue
        if arg.star == "**" and not placed:
            args.extend(pending)
            placed = True
        args.append(arg.with_changes(value=added[name]) if name in added else arg)
        if after is not None and name == after and not placed:
            args.extend(pending)
            placed = True
    if not placed:
        args.extend(pending)
    return laid_out(call.with_changes(args=args))


def aliases_of(function: cst.FunctionDef, names: Iterable[str]) -> set[str]:
    """Local names of `function` bound to an expression choosing among `names` (`f = a if c else b`)."""
    wanted = set(names)
    aliases: set[str] = set()
    for node in walk(function):
        if (
            isinstance(node, cst.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0].target, cst.Name)
            and not isinstance(node.value, cst.Call)
            and names_in(node.value) & wanted
        ):
            aliases.add(node.targets[0].target.value)
    return aliases


def argument_code(arg: cst.Arg) -> str:
    """`value`, `name=value`, `*value` or `**value` as written."""
    value = code(arg.value)
    if arg.keyword is not None:
        return f"{arg.keyword.value}={value}"
    return f"{arg.star}{value}"
