"""NXS025 learnable-activation-gradients: an activation with parameters on a parallel MLP's intermediate
sums their gradients over TP.

An activation built from `ACT2FN` whose class holds parameters (xIELU's `alpha_p`, `alpha_n`), applied
between a parallel MLP's column- and row-parallel projections, sees only the rank's columns of the
intermediate: its parameters stay replicated (every rank holds them whole, checkpoints load them as they
are), but each rank computes only its columns' share of their gradient. optimum-neuron's optimizer sums
over TP only the parameters marked `sequence_parallel_enabled`, and only under SP, which would be wrong
here (the intermediate holds the full sequence under SP too), so a hook placed right after the activation
is built sums each gradient over the TP group, with or without SP. Activations with parameters anywhere
else stay refused (R011). The inserted code comes from templates/code/learnable_activations.py.
"""

from __future__ import annotations

import libcst as cst

from ..syntax import assigned_self_attribute, find_method, with_method, with_statements_after
from . import templates
from .base import Rule, stored_example, with_todo

TEMPLATES = "learnable_activations"


class LearnableActivationGradients(Rule):
    CODE = "NXS025"
    NAME = "learnable-activation-gradients"
    SUMMARY = "an activation with parameters on a parallel MLP's intermediate sums their gradients over TP"
    ADVICE = (
        "Activations with parameters outside a parallel MLP's intermediate are refused (R011). Disabling the "
        "rule lets the replicas of those parameters drift apart from the first optimizer step."
    )
    REQUIRES = ("NXS004",)
    EXAMPLES = (stored_example(CODE, "apertus", "ApertusMLP"),)

    def visit_FunctionDef(self, node: cst.FunctionDef) -> bool:
        return False  # the rule rewrites whole classes: nothing to visit inside a method

    def leave_ClassDef(self, original_node: cst.ClassDef, updated_node: cst.ClassDef) -> cst.ClassDef:
        name = updated_node.name.value
        attributes = [attribute for owner, attribute in self.blueprint.learnable_activations if owner == name]
        if not attributes:
            return updated_node
        refusal = self.refusal_for(name)
        if refusal is not None:
            return with_todo(updated_node, refusal)
        init = find_method(updated_node, "__init__")
        assert init is not None, "checked in analysis (R017)"
        style = self.blueprint.style

        def hooks(statement: cst.BaseStatement) -> list[cst.BaseStatement]:
            attribute = assigned_self_attribute(statement)
            if attribute not in attributes:
                return []
            activation = cst.Attribute(value=cst.Name("self"), attr=cst.Name(attribute))
            statements, needed = templates.fill_statements(
                TEMPLATES, "gradients_summed", style, activation=activation
            )
            self.add_template_imports(needed)
            return statements

        result = with_statements_after(init, hooks)
        return with_method(updated_node, result)
