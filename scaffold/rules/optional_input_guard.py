"""NXS028 optional-input-guard: a config flag the model was read without becomes a construction-time error.

Some base models build an extra input for their layers only under a config flag (Falcon's ALiBi bias under
`config.alibi`), and the attention branches on it. Analysis reads such a model with the flag off
(`scaffold.analysis.optional_inputs`: the block that builds the input goes, and the layers keep the branch
taken for `None`), so the generated model computes the flag-off model only. This rule makes the base
model's `__init__` raise `NotImplementedError` when the flag is on, right after `super().__init__`, so that
no configuration is trained as another. The inserted code comes from templates/code/optional_input_guard.py.
"""

from __future__ import annotations

import libcst as cst

from ..blueprint import InputGuard
from ..syntax import code, find_method, with_method
from . import templates
from .base import Rule, stored_example, with_todo

TEMPLATES = "optional_input_guard"


class OptionalInputGuard(Rule):
    CODE = "NXS028"
    NAME = "optional-input-guard"
    SUMMARY = (
        "config flags under which the base model builds an input the layers branch on raise at construction"
    )
    ADVICE = (
        "The layers' branch for that input (e.g. an ALiBi bias added to the scores) is not converted: train "
        "with the flag off, or write that branch by hand in the generated model and drop the check."
    )
    EXAMPLES = (stored_example(CODE, "falcon", "FalconModel"),)

    def visit_FunctionDef(self, node: cst.FunctionDef) -> bool:
        return False  # the rule rewrites the constructor of one class in leave_ClassDef

    def leave_ClassDef(self, original_node: cst.ClassDef, updated_node: cst.ClassDef) -> cst.ClassDef:
        name = updated_node.name.value
        guards = [guard for guard in self.blueprint.input_guards if guard.owner == name]
        if not guards:
            return updated_node
        refusal = self.refusal_for(name)
        if refusal is not None:
            return with_todo(updated_node, refusal)
        init = find_method(updated_node, "__init__")
        assert init is not None, "the base model's forward reads flags its constructor copies"
        return with_method(updated_node, self._guarded(init, guards))

    def _guarded(self, init: cst.FunctionDef, guards: list[InputGuard]) -> cst.FunctionDef:
        statements: list[cst.BaseStatement] = []
        for guard in guards:
            message = (
                f"{guard.condition} builds `{guard.name}` for the layers (read without it at "
                f"{guard.location.file}:{guard.location.line}): the generated model does not implement it; "
                "train with it off"
            )
            filled, needed = templates.fill_statements(
                TEMPLATES,
                "refuse_optional_input",
                self.blueprint.style,
                condition=cst.parse_expression(guard.condition),
                message=cst.SimpleString(repr(message)),
            )
            self.add_template_imports(needed)
            statements.extend(filled)
        body = list(init.body.body)
        at = next((i + 1 for i, s in enumerate(body) if "super().__init__" in code(s)), 0)
        return init.with_changes(body=init.body.with_changes(body=[*body[:at], *statements, *body[at:]]))
