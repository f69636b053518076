"""What the names of a module refer to through its imports: `nn.Linear` -> `torch.nn.Linear`.

The analysis only asks what an expression is *as an import* (is this call `torch.nn.Linear`, this base
`transformers.modeling_utils.PreTrainedModel`?). libcst's `QualifiedNameProvider` answers that with a full
scope analysis of the module, which costs more than the rest of the analysis. Here a table of the
module's imports answers it directly when the module keeps to what makes the table exact, which
transformers' modeling files do:

- every name an import binds is bound nowhere else (no other import, assignment, parameter, definition,
  `global`, loop or `except` target, in any scope), so every use of it means that import;
- no module-level statement reads such a name before the import that binds it;
- no `from m import *` and no dotted `import a.b` without `as` (libcst tracks those through dotted
  assignments).

Otherwise (`ImportTable.of` returns None) the caller falls back to libcst's scope analysis. Either way
the answer, for an expression, is the set of libcst's qualified names whose source is an import, as
libcst spells them (relative ones with their leading dots). The names after a dot, keyword names and the
parts of import statements are not expressions: libcst gives them no names, the table does not know
them apart. tests/scaffold/test_imported_names.py checks the table and the fallback against libcst.
"""

from __future__ import annotations

import ast
from collections import Counter
from collections.abc import Iterator

import libcst as cst

_MODULE_SCOPE_BLOCKS = (ast.If, ast.Try, ast.TryStar, ast.With, ast.For, ast.While)


class ImportTable:
    """Bound name -> the dotted name it imports (`F` -> `torch.nn.functional`, `x` -> `..utils.x`)."""

    def __init__(self, bound: dict[str, str]) -> None:
        self.bound = bound

    @classmethod
    def of(cls, tree: ast.Module) -> ImportTable | None:
        """The table of `tree` (Python's parse of the module), or None when it would not be exact."""
        bound: dict[str, str] = {}
        if not _scan(tree.body, bound, set()):
            return None
        imports = sum(isinstance(node, ast.Import | ast.ImportFrom) for node in ast.walk(tree))
        if imports != len(_module_scope_imports(tree.body)):  # an import inside a function or class
            return None
        counts = Counter(_bindings(tree))
        if any(counts[name] != 1 for name in bound):
            return None
        return cls(bound)

    def qualified_names(self, node: cst.CSTNode) -> frozenset[str]:
        """The imported names `node` refers to (empty when its head is not an import)."""
        full = full_name(node)
        if full is None:
            return frozenset()
        head, dot, rest = full.partition(".")
        target = self.bound.get(head)
        if target is None:
            return frozenset()
        return frozenset({f"{target}.{rest}" if dot else target})


def full_name(node: cst.CSTNode) -> str | None:
    """The dotted name of a Name/Attribute chain, looking through calls and subscripts (`a(x).b[0]` -> `a.b`)."""
    if isinstance(node, cst.Name):
        return node.value
    if isinstance(node, cst.Attribute):
        return f"{full_name(node.value)}.{node.attr.value}"  # `None.x` when the base has no name, as libcst
    if isinstance(node, cst.Call):
        return full_name(node.func)
    if isinstance(node, cst.Subscript):
        return full_name(node.value)
    if isinstance(node, cst.FunctionDef | cst.ClassDef):
        return node.name.value
    if isinstance(node, cst.Decorator):
        return full_name(node.decorator)
    return None


def _scan(body: list[ast.stmt], bound: dict[str, str], loaded: set[str]) -> bool:
    """Record the module-scope imports of `body` in order; False when a name is read before its import,
    imported twice, or imported in a way the table cannot follow."""
    for statement in body:
        if isinstance(statement, ast.Import | ast.ImportFrom):
            for name, target in _import_bindings(statement):
                if target is None or name in loaded or name in bound:
                    return False
                bound[name] = target
        elif isinstance(statement, _MODULE_SCOPE_BLOCKS) and _module_scope_imports([statement]):
            for field, value in ast.iter_fields(statement):  # the block's own expressions run first
                if field not in _BLOCK_BODIES:
                    loaded |= _reads(value)
            for handler in getattr(statement, "handlers", []):
                loaded |= _reads(handler.type)
            for field in _BLOCK_BODIES:
                parts = getattr(statement, field, [])
                bodies = [handler.body for handler in parts] if field == "handlers" else [parts]
                if not all(_scan(part, bound, loaded) for part in bodies):
                    return False
        else:
            loaded |= _reads(statement)
    return True


_BLOCK_BODIES = ("body", "handlers", "orelse", "finalbody")


def _reads(value: object) -> set[str]:
    """Every name appearing under `value` (an AST node, a list of them, or anything else)."""
    nodes = value if isinstance(value, list) else [value]
    return {
        node.id
        for item in nodes
        if isinstance(item, ast.AST)
        for node in ast.walk(item)
        if isinstance(node, ast.Name)
    }


def _module_scope_imports(body: list[ast.stmt]) -> list[ast.stmt]:
    """The import statements that run in module scope (also inside `if`/`try`/`with`/loops)."""
    found: list[ast.stmt] = []
    for statement in body:
        if isinstance(statement, ast.Import | ast.ImportFrom):
            found.append(statement)
        elif isinstance(statement, _MODULE_SCOPE_BLOCKS):
            for field in _BLOCK_BODIES:
                parts = getattr(statement, field, [])
                for part in [handler.body for handler in parts] if field == "handlers" else [parts]:
                    found += _module_scope_imports(part)
    return found


def _import_bindings(statement: ast.Import | ast.ImportFrom) -> Iterator[tuple[str, str | None]]:
    """(bound name, dotted target as libcst spells it); target None where the table cannot be exact."""
    if isinstance(statement, ast.Import):
        for alias in statement.names:
            if alias.asname is None and "." in alias.name:
                yield alias.name.split(".")[0], None
            else:
                yield alias.asname or alias.name, alias.name
        return
    module = "." * statement.level + (statement.module or "")
    for alias in statement.names:
        if alias.name == "*":
            yield "*", None
        elif module.endswith("."):
            yield alias.asname or alias.name, f"{module}{alias.name}"
        else:
            yield alias.asname or alias.name, f"{module}.{alias.name}"


def _bindings(tree: ast.Module) -> Iterator[str]:
    """Every name bound anywhere in the module, once per binding."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            yield node.id
        elif isinstance(node, ast.arg):
            yield node.arg
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            yield node.name
        elif isinstance(node, ast.alias):
            yield node.asname or node.name.split(".")[0]
        elif isinstance(node, ast.ExceptHandler | ast.MatchAs | ast.MatchStar) and node.name:
            yield node.name
        elif isinstance(node, ast.MatchMapping) and node.rest:
            yield node.rest
        elif isinstance(node, ast.Global | ast.Nonlocal):
            yield from node.names
