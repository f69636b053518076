"""NXS017 cross-attention-guard: the encoder inputs a causal LM never takes go; their config switch raises.

Analysis reads the cross-attention path of a decoder-only file as absent (`analysis.cross_attention`): in
training no encoder states come, so the branches on them are decided and the modules built for them under
a config switch (`if config.add_cross_attention: self.crossattention = ...`) are gone. This rule finishes
that: the encoder inputs (`encoder_hidden_states`, `encoder_attention_mask`, `key_value_states`) stop
being parameters, calls stop passing them (by keyword, or positionally as themselves), a constructor
parameter only the removed constructions passed (`is_cross_attention`) goes, and each constructor that
built the cross-attention modules raises `NotImplementedError` when its switch is on, right after
`super().__init__`: a generated model never ignores the switch silently. The inserted code comes from
templates/code/cross_attention_guard.py.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import libcst as cst

from ..blueprint import CrossAttentionGuard
from ..syntax import insert_after_super_init
from . import templates
from .base import Rule, stored_example

TEMPLATES = "cross_attention_guard"
_Item = TypeVar("_Item", cst.Param, cst.Arg)


class CrossAttentionGuardRule(Rule):
    CODE = "NXS017"
    NAME = "cross-attention-guard"
    SUMMARY = "encoder inputs a causal LM never takes leave signatures and calls; add_cross_attention raises"
    ADVICE = (
        "Analysis removes the cross-attention path whatever this rule does (R006 refuses a path it cannot "
        "remove whole). Disabling the rule keeps the encoder inputs as ignored parameters and the config "
        "switch unchecked: the model then trains without cross-attention even where the config asks for it."
    )
    EXAMPLES = (stored_example(CODE, "gpt2", "GPT2Block"),)

    def visit_Module(self, node: cst.Module) -> None:
        pruning = self.blueprint.cross_attention
        self._inputs = frozenset(pruning.inputs)
        self._defaulted = {(owner, name) for owner, name in pruning.defaulted}
        self._guards: dict[str, list[CrossAttentionGuard]] = {}
        for guard in pruning.guards:
            self._guards.setdefault(guard.owner, []).append(guard)
        self._classes: list[str] = []

    def visit_ClassDef(self, node: cst.ClassDef) -> None:
        self._classes.append(node.name.value)

    def leave_ClassDef(self, original_node: cst.ClassDef, updated_node: cst.ClassDef) -> cst.ClassDef:
        self._classes.pop()
        return updated_node

    def leave_FunctionDef(
        self, original_node: cst.FunctionDef, updated_node: cst.FunctionDef
    ) -> cst.FunctionDef:
        if not self._inputs:
            return updated_node
        owner = self._classes[-1] if self._classes else None
        gone = set(self._inputs)
        if updated_node.name.value == "__init__":
            gone |= {name for cls, name in self._defaulted if cls == owner}
        params = updated_node.params
        updated_node = updated_node.with_changes(
            params=params.with_changes(
                posonly_params=_kept(params.posonly_params, lambda param: param.name.value not in gone),
                params=_kept(params.params, lambda param: param.name.value not in gone),
                kwonly_params=_kept(params.kwonly_params, lambda param: param.name.value not in gone),
            )
        )
        if updated_node.name.value == "__init__" and owner in self._guards:
            updated_node = insert_after_super_init(updated_node, self._guard_statements(self._guards[owner]))
        return updated_node

    def leave_Call(self, original_node: cst.Call, updated_node: cst.Call) -> cst.Call:
        if not self._inputs:
            return updated_node
        kept = _kept(updated_node.args, lambda arg: not self._passes_input(arg))
        return updated_node if len(kept) == len(updated_node.args) else updated_node.with_changes(args=kept)

    def _passes_input(self, arg: cst.Arg) -> bool:
        if arg.keyword is not None:
            return arg.keyword.value in self._inputs
        return isinstance(arg.value, cst.Name) and arg.value.value in self._inputs and not arg.star

    def _guard_statements(self, guards: list[CrossAttentionGuard]) -> list[cst.BaseStatement]:
        statements: list[cst.BaseStatement] = []
        for guard in guards:
            message = f"{guard.test}: cross-attention is not part of causal-LM training; train with it off"
            filled, needed = templates.fill_statements(
                TEMPLATES,
                "refuse_cross_attention",
                self.blueprint.style,
                condition=cst.parse_expression(guard.test),
                message=cst.SimpleString(repr(message)),
            )
            self.add_template_imports(needed)
            statements.extend(filled)
        return statements


def _kept(items: Sequence[_Item], keep: Callable[[_Item], bool]) -> list[_Item]:
    """The items `keep` accepts; where the last one goes, the new last one takes its comma (no trailing
    comma appears that the source did not write)."""
    kept = [item for item in items if keep(item)]
    if kept and items and not keep(items[-1]):
        kept[-1] = kept[-1].with_changes(comma=items[-1].comma)
    return kept
