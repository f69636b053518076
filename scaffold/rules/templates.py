"""The code rules insert, read from real Python files (templates/code/*.py) and filled with libcst's
`parse_template_module` / `parse_template_expression`.

A template file is an ordinary module that ruff checks like any other. Each top-level function in it is
one template, named for what it produces:

- its parameters are the template's placeholders, written `{name}` in its body (libcst's template syntax;
  there they read as one-element sets of the parameter, which keeps the file valid Python), and the names
  the inserted code expects to find where it lands (`self`, `config`, `trn_config`);
- its body, after the docstring, is what gets inserted: statements, or the expression of a lone `return`
  (a `return <names>` after statements says what they bind for the code after them, and is not inserted);
  a template with nothing but a docstring gives its own parameters (parameters a rule adds to a function);
- local names it binds stand for the target file's own where a rule passes `renames` (`attn_weights` ->
  the eager function's name for its scores): placeholders cannot stand where Python binds a name;
- the module's imports are the imports the inserted code needs: `fill` reports those its code reads, and
  the rule schedules them (`Rule.add_template_imports`).

Filled code follows the target file's style (`Blueprint.style`): `X | None` becomes `Optional[X]` in a file
written with `Optional`, and `nn.` becomes `torch.nn.` in a file that does not bind `nn`.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import libcst as cst
from libcst.helpers import parse_template_expression, parse_template_module

from ..blueprint import CodeStyle
from ..syntax import code, is_docstring, name_nodes

TEMPLATE_DIR = Path(__file__).resolve().parents[1] / "templates" / "code"
DEFINITIONS_DIR = TEMPLATE_DIR.parent / "definitions"


@dataclass(frozen=True)
class Needed:
    """An import the inserted code needs: `from <module> import <name>` (relative `level` dots)."""

    module: str
    name: str | None  # None for `import module`
    level: int = 0


@dataclass(frozen=True)
class Template:
    """One template: its code in libcst's template syntax, and the imports of its file by bound name."""

    text: str
    imports: Mapping[str, Needed]
    expression: bool  # the template is the expression of a lone `return`
    parameters: tuple[cst.Param, ...] = ()  # a template of parameters: the function's own


@functools.cache
def _file(name: str) -> dict[str, Template]:
    """The templates of `templates/code/<name>.py`, by function name."""
    module = cst.parse_module((TEMPLATE_DIR / f"{name}.py").read_text(encoding="utf-8"))
    imports = _imports(module)
    found: dict[str, Template] = {}
    for statement in module.body:
        if not isinstance(statement, cst.FunctionDef):
            continue
        body = list(statement.body.body)  # type: ignore[attr-defined]
        if body and is_docstring(body[0]):
            body = body[1:]
        if not body:
            found[statement.name.value] = Template("", imports, False, tuple(statement.params.params))
            continue
        returned = _returned(body[-1]) if body else None
        if len(body) == 1 and returned is not None:
            found[statement.name.value] = Template(code(returned), imports, expression=True)
        else:
            if returned is not None:  # `return <names>`: what the statements bind for the code after them
                body = body[:-1]
            found[statement.name.value] = Template(cst.Module(body=body).code, imports, expression=False)
    return found


def template(file: str, name: str) -> Template:
    """The template `name` of `templates/code/<file>.py` (KeyError when there is none)."""
    return _file(file)[name]


def fill_statements(
    file: str,
    name: str,
    style: CodeStyle,
    *,
    renames: Mapping[str, str | cst.BaseExpression] | None = None,
    attributes: Mapping[str, str] | None = None,
    **replacements: cst.BaseExpression | cst.BaseStatement | cst.BaseSuite,
) -> tuple[list[cst.BaseStatement], set[Needed]]:
    """The statements of a template with its placeholders filled, and the imports they need.

    `renames` maps local names of the template to the target's (`attn_weights` -> `scores`), or to the
    expression that stands where the template binds the name (`causal_mask` -> `masks["full"]`);
    `attributes` maps the attributes of `self` it reads (`q_proj` -> `query`). Blank lines and comments
    before the first statement stay attached to it.
    """
    found = template(file, name)
    # A module keeps leading comments in its header: parse after a placeholder statement instead.
    module = parse_template_module("pass\n" + found.text, **replacements)
    statements = [_adapted(statement, style, renames, attributes) for statement in module.body[1:]]
    return statements, _needed(statements, found.imports, style)


def fill_expression(
    file: str,
    name: str,
    style: CodeStyle,
    *,
    renames: Mapping[str, str] | None = None,
    **replacements: cst.BaseExpression,
) -> tuple[cst.BaseExpression, set[Needed]]:
    """The expression of a template with its placeholders filled, and the imports it needs (`renames` as
    for `fill_statements`)."""
    found = template(file, name)
    if not found.expression:
        raise ValueError(f"template {file}.{name} is not an expression")
    expression = _adapted(parse_template_expression(found.text, **replacements), style, renames, None)
    return expression, _needed([expression], found.imports, style)


def fill_parameters(file: str, name: str, style: CodeStyle) -> tuple[list[cst.Param], set[Needed]]:
    """The parameters of a template of parameters, in the target's style, and the imports they need."""
    found = template(file, name)
    params = [_adapted(param, style, None, None) for param in found.parameters]
    return params, _needed(params, found.imports, style)  # type: ignore[arg-type]


def _returned(statement: cst.BaseStatement) -> cst.BaseExpression | None:
    """The value of a `return <value>` statement line."""
    if isinstance(statement, cst.SimpleStatementLine) and len(statement.body) == 1:
        small = statement.body[0]
        if isinstance(small, cst.Return):
            return small.value
    return None


