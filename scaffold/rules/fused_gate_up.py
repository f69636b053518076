"""NXS020 fused-gate-up: a gated MLP's gate and up projections become one column-parallel `gate_up_proj`.

The fused layer has stride 2, so rank r holds `[gate_r; up_r]` and its output splits into the local gate
and up parts by the per-rank sizes. A `FusedLinearsSpec` maps the transformers `gate_proj`/`up_proj`
weights (and biases, when the source has them) onto it and back; the module mixes in `CustomModule` to
carry the spec. The down projection stays for NXS024 (row parallel). The inserted code comes from
templates/code/fused_gate_up.py.
"""

from __future__ import annotations

import libcst as cst

from ..blueprint import MLPBlock
from ..syntax import (
    assigned_name,
    assigned_value,
    code,
    contains,
    find_method,
    fresh_name,
    index_of_assignment,
    leading_to,
    names_in,
    operand,
    replace_nodes,
    self_attributes,
    self_calls,
    with_base,
    with_body,
    with_method,
)
from . import layer_code, templates
from .base import Rule, stored_example, with_todo

TEMPLATES = "fused_gate_up"
FUSED_NAME = "gate_up_proj"  # the attribute the template builds
CUSTOM_MODULE = "CustomModule"
SPLIT_ATTRIBUTE = "split_size"  # the templates' split size of gate_up_proj's output (renamed if taken)


