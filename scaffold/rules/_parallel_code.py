"""Code shapes shared by the parallel-layer rules (NXS020-NXS024): statement surgery inside a class body,
the keyword arguments every parallel layer gets, and the one module-level init helper.

Not a rule module (the leading underscore keeps it out of rule discovery). Generated text is written at
top-level indentation and parsed with libcst; libcst re-indents it wherever it is inserted.

Conventions shared with the rules before ours: a constructor that builds parallel layers has a
`trn_config` parameter (NXS004) and stores it as `self.trn_config`; the init method of every parallel layer
is `partial(_init_normal, config.initializer_range)` with `_init_normal` emitted once per file (NXS010;
added here only when absent, so a rule run on its own still produces a complete file).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import libcst as cst

from ..errors import ScaffoldError
from ._context import RuleContext
from ._edits import assigned_self_attribute, self_attribute
from ._edits import code as code  # re-exported: the rules call these through this module
from ._edits import find_method as method
from ._edits import with_body as with_body
from ._imports import schedule_import

TRN_CONFIG = "trn_config"
INIT_HELPER = "_init_normal"
INIT_HELPER_CODE = f'''def {INIT_HELPER}(std: float, tensor: torch.Tensor) -> torch.Tensor:
    """Fill `tensor` from N(0, std^2): the init method of every parallel layer (std = initializer_range)."""
    return torch.nn.init.normal_(tensor, mean=0.0, std=std)
'''

NXD_LAYERS = "neuronx_distributed.parallel_layers.layers"
NXD_STATE = "neuronx_distributed.parallel_layers.parallel_state"
NXD_UTILS = "neuronx_distributed.parallel_layers.utils"
NXD_MAPPINGS = "neuronx_distributed.parallel_layers.mappings"
NXD_QKV = "neuronx_distributed.modules.qkv_linear"
NXD_FLASH = "neuronx_distributed.kernels.flash_attn"
HOST_TRANSFORMATIONS = "transformations_utils"  # relative to the generated package's parent (`..`)


def statements(text: str) -> list[cst.BaseStatement]:
    """Parse top-level statements; blank lines and comments before the first one stay attached to it."""
    # A module keeps leading comments in its header: parse after a placeholder statement instead.
    parsed = list(cst.parse_module("pass\n" + text).body[1:])
    return [_blank_lines_unindented(statement) for statement in parsed]


def _blank_lines_unindented(node: cst.BaseStatement) -> cst.BaseStatement:
    class _Unindent(cst.CSTTransformer):
        def leave_EmptyLine(self, original: cst.EmptyLine, updated: cst.EmptyLine) -> cst.EmptyLine:
            return updated.with_changes(indent=False) if updated.comment is None else updated

    return node.visit(_Unindent())


def operand(text: str) -> str:
    """`text` ready to be an operand of `*` or `+`: parenthesized unless it is atomic."""
    expression = cst.parse_expression(text)
    atomic = cst.Name | cst.Attribute | cst.Call | cst.Subscript | cst.Integer | cst.Float
    return text if isinstance(expression, atomic) else f"({text})"


# --- classes and methods ------------------------------------------------------------------------------


def required_method(cls: cst.ClassDef, name: str, code_: str) -> cst.FunctionDef:
    """`method`, or a ScaffoldError from rule `code_` when the class does not define it."""
    found = method(cls, name)
    if found is None:
        raise ScaffoldError(f"{code_}: class {cls.name.value} has no {name}() to rewrite")
    return found


def with_method(cls: cst.ClassDef, function: cst.FunctionDef) -> cst.ClassDef:
    """`cls` with its method of the same name replaced by `function`."""
    body = [
        function if isinstance(s, cst.FunctionDef) and s.name.value == function.name.value else s
        for s in cls.body.body
    ]
    return cls.with_changes(body=cls.body.with_changes(body=body))


def with_base(cls: cst.ClassDef, base: str) -> cst.ClassDef:
    """`cls` with `base` appended to its bases (unchanged when already there)."""
    if any(code(arg.value) == base for arg in cls.bases):
        return cls
    bases = list(cls.bases)
    if bases:
        bases[-1] = bases[-1].with_changes(comma=cst.Comma(whitespace_after=cst.SimpleWhitespace(" ")))
    bases.append(cst.Arg(value=cst.parse_expression(base)))
    return cls.with_changes(bases=bases, lpar=cst.LeftParen(), rpar=cst.RightParen())


def config_parameter(init: cst.FunctionDef) -> str:
    """Name of the constructor's config parameter: `config` when present, else the first after `self`."""
    names = [param.name.value for param in init.params.params]
    if "config" in names:
        return "config"
    if len(names) < 2:
        raise ScaffoldError(f"{init.name.value}() takes no config parameter to build parallel layers from")
    return names[1]


def first_parameter(function: cst.FunctionDef) -> str:
    """Name of the first parameter after `self` (the forward's input)."""
    names = [param.name.value for param in function.params.params]
    if len(names) < 2:
        raise ScaffoldError(f"{function.name.value}() takes no input")
    return names[1]


