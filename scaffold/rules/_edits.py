"""libcst edits the structural rules (NXS001-NXS013) share, next to `_parallel_code` (NXS020+).

New code is written as text and parsed, so it comes out in the layout a person would type (one argument
per line once a call gets long); libcst re-indents it to wherever it lands. Nothing here decides *what*
to rewrite: that comes from the Blueprint in each rule.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import libcst as cst

from ..errors import ScaffoldError

SINGLE_LINE_LIMIT = 88  # a rebuilt call longer than this is written one argument per line
_EMPTY = cst.Module(body=[])


def code(node: cst.CSTNode) -> str:
    """The source text of a node (outside any indentation context)."""
    return _EMPTY.code_for_node(node)


def dotted(node: cst.CSTNode) -> str | None:
    """`a.b.c` for a Name/Attribute chain, else None."""
    if isinstance(node, cst.Name):
        return node.value
    if isinstance(node, cst.Attribute):
        base = dotted(node.value)
        return None if base is None else f"{base}.{node.attr.value}"
    return None


def names_in(node: cst.CSTNode) -> set[str]:
    """Every bare name read or bound under `node`; attribute names (`x.name`) and keywords excluded."""
    found: set[str] = set()

    class _Names(cst.CSTVisitor):
        def visit_Name(self, name: cst.Name) -> None:
            found.add(name.value)

        def visit_Attribute(self, attribute: cst.Attribute) -> bool:
            attribute.value.visit(self)
            return False

        def visit_Arg(self, arg: cst.Arg) -> bool:
            arg.value.visit(self)
            return False

    node.visit(_Names())
    return found


def module_imports(module: cst.Module) -> dict[str, tuple[str, str | None]]:
    """Bound name -> (module, imported object; None for `import x`) of the absolute top-level imports."""
    found: dict[str, tuple[str, str | None]] = {}
    for statement in module.body:
        if not isinstance(statement, cst.SimpleStatementLine):
            continue
        for small in statement.body:
            if isinstance(small, cst.ImportFrom) and not small.relative and small.module is not None:
                if isinstance(small.names, cst.ImportStar):
                    continue
                source = dotted(small.module) or ""
                for alias in small.names:
                    found[alias.evaluated_alias or alias.evaluated_name] = (source, alias.evaluated_name)
            elif isinstance(small, cst.Import):
                for alias in small.names:
                    found[alias.evaluated_alias or alias.evaluated_name.split(".")[0]] = (
                        alias.evaluated_name,
                        None,
                    )
    return found


def qualified_name(node: cst.CSTNode, imports: dict[str, tuple[str, str | None]]) -> str | None:
    """`a.b.c` resolved through the top-level imports `imports` (see `module_imports`), else None."""
    name = dotted(node)
    if name is None:
        return None
    head, _, rest = name.partition(".")
    if head not in imports:
        return None
    module, obj = imports[head]
    if obj is not None:
        return ".".join(filter(None, [module, obj, rest]))
    # `import a.b` binds `a`; `import a.b as c` binds `c` to `a.b`
    return ".".join(filter(None, [head if module.split(".")[0] == head else module, rest]))


def mask_builders(module: cst.Module) -> set[str]:
    """Names imported from transformers' `masking_utils` (relative or absolute): the mask builders."""
    found: set[str] = set()
    for statement in module.body:
        if not isinstance(statement, cst.SimpleStatementLine):
            continue
        for small in statement.body:
            if (
                isinstance(small, cst.ImportFrom)
                and small.module is not None
                and (dotted(small.module) or "").rsplit(".", 1)[-1] == "masking_utils"
                and not isinstance(small.names, cst.ImportStar)
            ):
                found |= {alias.evaluated_alias or alias.evaluated_name for alias in small.names}
    return found


def mask_aliases(function: cst.FunctionDef, builders: set[str]) -> set[str]:
    """Local names bound to an expression choosing among mask builders (`mask_function = a if c else b`)."""
    aliases: set[str] = set()

    class _Aliases(cst.CSTVisitor):
        def visit_Assign(self, node: cst.Assign) -> None:
            target = node.targets[0].target if len(node.targets) == 1 else None
            if (
                isinstance(target, cst.Name)
                and not isinstance(node.value, cst.Call)
                and names_in(node.value) & builders
            ):
                aliases.add(target.value)

    function.visit(_Aliases())
    return aliases


def parse_statements(text: str) -> list[cst.BaseStatement]:
    """Statements parsed from unindented text; comments before the first one stay with it."""
    # A module keeps leading comments in its header: parse after a placeholder statement instead.
    return list(cst.parse_module("pass\n" + text.strip("\n") + "\n").body[1:])


def indented(text: str) -> str:
    """Continuation lines of `text` indented one more level (to embed it in a block written as text)."""
    return text.replace("\n", "\n    ")


def argument_text(arg: cst.Arg) -> str:
    """`value`, `name=value`, `*value` or `**value` as written."""
    value = code(arg.value)
    if arg.keyword is not None:
        return f"{arg.keyword.value}={value}"
    return f"{arg.star}{value}"


def build_call(callee: str, arguments: Sequence[str]) -> cst.Call:
    """`callee(arguments...)`: on one line when short, else one argument per line with a trailing comma."""
    flat = f"{callee}({', '.join(arguments)})"
    if len(flat) <= SINGLE_LINE_LIMIT and "\n" not in flat:
        expression = cst.parse_expression(flat)
    else:
        inner = "".join(f"    {indented(argument)},\n" for argument in arguments)
        expression = cst.parse_expression(f"{callee}(\n{inner})")
    assert isinstance(expression, cst.Call)
    return expression


