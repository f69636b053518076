"""The imports rules ask for: scheduled while a rule runs, applied after it, without scope analysis.

A rule calls `schedule_import` / `schedule_removal` (libcst's `AddImportsVisitor.add_needed_import` /
`RemoveImportsVisitor.remove_unused_import`, with the same arguments and the same results, which
tests/scaffold/test_fast_rules.py checks against libcst itself); `Rule.transform_module` then applies them:

- `add_scheduled_imports` adds what the module's leading imports (the import statements right after the
  docstring) lack: names from a module already imported there join that statement, the rest become new
  statements after the leading imports. Relative imports are neither merged into nor looked up;
- `UnusedImportRemover` drops each scheduled import nothing uses any more. A bound name is used when the
  module reads it (as a name or the head of a dotted name), lists it in `__all__`, or names it in a
  string annotation. Names are read by Python's own parser of the module text, not by scope analysis,
  so a local that shadows an import counts as a use (the import is kept).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import libcst as cst

from ..errors import ScaffoldError
from ._context import RuleContext
from ._descent import STATEMENT_CONTAINERS, StatementDescent

ADD_KEY = "nxd_scaffold.add_imports"
REMOVE_KEY = "nxd_scaffold.remove_imports"
_IGNORED_MODULES = frozenset({"__future__"})  # never reported unused
_STRING_ANNOTATION_CALLS = frozenset({"TypeVar"})  # string arguments are annotations


@dataclass(frozen=True)
class _Wanted:
    """One scheduled import: `import module [as alias]` or `from module import obj [as alias]`."""

    module: str  # leading dots for a relative module
    obj: str | None
    alias: str | None


def schedule_import(
    context: RuleContext, module: str, obj: str | None = None, asname: str | None = None, relative: int = 0
) -> None:
    """Ask for `from <relative dots><module> import obj [as asname]` (or `import module [as asname]`)."""
    if module == "__future__" and (obj is None or asname is not None):
        raise ValueError("__future__ imports need an object and take no alias")
    name = module.lstrip(".")
    relative += len(module) - len(name)
    if relative and obj is None:  # `import ..a` means `from .. import a`
        name, obj = "", name
    context.scratch.setdefault(ADD_KEY, []).append(_Wanted("." * relative + name, obj, asname))


def schedule_removal(
    context: RuleContext, module: str, obj: str | None = None, asname: str | None = None
) -> None:
    """Remove `import module [as asname]` / `from module import obj [as asname]` if nothing uses it then."""
    context.scratch.setdefault(REMOVE_KEY, []).append((module, obj, asname))


def add_scheduled_imports(module: cst.Module, context: RuleContext) -> cst.Module:
    """`module` with the imports scheduled in `context` that its leading imports lack."""
    wanted: Sequence[_Wanted] = context.scratch.get(ADD_KEY, ())
    plain = {item.module for item in wanted if item.obj is None and item.alias is None}
    aliased_modules = {
        item.module: item.alias for item in wanted if item.obj is None and item.alias is not None
    }
    objects: dict[str, set[str]] = {}
    aliased_objects: dict[str, list[tuple[str, str]]] = {}
    for item in sorted(wanted, key=lambda item: item.module):
        if item.obj is not None and item.alias is None:
            objects.setdefault(item.module, set()).add(item.obj)
        elif item.obj is not None and item.alias is not None:
            aliased_objects.setdefault(item.module, []).append((item.obj, item.alias))

    start = 1 if _skips_first(module) else 0
    leading = _leading_imports(module, start)
    present = _Present(leading)
    plain -= present.modules
    for name, alias in present.module_aliases.items():
        if aliased_modules.get(name) == alias:
            del aliased_modules[name]
    for name, pairs in present.aliased_objects.items():
        if name in aliased_objects:
            remaining = [pair for pair in aliased_objects[name] if pair not in pairs]
            if remaining:
                aliased_objects[name] = remaining
            else:
                del aliased_objects[name]
    for name, names in present.objects.items():
        if name in objects:
            remaining = set() if "*" in names else objects[name] - names
            if remaining:
                objects[name] = remaining
            else:
                del objects[name]
    if not (plain or aliased_modules or objects or aliased_objects):
        return module

    body = list(module.body)
    for index in range(start, start + len(leading)):  # extend the leading `from m import ...` statements
        small = body[index].body[0]  # type: ignore[attr-defined]
        name = _absolute_from(small) if isinstance(small, cst.ImportFrom) else None
        if (
            name is None
            or isinstance(small.names, cst.ImportStar)
            or (name not in objects and name not in aliased_objects)
        ):
            continue
        extra = [cst.ImportAlias(name=cst.Name(obj)) for obj in sorted(objects.pop(name, ()))]
        extra += [
            cst.ImportAlias(name=cst.Name(obj), asname=cst.AsName(name=cst.Name(alias)))
            for obj, alias in sorted(aliased_objects.pop(name, ()))
        ]
        body[index] = body[index].with_changes(body=[small.with_changes(names=[*extra, *small.names])])  # type: ignore[attr-defined]
    if not (plain or aliased_modules or objects or aliased_objects):
        return module.with_changes(body=body)

    end = start + len(leading)
    pairs: dict[str, list[tuple[str, str | None]]] = {}
    for name, aliases in aliased_objects.items():
        pairs.setdefault(name, []).extend(aliases)
    for name, names in objects.items():
        pairs.setdefault(name, []).extend((obj, None) for obj in names)
    config = module.config_for_parsing

    def from_import(name: str) -> cst.BaseStatement:
        listed = ", ".join(
            obj if alias is None else f"{obj} as {alias}" for obj, alias in sorted(pairs[name])
        )  # type: ignore[type-var]
        return cst.parse_statement(f"from {name} import {listed}", config=config)

    return module.with_changes(
        body=[
            *body[:start],
            *(from_import(name) for name in pairs if name == "__future__"),
            *body[start:end],
            *(cst.parse_statement(f"import {name}", config=config) for name in sorted(plain)),
            *(
                cst.parse_statement(f"import {name} as {alias}", config=config)
                for name, alias in aliased_modules.items()
            ),
            *(from_import(name) for name in pairs if name != "__future__"),
            *_blank_line_first(body[end:]),
        ]
    )


class _Present:
    """What a module's leading imports already import (relative `from` imports are not looked at)."""

    def __init__(self, statements: list[cst.Import | cst.ImportFrom]) -> None:
        self.modules: set[str] = set()
        self.module_aliases: dict[str, str] = {}
        self.objects: dict[str, set[str]] = {}
        self.aliased_objects: dict[str, list[tuple[str, str]]] = {}
        for statement in statements:
            if isinstance(statement, cst.Import):
                for alias in statement.names:
                    if alias.evaluated_alias is not None:
                        self.module_aliases[alias.evaluated_name] = alias.evaluated_alias
                    else:
                        self.modules.add(alias.evaluated_name)
            else:
                self._add_from(statement)

    def _add_from(self, statement: cst.ImportFrom) -> None:
        name = _absolute_from(statement)
        if name is None:
            return
        if isinstance(statement.names, cst.ImportStar):
            self.objects[name] = {"*"}
            return
        pairs = [
            (alias.evaluated_name, alias.evaluated_alias)
            for alias in statement.names
            if alias.asname is not None
        ]
        if pairs:
            self.aliased_objects.setdefault(name, []).extend(pairs)  # type: ignore[arg-type]
        names = {alias.evaluated_name for alias in statement.names if alias.asname is None}
        if names:
            known = self.objects.setdefault(name, set())
            if "*" not in known:
                known |= names


