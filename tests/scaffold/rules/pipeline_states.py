"""The real pipeline, run rule by rule on an installed model file, cached per model type.

`module_before(model_type, code)` is the module just before rule `code` runs in the full pipeline (every
rule before it in `RULES` applied, in order); the examples of every rule are checked against it.
"""

from __future__ import annotations

import libcst as cst

from scaffold.analysis.source_fusions import read_module
from scaffold.emit import format_python
from scaffold.pipeline import apply_rules
from scaffold.rules import RULES
from scaffold.rules.base import definition_source

from ..conftest import blueprint_of, located

IMPORTS_SCOPE = "<imports>"  # pseudo scope of an example: the module's top-level import statements


_STATES: dict[str, list[cst.Module]] = {}


def _state(model_type: str, index: int) -> cst.Module:
    """The module after the first `index` rules of RULES (0: the source as analysis reads it, fused
    projections split), computed once, lazily:
    a rule's run costs seconds, so nothing past the last rule a test asks for is computed."""
    states = _STATES.setdefault(model_type, [read_module(located(model_type))[0]])
    blueprint = blueprint_of(model_type)
    while len(states) <= index:
        states.append(apply_rules(blueprint, states[-1], rules=[RULES[len(states) - 1]]))
    return states[index]


def _index(code: str) -> int:
    return [rule.CODE for rule in RULES].index(code)


def module_before(model_type: str, code: str) -> cst.Module:
    """The module just before the rule `code` runs in the full pipeline."""
    return _state(model_type, _index(code))


def module_after(model_type: str, code: str) -> cst.Module:
    """The module just after the rule `code` ran in the full pipeline."""
    return _state(model_type, _index(code) + 1)


def example_source(module: cst.Module, scope: str) -> str:
    """`definition_source`, plus the pseudo scope `<imports>` for the top-level import statements, as ruff
    formats them (rules lay new code out for ruff, which writes it as the generated file shows it)."""
    if scope != IMPORTS_SCOPE:
        return format_python(definition_source(module, scope))
    lines = [
        module.code_for_node(statement).strip("\n")
        for statement in module.body
        if isinstance(statement, cst.SimpleStatementLine)
        and all(isinstance(small, cst.Import | cst.ImportFrom) for small in statement.body)
    ]
    return format_python("\n".join(lines) + "\n")