def assigned_value(statement: cst.CSTNode) -> cst.BaseExpression | None:
    """The right-hand side of a one-target simple assignment."""
    if isinstance(statement, cst.SimpleStatementLine) and len(statement.body) == 1:
        small = statement.body[0]
        if isinstance(small, cst.Assign) and len(small.targets) == 1:
            return small.value
        if isinstance(small, cst.AnnAssign):
            return small.value
    return None


def assigned_name(statement: cst.CSTNode) -> str | None:
    """`name` when `statement` is the simple statement `name = ...` (one plain-name target)."""
    if isinstance(statement, cst.SimpleStatementLine) and len(statement.body) == 1:
        small = statement.body[0]
        target = None
        if isinstance(small, cst.Assign) and len(small.targets) == 1:
            target = small.targets[0].target
        elif isinstance(small, cst.AnnAssign):
            target = small.target
        if isinstance(target, cst.Name):
            return target.value
    return None


def index_of_assignment(body: Sequence[cst.BaseStatement], attribute: str) -> int | None:
    """Index of the top-level statement `self.<attribute> = ...` in `body`."""
    for index, statement in enumerate(body):
        if assigned_self_attribute(statement) == attribute:
            return index
    return None


def walk(node: cst.CSTNode) -> Iterator[cst.CSTNode]:
    """Every node under `node`, `node` included, in source order."""
    found: list[cst.CSTNode] = []

    class _Collect(cst.CSTVisitor):
        def on_visit(self, visited: cst.CSTNode) -> bool:
            found.append(visited)
            return True

    node.visit(_Collect())
    return iter(found)


def self_calls(node: cst.CSTNode, attribute: str) -> list[cst.Call]:
    """Calls `self.<attribute>(...)` under `node`."""
    return [n for n in walk(node) if isinstance(n, cst.Call) and self_attribute(n.func) == attribute]


def reads_self_attribute(node: cst.CSTNode, attribute: str) -> bool:
    """Whether `self.<attribute>` appears under `node`."""
    return any(self_attribute(n) == attribute for n in walk(node))


def names_in(node: cst.CSTNode) -> set[str]:
    """Every plain name under `node`."""
    return {n.value for n in walk(node) if isinstance(n, cst.Name)}


def fresh_name(preferred: str, taken: set[str]) -> str:
    """`preferred`, or `preferred_<n>` when it is taken."""
    name, counter = preferred, 1
    while name in taken:
        counter += 1
        name = f"{preferred}_{counter}"
    return name


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


# --- parallel layers ----------------------------------------------------------------------------------


def layer_keywords(config: str, *, sequence_dimension: bool = True) -> str:
    """Keyword arguments every parallel layer takes from the configs, one per line (trailing commas)."""
    lines = [
        f"init_method=partial({INIT_HELPER}, {config}.initializer_range),",
        f"sequence_parallel_enabled={TRN_CONFIG}.sequence_parallel_enabled,",
    ]
    if sequence_dimension:
        lines.append("sequence_dimension=0,")
    lines.append(f"dtype={config}.dtype,")
    return "\n".join(lines)


def layer_call(
    constructor: str, arguments: Sequence[str], config: str, *, sequence_dimension: bool = True
) -> str:
    """`constructor(` one argument per line, then the shared keywords `)`, at top-level indentation."""
    lines = [
        *(f"{argument}," for argument in arguments),
        layer_keywords(config, sequence_dimension=sequence_dimension),
    ]
    body = "\n".join(f"    {line}" for text in lines for line in text.split("\n"))
    return f"{constructor}(\n{body}\n)"


def schedule_layer_imports(context: RuleContext, *names: tuple[str, str]) -> None:
    """Imports for generated layer code: `(module, name)` pairs plus `functools.partial`."""
    schedule_import(context, "functools", "partial")
    for module, name in names:
        schedule_import(context, module, name)


def schedule_host_import(context: RuleContext, module: str, name: str) -> None:
    """`from ..<module> import <name>` (the training host, by relative import)."""
    schedule_import(context, module, name, relative=2)


def ensure_init_helper(module: cst.Module) -> cst.Module:
    """`module` with the `_init_normal` helper, added after the imports only when no definition has its name."""
    for statement in module.body:
        if isinstance(statement, cst.FunctionDef) and statement.name.value == INIT_HELPER:
            return module
    body = list(module.body)
    position = 0
    for index, statement in enumerate(body):
        if isinstance(statement, cst.SimpleStatementLine) and all(
            isinstance(small, cst.Import | cst.ImportFrom) for small in statement.body
        ):
            position = index + 1
        elif isinstance(statement, cst.ClassDef | cst.FunctionDef):
            break
    helper = cst.parse_statement(INIT_HELPER_CODE)
    helper = helper.with_changes(leading_lines=[cst.EmptyLine(), cst.EmptyLine()])
    body.insert(position, helper)
    return module.with_changes(body=body)
