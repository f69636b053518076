"""NXS014 mask-option-guard: config switches that change the attention mask become construction-time errors.

transformers' mask builders take `or_mask_function` / `and_mask_function`, which some models set when a
config flag asks for it (a bidirectional attention, a bidirectional window). optimum-neuron's training
masks are causal: the host's `create_causal_mask` refuses those options and, with
`trn_config.recompute_causal_mask` (the default), no mask is built at all, so a kept branch would train a
causal model whatever the flag says. The rule removes each such branch of the base model's forward
(`if self.config.<flag>: mask_kwargs["or_mask_function"] = ...`) and makes the base model's `__init__`
raise `NotImplementedError` when its condition holds, after `super().__init__` set `self.config`. Module
functions only those branches used go with them. A mask option set any other way is refused in analysis
(R021). The inserted code comes from templates/code/mask_option_guard.py.
"""

from __future__ import annotations

import libcst as cst

from ..analysis.mask_options import MaskOptionBranch, describe, guardable_branch
from ..syntax import find_method, names_in, with_method
from . import templates
from .base import Rule, stored_example, with_todo

TEMPLATES = "mask_option_guard"


class MaskOptionGuard(Rule):
    CODE = "NXS014"
    NAME = "mask-option-guard"
    SUMMARY = "config switches that set or_mask_function/and_mask_function raise at construction"
    ADVICE = (
        "A model that needs a non-causal mask in training needs a host mask that builds it, by hand. Disable "
        "the rule to keep the branch (the host then refuses the option, or ignores it with "
        "recompute_causal_mask)."
    )
    EXAMPLES = (stored_example(CODE, "gemma3_text", "Gemma3TextModel"),)

    def visit_Module(self, node: cst.Module) -> None:
        self._dropped_reads: set[str] = set()

    def visit_FunctionDef(self, node: cst.FunctionDef) -> bool:
        return False  # the rule rewrites whole methods of one class in leave_ClassDef

    def leave_ClassDef(self, original_node: cst.ClassDef, updated_node: cst.ClassDef) -> cst.ClassDef:
        name = updated_node.name.value
        if name != self.blueprint.base_model_class:
            return updated_node
        init, forward = find_method(updated_node, "__init__"), find_method(updated_node, "forward")
        if init is None or forward is None:
            return updated_node  # refused in analysis (R017)
        refusal = self.refusal_for(name)
        if refusal is not None:
            return with_todo(updated_node, refusal)
        remover = _RemoveBranches()
        forward = forward.visit(remover)  # type: ignore[assignment]
        if not remover.branches:
            return updated_node
        for branch in remover.branches:
            self._dropped_reads |= names_in(branch.branch.body)
        cls = with_method(updated_node, forward)
        return with_method(cls, self._guarded(init, remover.branches))

    def leave_Module(self, original_node: cst.Module, updated_node: cst.Module) -> cst.Module:
        if not self._dropped_reads:
            return updated_node
        still_read = names_in(
            updated_node.with_changes(body=[s for s in updated_node.body if not _defines(s)])
        )
        still_read |= {
            name
            for statement in updated_node.body
            if _defines(statement)
            for name in names_in(statement.body)  # type: ignore[attr-defined]
        }
        orphaned = self._dropped_reads - still_read
        body = [s for s in updated_node.body if not (_defines(s) and s.name.value in orphaned)]  # type: ignore[attr-defined]
        return updated_node.with_changes(body=body)

    def _guarded(self, init: cst.FunctionDef, branches: list[MaskOptionBranch]) -> cst.FunctionDef:
        guards: list[cst.BaseStatement] = []
        for branch in branches:
            options = " and ".join(branch.options)
            message = (
                f"{describe(branch.test)} sets {options}: the training masks are causal; train with it off"
            )
            statements, needed = templates.fill_statements(
                TEMPLATES,
                "refuse_mask_option",
                self.blueprint.style,
                condition=branch.test,
                message=cst.SimpleString(repr(message)),
            )
            self.add_template_imports(needed)
            guards.extend(statements)
        body = list(init.body.body)
        at = next((i + 1 for i, s in enumerate(body) if _calls_super_init(s)), 0)
        return init.with_changes(body=init.body.with_changes(body=[*body[:at], *guards, *body[at:]]))


class _RemoveBranches(cst.CSTTransformer):
    """Removes every guardable mask-option branch, remembering them in source order."""

    def __init__(self) -> None:
        self.branches: list[MaskOptionBranch] = []

    def leave_If(self, original_node: cst.If, updated_node: cst.If) -> cst.If | cst.RemovalSentinel:
        branch = guardable_branch(original_node)
        if branch is None:
            return updated_node
        self.branches.append(branch)
        return cst.RemoveFromParent()


def _defines(statement: cst.BaseStatement) -> bool:
    return isinstance(statement, cst.FunctionDef)


def _calls_super_init(statement: cst.BaseStatement) -> bool:
    return isinstance(statement, cst.SimpleStatementLine) and any(
        "super().__init__" in cst.Module(body=[]).code_for_node(small) for small in statement.body
    )