def _absolute_from(statement: cst.ImportFrom) -> str | None:
    """The module of an absolute `from` import; None for a relative one."""
    if statement.relative or statement.module is None:
        return None
    return _module_name(statement.module)


def _module_name(node: cst.BaseExpression) -> str:
    if isinstance(node, cst.Attribute):
        return f"{_module_name(node.value)}.{node.attr.value}"
    assert isinstance(node, cst.Name)
    return node.value


def _skips_first(module: cst.Module) -> bool:
    """Whether the module starts with a docstring or a `__strict__ = ...` flag (imports go after it)."""
    if not module.body or not isinstance(module.body[0], cst.SimpleStatementLine):
        return False
    smalls = module.body[0].body
    if len(smalls) != 1:
        return False
    small = smalls[0]
    if isinstance(small, cst.Expr):
        return isinstance(small.value, cst.SimpleString)
    return (
        isinstance(small, cst.Assign)
        and len(small.targets) == 1
        and isinstance(small.targets[0].target, cst.Name)
        and small.targets[0].target.value == "__strict__"
    )


def _leading_imports(module: cst.Module, start: int) -> list[cst.Import | cst.ImportFrom]:
    """The run of one-import statement lines from `start` on."""
    found: list[cst.Import | cst.ImportFrom] = []
    for statement in module.body[start:]:
        if not (
            isinstance(statement, cst.SimpleStatementLine)
            and len(statement.body) == 1
            and isinstance(statement.body[0], cst.Import | cst.ImportFrom)
        ):
            break
        found.append(statement.body[0])
    return found


