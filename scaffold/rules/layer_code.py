"""Parallel layers as the layer rules write them (NXS010, NXS013, NXS020, NXS021, NXS024), from the
templates of templates/code/parallel_layers.py.

Every parallel layer takes `init_method=init_method`: the constructor binds `init_method =
partial(_init_normal, config.initializer_range)` once, before its first parallel layer (`with_init_method`),
and the file defines `_init_normal` once, after its imports (`with_init_helper`), as optimum-neuron's
hand-written models do. A constructor that builds parallel layers takes `trn_config` (NXS004).
"""

from __future__ import annotations

import libcst as cst

from ..syntax import assigned_name, assigned_value, code, names_in, with_definition_spacing
from . import templates
from .base import Rule

LAYERS = "parallel_layers"  # the template file
INIT_HELPER = "_init_normal"
INIT_METHOD = "init_method"
TRN_CONFIG = "trn_config"


def layer(rule: Rule, name: str, config: str, **placeholders: cst.BaseExpression) -> cst.Call:
    """The call built by the template `name` of parallel_layers.py, its imports scheduled by `rule`."""
    call, needed = templates.fill_expression(
        LAYERS, name, rule.blueprint.style, renames={"config": config}, **placeholders
    )
    rule.add_template_imports(needed)
    assert isinstance(call, cst.Call)
    return call


def with_source_arguments(call: cst.Call, source: cst.Call, *extra: cst.Arg) -> cst.Call:
    """`call` with the source call's arguments (and `extra` ones) first: one per line, trailing comma."""
    args = [*source.args, *extra, *call.args]
    space = cst.SimpleWhitespace(" ")
    args = [arg.with_changes(comma=cst.Comma(whitespace_after=space)) for arg in args[:-1]] + [
        args[-1].with_changes(comma=cst.Comma())
    ]
    return call.with_changes(args=args, whitespace_before_args=cst.SimpleWhitespace(""))


def with_init_method(rule: Rule, init: cst.FunctionDef, config: str) -> cst.FunctionDef:
    """`init` binding `init_method` once, right before the first top-level statement that reads it.

    An earlier binding by a rule (the same `partial(_init_normal, ...)`) moves to that place.
    """
    value, needed = templates.fill_expression(
        LAYERS,
        INIT_METHOD,
        rule.blueprint.style,
        init_std=cst.Attribute(cst.Name(config), cst.Name(rule.blueprint.init_std)),
    )
    rule.add_template_imports(needed)
    body = list(init.body.body)
    existing = next((i for i, s in enumerate(body) if _binds_init_method(s)), None)
    first = next((i for i, s in enumerate(body) if i != existing and INIT_METHOD in names_in(s)), None)
    if first is None or (existing is not None and existing < first):
        return init
    if existing is not None:  # bound after a layer a later rule added before it: move it up
        moved = body.pop(existing)
        if existing < len(body):
            body[existing] = body[existing].with_changes(
                leading_lines=[*moved.leading_lines, *body[existing].leading_lines]
            )
        first -= existing < first
    # The binding takes the blank lines before the statement; its comments stay with it.
    lines = list(body[first].leading_lines)
    blanks = next((index for index, line in enumerate(lines) if line.comment is not None), len(lines))
    binding = cst.SimpleStatementLine(
        body=[cst.Assign(targets=[cst.AssignTarget(target=cst.Name(INIT_METHOD))], value=value)],
        leading_lines=lines[:blanks],
    )
    body[first] = body[first].with_changes(leading_lines=lines[blanks:])
    body.insert(first, binding)
    return init.with_changes(body=init.body.with_changes(body=body))


def _binds_init_method(statement: cst.BaseStatement) -> bool:
    return assigned_name(statement) == INIT_METHOD and _is_init_method(assigned_value(statement))


def _is_init_method(value: cst.BaseExpression | None) -> bool:
    return value is not None and code(value).startswith(f"partial({INIT_HELPER},")


def with_init_helper(rule: Rule, module: cst.Module) -> cst.Module:
    """`module` with the `_init_normal` helper after its imports, when no definition has its name yet."""
    if any(isinstance(s, cst.FunctionDef) and s.name.value == INIT_HELPER for s in module.body):
        return module
    (helper,), needed = templates.fill_statements(LAYERS, "init_helper", rule.blueprint.style)
    rule.add_template_imports(needed)
    body = list(module.body)
    position = 0
    for index, statement in enumerate(body):
        if isinstance(statement, cst.SimpleStatementLine) and all(
            isinstance(small, cst.Import | cst.ImportFrom) for small in statement.body
        ):
            position = index + 1
        elif isinstance(statement, cst.ClassDef | cst.FunctionDef):
            break
    body.insert(position, with_definition_spacing(helper))
    return module.with_changes(body=body)