def rebuild_call(
    call: cst.Call,
    *,
    callee: str | None = None,
    add: Iterable[tuple[str, str]] = (),
    after: str | None = None,
    drop: Iterable[str] = (),
) -> cst.Call:
    """`call` (or `callee` with the same arguments) without keywords `drop`, plus keywords `(name, value text)`.

    Added keywords go right after the keyword `after` when the call passes it, else at the end but before
    a `**mapping`. A keyword the call already passes keeps its place and takes the new value.
    """
    added = dict(add)
    dropped = set(drop)
    pending = [(name, value) for name, value in added.items() if not _passes(call, name)]
    texts: list[str] = []
    placed = False
    for arg in call.args:
        name = arg.keyword.value if arg.keyword is not None else None
        if name in dropped:
            continue
        if arg.star == "**" and not placed:
            texts.extend(f"{key}={value}" for key, value in pending)
            placed = True
        texts.append(f"{name}={added[name]}" if name in added else argument_text(arg))
        if after is not None and name == after and not placed:
            texts.extend(f"{key}={value}" for key, value in pending)
            placed = True
    if not placed:
        texts.extend(f"{key}={value}" for key, value in pending)
    return build_call(callee if callee is not None else code(call.func), texts)


def _passes(call: cst.Call, keyword: str) -> bool:
    return any(arg.keyword is not None and arg.keyword.value == keyword for arg in call.args)


def find_method(cls: cst.ClassDef, name: str) -> cst.FunctionDef | None:
    """The method `name` defined directly in the class body."""
    for statement in cls.body.body:
        if isinstance(statement, cst.FunctionDef) and statement.name.value == name:
            return statement
    return None


def config_parameter(function: cst.FunctionDef, rule: str) -> str:
    """The config parameter of an `__init__`: `config`, else one annotated `...Config` (else ScaffoldError)."""
    params = function.params.params
    if any(param.name.value == "config" for param in params):
        return "config"
    for param in params:
        if param.annotation is not None and code(param.annotation.annotation).endswith("Config"):
            return param.name.value
    names = ", ".join(param.name.value for param in params)
    raise ScaffoldError(f"{rule}: `{function.name.value}({names})` takes no config parameter")


def docstring_count(body: Sequence[cst.BaseStatement]) -> int:
    """1 when the block starts with a docstring, else 0."""
    if body and isinstance(body[0], cst.SimpleStatementLine) and len(body[0].body) == 1:
        small = body[0].body[0]
        if isinstance(small, cst.Expr) and isinstance(small.value, cst.SimpleString | cst.ConcatenatedString):
            return 1
    return 0


def with_body(node: cst.FunctionDef | cst.ClassDef, body: Sequence[cst.BaseStatement]) -> cst.CSTNode:
    """`node` with new top-level statements."""
    return node.with_changes(body=node.body.with_changes(body=list(body)))


def insert_after_super_init(
    function: cst.FunctionDef, statements: Sequence[cst.BaseStatement]
) -> cst.FunctionDef:
    """Statements placed right after the parent-constructor call (else after the docstring)."""
    body = list(function.body.body)
    index = docstring_count(body)
    for position, statement in enumerate(body):
        if _is_parent_init(statement):
            index = position + 1
            break
    body[index:index] = statements
    return function.with_changes(body=function.body.with_changes(body=body))


def _is_parent_init(statement: cst.BaseStatement) -> bool:
    """`super().__init__(...)` or `Base.__init__(self, ...)` as a statement."""
    if not isinstance(statement, cst.SimpleStatementLine) or len(statement.body) != 1:
        return False
    small = statement.body[0]
    if not isinstance(small, cst.Expr) or not isinstance(small.value, cst.Call):
        return False
    func = small.value.func
    return isinstance(func, cst.Attribute) and func.attr.value == "__init__"


def self_attribute(node: cst.CSTNode) -> str | None:
    """`attr` for the expression `self.attr`."""
    if isinstance(node, cst.Attribute) and isinstance(node.value, cst.Name) and node.value.value == "self":
        return node.attr.value
    return None


def assigned_self_attribute(statement: cst.CSTNode) -> str | None:
    """`attr` when `statement` is the single assignment `self.attr = ...` (or `self.attr: T = ...`)."""
    if not isinstance(statement, cst.SimpleStatementLine) or len(statement.body) != 1:
        return None
    small = statement.body[0]
    if isinstance(small, cst.Assign) and len(small.targets) == 1:
        return self_attribute(small.targets[0].target)
    if isinstance(small, cst.AnnAssign) and small.value is not None:
        return self_attribute(small.target)
    return None


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
    blank = [cst.EmptyLine(indent=False), cst.EmptyLine(indent=False)]
    spaced = [
        statement.with_changes(leading_lines=blank)
        if isinstance(statement, cst.FunctionDef | cst.ClassDef)
        else statement
        for statement in statements
    ]
    body[index:index] = spaced
    return module.with_changes(body=body)


def rewrite_assigned_call(
    function: cst.FunctionDef, attribute: str, rewrite: Callable[[cst.Call], cst.BaseExpression]
) -> tuple[cst.FunctionDef, int]:
    """`function` with each `self.<attribute> = <call>(...)` given the value `rewrite(call)`, and how many
    such assignments there were (callers refuse when there are none)."""
    found = 0

    class _Rewriter(cst.CSTTransformer):
        def leave_Assign(self, original: cst.Assign, updated: cst.Assign) -> cst.Assign:
            nonlocal found
            if len(updated.targets) != 1 or self_attribute(updated.targets[0].target) != attribute:
                return updated
            if not isinstance(updated.value, cst.Call):
                return updated
            found += 1
            return updated.with_changes(value=rewrite(updated.value))

    result = function.visit(_Rewriter())
    assert isinstance(result, cst.FunctionDef)
    return result, found