def _blank_line_first(statements: Sequence[cst.BaseStatement]) -> list[cst.BaseStatement]:
    """`statements` with an empty line before the first one (before its comment, if it has one)."""
    if not statements:
        return []
    first, *rest = statements
    lines = first.leading_lines
    if not lines:
        return [first.with_changes(leading_lines=(cst.EmptyLine(),)), *rest]
    if lines[0].comment is None:
        return [first, *rest]
    return [first.with_changes(leading_lines=(cst.EmptyLine(), *lines)), *rest]


class UnusedImportRemover(StatementDescent):
    """Removes the scheduled imports that nothing uses (see the module docstring), at any depth."""

    DESCENT = (*STATEMENT_CONTAINERS, cst.SimpleStatementLine)

    def __init__(self, context: RuleContext) -> None:
        super().__init__(context)
        scheduled = context.scratch.get(REMOVE_KEY, ())
        self._modules = {module: alias for module, obj, alias in scheduled if obj is None}
        self._objects: dict[str, set[tuple[str, str | None]]] = {}
        for module, obj, alias in scheduled:
            if obj is not None:
                self._objects.setdefault(module, set()).add((obj, alias))
        self._unused: set[cst.ImportAlias] = set()

    def visit_Module(self, node: cst.Module) -> None:
        used = referenced_names(node)
        self._unused = {
            alias
            for statement in _imports(node)
            for alias in statement.names  # type: ignore[union-attr]
            if not any(name in used for name in _bound_names(alias))
        }

    def leave_Import(
        self, original_node: cst.Import, updated_node: cst.Import
    ) -> cst.Import | cst.RemovalSentinel:
        keep = [
            alias
            for alias in original_node.names
            if alias.evaluated_name not in self._modules
            or alias.evaluated_alias != self._modules[alias.evaluated_name]
            or alias not in self._unused
        ]
        return _without(updated_node, original_node.names, keep, {})

    def leave_ImportFrom(
        self, original_node: cst.ImportFrom, updated_node: cst.ImportFrom
    ) -> cst.ImportFrom | cst.RemovalSentinel:
        names = original_node.names
        if isinstance(names, cst.ImportStar):
            return updated_node
        module = _absolute_from(updated_node)
        if module is None or module not in self._objects:
            return updated_node
        scheduled = self._objects[module]
        keep: list[cst.ImportAlias] = []
        changes: dict[str, object] = {}
        for alias in names:
            if (alias.evaluated_name, alias.evaluated_alias) not in scheduled or alias not in self._unused:
                keep.append(alias)
                continue
            comma = alias.comma  # keep the comments after a removed name's comma
            if not isinstance(comma, cst.Comma):
                continue
            if keep:
                previous = keep[-1]
                if isinstance(previous.comma, cst.Comma):
                    whitespace = _merged(previous.comma.whitespace_after, comma.whitespace_after)
                    keep[-1] = previous.with_deep_changes(previous.comma, whitespace_after=whitespace)
                else:
                    keep[-1] = previous.with_changes(comma=comma)
            elif isinstance(updated_node.lpar, cst.LeftParen):
                lpar = updated_node.lpar
                changes["lpar"] = lpar.with_changes(
                    whitespace_after=_merged(lpar.whitespace_after, comma.whitespace_after)
                )
        return _without(updated_node, names, keep, changes)


def _without(
    node: cst.Import | cst.ImportFrom,
    names: Sequence[cst.ImportAlias],
    keep: list[cst.ImportAlias],
    changes: dict[str, object],
) -> cst.Import | cst.ImportFrom | cst.RemovalSentinel:
    """`node` keeping the names `keep` of `names` (removed when none is kept)."""
    if keep == list(names):
        return node
    if not keep:
        return cst.RemoveFromParent()
    if keep[-1] is not names[-1]:  # no trailing comma after the new last name
        keep = [*keep[:-1], keep[-1].with_changes(comma=cst.MaybeSentinel.DEFAULT)]
    return node.with_changes(names=keep, **changes)


def _merged(
    left: cst.BaseParenthesizableWhitespace, right: cst.BaseParenthesizableWhitespace
) -> cst.BaseParenthesizableWhitespace:
    """The whitespace after a kept comma, taking over the comment lines after a removed one."""
    if not isinstance(right, cst.ParenthesizedWhitespace):
        return left
    if not isinstance(left, cst.ParenthesizedWhitespace):
        return right
    return left.with_changes(
        empty_lines=tuple(line for line in right.empty_lines if line.comment is not None)
    )