def _imports(module: cst.Module) -> dict[str, Needed]:
    """Bound name -> what the template file's import statement binds it to."""
    found: dict[str, Needed] = {}
    for statement in module.body:
        if not isinstance(statement, cst.SimpleStatementLine):
            continue
        for small in statement.body:
            if isinstance(small, cst.Import):
                for alias in small.names:
                    found[alias.evaluated_alias or alias.evaluated_name.split(".")[0]] = Needed(
                        alias.evaluated_name, None
                    )
            elif isinstance(small, cst.ImportFrom) and not isinstance(small.names, cst.ImportStar):
                module_name = code(small.module) if small.module is not None else ""
                for alias in small.names:
                    found[alias.evaluated_alias or alias.evaluated_name] = Needed(
                        module_name, alias.evaluated_name, len(small.relative)
                    )
    return found


def _needed(nodes: list[cst.CSTNode], imports: Mapping[str, Needed], style: CodeStyle) -> set[Needed]:
    """The imports of the template file that the filled code reads (after style adaptation)."""
    names = {name.value for node in nodes for name in name_nodes(node)}
    needed = {imports[name] for name in names if name in imports}
    if "Optional" in names:
        needed.add(Needed("typing", "Optional"))
    if "torch" in names:
        needed.add(Needed("torch", None))
    if style.nn_alias and "nn" in names:
        needed.add(Needed("torch", "nn"))
    return needed


def _adapted(
    node: cst.CSTNode,
    style: CodeStyle,
    renames: Mapping[str, str] | None,
    attributes: Mapping[str, str] | None,
) -> cst.CSTNode:
    """`node` in the target file's style, with template-local names and attributes of `self` renamed."""
    return node.visit(_Style(style, dict(renames or {}), dict(attributes or {})))


class _Style(cst.CSTTransformer):
    """`X | None` -> `Optional[X]` (when the file writes Optional), `nn.` -> `torch.nn.` (when the file
    binds no `nn`), and template-local names renamed."""

    def __init__(
        self, style: CodeStyle, renames: dict[str, str | cst.BaseExpression], attributes: dict[str, str]
    ) -> None:
        super().__init__()
        self.style = style
        self.renames = renames
        self.attributes = attributes
        self._annotation_depth = 0
        self._skip: set[cst.Name] = set()

    def visit_Annotation(self, node: cst.Annotation) -> None:
        self._annotation_depth += 1

    def leave_Annotation(self, original: cst.Annotation, updated: cst.Annotation) -> cst.Annotation:
        self._annotation_depth -= 1
        return updated

    def visit_Attribute(self, node: cst.Attribute) -> None:
        self._skip.add(node.attr)

    def visit_Arg(self, node: cst.Arg) -> None:
        if node.keyword is not None:
            self._skip.add(node.keyword)

    def leave_BinaryOperation(
        self, original: cst.BinaryOperation, updated: cst.BinaryOperation
    ) -> cst.BaseExpression:
        if (
            self.style.optional
            and self._annotation_depth
            and isinstance(updated.operator, cst.BitOr)
            and isinstance(updated.right, cst.Name)
            and updated.right.value == "None"
        ):
            return cst.Subscript(
                value=cst.Name("Optional"), slice=[cst.SubscriptElement(slice=cst.Index(value=updated.left))]
            )
        return updated

    def leave_Attribute(self, original: cst.Attribute, updated: cst.Attribute) -> cst.BaseExpression:
        if (
            isinstance(updated.value, cst.Name)
            and updated.value.value == "self"
            and updated.attr.value in self.attributes
        ):
            return updated.with_changes(attr=cst.Name(self.attributes[updated.attr.value]))
        if not self.style.nn_alias and isinstance(updated.value, cst.Name) and updated.value.value == "nn":
            return updated.with_changes(value=cst.Attribute(value=cst.Name("torch"), attr=cst.Name("nn")))
        return updated

    def leave_Name(self, original: cst.Name, updated: cst.Name) -> cst.BaseExpression:
        if original in self._skip:
            return updated
        renamed = self.renames.get(updated.value)
        if renamed is None:
            return updated
        return updated.with_changes(value=renamed) if isinstance(renamed, str) else renamed.deep_clone()


@functools.cache
def _definitions(file: str) -> tuple[list[cst.BaseStatement], dict[str, Needed]]:
    module = cst.parse_module((DEFINITIONS_DIR / f"{file}.py").read_text(encoding="utf-8"))
    body = [
        statement
        for index, statement in enumerate(module.body)
        if not (index == 0 and is_docstring(statement)) and not _is_import(statement)
    ]
    return body, _imports(module)


def definitions(file: str, style: CodeStyle) -> tuple[list[cst.BaseStatement], set[Needed]]:
    """The definitions of `templates/definitions/<file>.py` (classes, functions, statements: inserted
    whole, nothing to fill) in the target's style, and the imports they read."""
    body, imports = _definitions(file)
    statements = [_adapted(statement, style, None, None) for statement in body]
    return statements, _needed(statements, imports, style)  # type: ignore[arg-type]


def _is_import(statement: cst.BaseStatement) -> bool:
    return isinstance(statement, cst.SimpleStatementLine) and all(
        isinstance(small, cst.Import | cst.ImportFrom) for small in statement.body
    )


def all_template_names() -> dict[str, list[str]]:
    """Every template file and its templates (for the tests that check each one parses and fills)."""
    return {path.stem: list(_file(path.stem)) for path in sorted(TEMPLATE_DIR.glob("*.py"))}


__all__ = [
    "Needed",
    "Template",
    "all_template_names",
    "definitions",
    "fill_expression",
    "fill_statements",
    "template",
]