class FusedGateUp(Rule):
    CODE = "NXS020"
    NAME = "fused-gate-up"
    SUMMARY = "gated MLP: gate/up -> gate_up_proj = ColumnParallelLinear(stride=2) + FusedLinearsSpec"
    ADVICE = (
        "Gate and up projections that cannot share one layer are refused (R024). Disable it to keep them "
        "separate: NXS024 then makes both column-parallel."
    )
    REQUIRES = ("NXS004",)
    EXAMPLES = (stored_example(CODE, "llama", "LlamaMLP"),)

    def visit_FunctionDef(self, node: cst.FunctionDef) -> bool:
        return False  # the rule rewrites whole classes: nothing to visit inside a method

    def leave_ClassDef(self, original_node: cst.ClassDef, updated_node: cst.ClassDef) -> cst.ClassDef:
        for block in self.blueprint.mlps:
            if block.owner == updated_node.name.value and block.gate is not None:
                refusal = self.refusal_for(block.owner)
                if refusal is not None:
                    return with_todo(updated_node, refusal)
                return self._fuse(updated_node, block)
        return updated_node

    def leave_Module(self, original_node: cst.Module, updated_node: cst.Module) -> cst.Module:
        if any(
            block.gate is not None and self.refusal_for(block.owner) is None for block in self.blueprint.mlps
        ):
            return layer_code.with_init_helper(self, updated_node)
        return updated_node

    def _fuse(self, cls: cst.ClassDef, block: MLPBlock) -> cst.ClassDef:
        assert block.gate is not None
        gate = self.blueprint.site(f"{block.path}.{block.gate}")
        up = self.blueprint.site(f"{block.path}.{block.up}")
        init, forward = find_method(cls, "__init__"), find_method(cls, "forward")
        assert init is not None and forward is not None, "checked in analysis (R017)"
        config = self.config_parameter(block.owner)
        body = list(init.body.body)
        gate_index = index_of_assignment(body, block.gate)
        up_index = index_of_assignment(body, block.up)
        assert gate_index is not None and up_index is not None, "checked in analysis (R024)"

        gate_size = cst.parse_expression(gate.out_features.source)
        up_size = cst.parse_expression(up.out_features.source)
        same = gate.out_features.source == up.out_features.source
        style = self.blueprint.style
        if same:
            fused_size, _ = templates.fill_expression(
                TEMPLATES, "doubled_size", style, size=operand(gate_size)
            )
            split, needed = templates.fill_expression(TEMPLATES, "equal_split", style, size=gate_size)
        else:
            fused_size, _ = templates.fill_expression(
                TEMPLATES, "summed_size", style, gate_size=operand(gate_size), up_size=operand(up_size)
            )
            split, needed = templates.fill_expression(
                TEMPLATES, "unequal_split", style, gate_size=gate_size, up_size=up_size
            )
        self.add_template_imports(needed)
        # the split size of gate_up_proj's output: a name the class does not use already
        split_attribute = {SPLIT_ATTRIBUTE: fresh_name(SPLIT_ATTRIBUTE, self_attributes(cls))}
        new, needed = templates.fill_statements(
            TEMPLATES,
            "gate_up_projection",
            style,
            renames={"config": config},
            attributes=split_attribute,
            hidden_size=cst.parse_expression(gate.in_features.source),
            fused_size=fused_size,
            bias=cst.parse_expression(gate.bias.source),
            split_size=split,
            gate=cst.SimpleString(f'"{block.gate}"'),
            up=cst.SimpleString(f'"{block.up}"'),
            gate_size=gate_size,
            up_size=up_size,
        )
        self.add_template_imports(needed)
        first = min(gate_index, up_index)
        _, new[0] = leading_to(body[first], new[0])
        rest = [s for i, s in enumerate(body[first:], first) if i not in (gate_index, up_index)]
        init = with_body(init, body[:first] + new + rest)  # type: ignore[assignment]
        init = layer_code.with_init_method(self, init, config)  # type: ignore[arg-type]

        forward = self._split_forward(forward, block, split_attribute)
        cls = with_method(with_method(cls, init), forward)  # type: ignore[arg-type]
        self.add_host_import("transformations_utils", CUSTOM_MODULE)
        return with_base(cls, CUSTOM_MODULE)

    def _split_forward(
        self, forward: cst.FunctionDef, block: MLPBlock, split_attribute: dict[str, str]
    ) -> cst.FunctionDef:
        """Replace `self.gate(x)` / `self.up(x)` by the two halves of one `self.gate_up_proj(x)` call."""
        assert block.gate is not None
        gate_call, up_call = gate_up_calls(forward, block.gate, block.up)  # type: ignore[misc]
        taken = names_in(forward)
        gate_name, up_name = fresh_name("gate", taken), fresh_name("up", taken)
        body = list(forward.body.body)
        holders = [i for i, s in enumerate(body) if contains(s, gate_call) or contains(s, up_call)]
        position = holders[0]
        direct = {}  # one statement each, `name = self.gate(x)`: the split binds those names itself
        if len(holders) == 2:
            direct = {
                i: assigned_name(body[i]) for i in holders if assigned_value(body[i]) in (gate_call, up_call)
            }
        if len(direct) == 2 and None not in direct.values():
            first, second = (direct[i] for i in holders)
            gate_name, up_name = (first, second) if contains(body[holders[0]], gate_call) else (second, first)
        (split,), needed = templates.fill_statements(
            TEMPLATES,
            "gate_up_split",
            self.blueprint.style,
            renames={"gate": gate_name, "up": up_name},  # type: ignore[dict-item]
            attributes=split_attribute,
            hidden_states=gate_call.args[0].value,
        )
        self.add_template_imports(needed)
        replacements = {gate_call: cst.Name(gate_name), up_call: cst.Name(up_name)}  # type: ignore[arg-type]
        for holder in holders:  # one statement, or one each (`gate = self.gate(x)`, `up = self.up(x)`)
            body[holder] = replace_nodes(body[holder], replacements)  # type: ignore[assignment]
        body[position], split = leading_to(body[position], split)  # type: ignore[arg-type]
        if len(direct) == 2 and None not in direct.values():
            body = [s for i, s in enumerate(body) if i not in holders[1:]]
            body[position] = split  # type: ignore[assignment]
        else:
            body.insert(position, split)  # type: ignore[arg-type]
        result = with_body(forward, body)
        assert isinstance(result, cst.FunctionDef)
        return result


def gate_up_calls(forward: cst.FunctionDef, gate: str, up: str) -> tuple[cst.Call, cst.Call] | None:
    """The forward's one call of each projection, both on the same single input (what fusing needs)."""
    gate_calls, up_calls = self_calls(forward, gate), self_calls(forward, up)
    if len(gate_calls) != 1 or len(up_calls) != 1:
        return None
    gate_call, up_call = gate_calls[0], up_calls[0]
    if len(gate_call.args) != 1 or len(up_call.args) != 1:
        return None
    if code(gate_call.args[0].value) != code(up_call.args[0].value):
        return None
    return gate_call, up_call