def _imports(module: cst.Module) -> Iterator[cst.Import | cst.ImportFrom]:
    """Every import statement whose names may be reported unused, at any depth."""
    for statement in _simple_statements(module.body):
        if isinstance(statement, cst.Import) or (
            isinstance(statement, cst.ImportFrom)
            and not isinstance(statement.names, cst.ImportStar)
            and statement.module is not None
            and not (isinstance(statement.module, cst.Name) and statement.module.value in _IGNORED_MODULES)
        ):
            yield statement


def _simple_statements(body: object) -> Iterator[cst.BaseSmallStatement]:
    for statement in body:  # type: ignore[attr-defined]
        if isinstance(statement, cst.SimpleStatementLine):
            yield from statement.body
        elif isinstance(statement, cst.BaseCompoundStatement):
            yield from _compound_statements(statement)


def _compound_statements(node: cst.CSTNode) -> Iterator[cst.BaseSmallStatement]:
    """Small statements inside a compound statement: its suites and its else/except/finally parts."""
    for field in ("body", "orelse", "handlers", "finalbody", "cases"):
        part = getattr(node, field, None)
        if part is None:
            continue
        for item in part if isinstance(part, list | tuple) else [part]:
            if isinstance(item, cst.SimpleStatementSuite):
                yield from item.body
            elif isinstance(item, cst.IndentedBlock):
                yield from _simple_statements(item.body)
            elif isinstance(item, STATEMENT_CONTAINERS):  # `elif` branches, except/else/finally parts
                yield from _compound_statements(item)


def _bound_names(alias: cst.ImportAlias) -> list[str]:
    """Names an import alias binds: the alias, else the dotted name and each of its prefixes."""
    if alias.asname is not None:
        return [cst.ensure_type(alias.asname.name, cst.Name).value]
    parts = alias.evaluated_name.split(".")
    return [".".join(parts[:count]) for count in range(len(parts), 0, -1)]


def referenced_names(module: cst.Module) -> set[str]:
    """Names the module reads (with every dotted prefix of `a.b.c`), exports or names in string annotations."""
    try:
        tree = ast.parse(module.code)
    except SyntaxError as error:
        raise ScaffoldError(f"a rule produced invalid Python (line {error.lineno}): {error.msg}") from error
    used: set[str] = set()
    for node in ast.walk(tree):  # one walk: names read, and string annotations
        if isinstance(node, ast.Name):
            if not isinstance(node.ctx, ast.Store):
                used.add(node.id)
        elif isinstance(node, ast.Attribute):
            dotted = _dotted(node)
            if dotted is not None:
                used.add(dotted)
        elif isinstance(node, _ANNOTATED):
            for annotation in _annotations(node):
                for inner in ast.walk(annotation):
                    if isinstance(inner, ast.Constant) and isinstance(inner.value, str):
                        _read_string_annotation(inner.value, used)
    used |= _exported(tree)
    return used


_ANNOTATED = (ast.arg, ast.AnnAssign, ast.FunctionDef, ast.AsyncFunctionDef, ast.Call)


def _read_names(tree: ast.AST, used: set[str]) -> None:
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Store):
            used.add(node.id)
        elif isinstance(node, ast.Attribute):
            dotted = _dotted(node)
            if dotted is not None:
                used.add(dotted)


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return None if base is None else f"{base}.{node.attr}"
    return None


def _annotations(node: ast.AST) -> Iterator[ast.AST]:
    """Annotation expressions attached to `node`, and the string arguments of `TypeVar(...)`."""
    if isinstance(node, ast.arg | ast.AnnAssign) and node.annotation is not None:
        yield node.annotation
    elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.returns is not None:
        yield node.returns
    elif (
        isinstance(node, ast.Call)
        and (_dotted(node.func) or "").rsplit(".", 1)[-1] in _STRING_ANNOTATION_CALLS
    ):
        yield from node.args


def _read_string_annotation(text: str, used: set[str]) -> None:
    try:
        expression = ast.parse(text.strip(), mode="eval")
    except SyntaxError:
        return
    _read_names(expression, used)


def _exported(tree: ast.Module) -> set[str]:
    """Strings listed in module-level `__all__` assignments."""
    found: set[str] = set()
    for statement in tree.body:
        if isinstance(statement, ast.Assign):
            targets = statement.targets
        elif isinstance(statement, ast.AugAssign | ast.AnnAssign):
            targets = [statement.target]
        else:
            continue
        if any(isinstance(target, ast.Name) and target.id == "__all__" for target in targets):
            value = statement.value
            if isinstance(value, ast.List | ast.Tuple | ast.Set):
                found |= {
                    element.value
                    for element in value.elts
                    if isinstance(element, ast.Constant) and isinstance(element.value, str)
                }
    return found
