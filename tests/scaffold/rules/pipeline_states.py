"""The real pipeline, run rule by rule on an installed model file, cached per model type.

`module_before(model_type, code)` is the module just before rule `code` runs in the full pipeline (every
rule with a smaller code applied, in order); the examples of every rule are checked against it.
"""

from __future__ import annotations

import functools

import libcst as cst

from scaffold.pipeline import apply_rules
from scaffold.rules import RULES
from scaffold.rules.base import definition_source

from ..conftest import blueprint_of, located

IMPORTS_SCOPE = "<imports>"  # pseudo scope of an example: the module's top-level import statements


@functools.cache
def _states(model_type: str) -> tuple[cst.Module, ...]:
    """The parsed source, then the module after each rule of RULES (index i: after RULES[i - 1])."""
    blueprint = blueprint_of(model_type)
    module = cst.parse_module(located(model_type).read_text())
    states = [module]
    for rule in RULES:
        module = apply_rules(blueprint, module, rules=[rule])
        states.append(module)
    return tuple(states)


def module_before(model_type: str, code: str) -> cst.Module:
    """The module just before the rule `code` runs in the full pipeline."""
    index = [rule.CODE for rule in RULES].index(code)
    return _states(model_type)[index]


def module_after(model_type: str, code: str) -> cst.Module:
    """The module just after the rule `code` ran in the full pipeline."""
    index = [rule.CODE for rule in RULES].index(code)
    return _states(model_type)[index + 1]


def final_module(model_type: str) -> cst.Module:
    """The module after every rule."""
    return _states(model_type)[-1]


def example_source(module: cst.Module, scope: str) -> str:
    """`definition_source`, plus the pseudo scope `<imports>` for the top-level import statements."""
    if scope != IMPORTS_SCOPE:
        return definition_source(module, scope)
    lines = [
        module.code_for_node(statement).strip("\n")
        for statement in module.body
        if isinstance(statement, cst.SimpleStatementLine)
        and all(isinstance(small, cst.Import | cst.ImportFrom) for small in statement.body)
    ]
    return "\n".join(lines) + "\n"
