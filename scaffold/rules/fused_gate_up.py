"""NXS020 fused-gate-up: a gated MLP's gate and up projections become one column-parallel `gate_up_proj`.

The fused layer has stride 2, so rank r holds `[gate_r; up_r]` and its output splits into the local gate
and up parts by the per-rank sizes. A `FusedLinearsSpec` maps the transformers `gate_proj`/`up_proj`
weights (and biases, when the source has them) onto it and back; the module mixes in `CustomModule` to
carry the spec. The down projection stays for NXS024 (row parallel).
"""

from __future__ import annotations

import libcst as cst

from ..blueprint import MLPBlock
from ..errors import ScaffoldError
from . import _parallel_code as pc
from .base import Rule, stored_example

FUSED_NAME = "gate_up_proj"


class FusedGateUp(Rule):
    CODE = "NXS020"
    NAME = "fused-gate-up"
    SUMMARY = "gated MLP: gate/up -> gate_up_proj = ColumnParallelLinear(stride=2) + FusedLinearsSpec"
    EXAMPLES = (stored_example(CODE, "llama", "LlamaMLP"),)

    def leave_ClassDef(self, original_node: cst.ClassDef, updated_node: cst.ClassDef) -> cst.ClassDef:
        for block in self.blueprint.mlps:
            if block.owner == updated_node.name.value and block.gate is not None:
                return self._fuse(updated_node, block)
        return updated_node

    def leave_Module(self, original_node: cst.Module, updated_node: cst.Module) -> cst.Module:
        if any(block.gate is not None for block in self.blueprint.mlps):
            return pc.ensure_init_helper(updated_node)
        return updated_node

    def _fuse(self, cls: cst.ClassDef, block: MLPBlock) -> cst.ClassDef:
        gate = self.blueprint.site(f"{block.path}.{block.gate}")
        up = self.blueprint.site(f"{block.path}.{block.up}")
        if gate.bias.source != up.bias.source or gate.in_features.source != up.in_features.source:
            raise ScaffoldError(
                f"{self.CODE}: {gate.location}: {block.gate} and {block.up} differ in input size or bias "
                f"({gate.source} vs {up.source}); they cannot share one fused layer"
            )
        init = pc.required_method(cls, "__init__", self.CODE)
        forward = pc.required_method(cls, "forward", self.CODE)
        config = pc.config_parameter(init)

        body = list(init.body.body)
        gate_index = pc.index_of_assignment(body, block.gate)
        up_index = pc.index_of_assignment(body, block.up)
        if gate_index is None or up_index is None:
            raise ScaffoldError(
                f"{self.CODE}: {gate.location}: {block.gate}/{block.up} are not plain `self.x = ...` statements "
                f"of {cls.name.value}.__init__"
            )
        gate_out, up_out = gate.out_features.source, up.out_features.source
        fused_out = (
            f"2 * {pc.operand(gate_out)}"
            if gate_out == up_out
            else f"{pc.operand(gate_out)} + {pc.operand(up_out)}"
        )
        if gate_out == up_out:
            split = f"divide({gate_out}, get_tensor_model_parallel_size())"
        else:
            split = f"[divide(size, get_tensor_model_parallel_size()) for size in ({gate_out}, {up_out})]"
        layer = pc.layer_call(
            "ColumnParallelLinear",
            [
                gate.in_features.source,
                fused_out,
                "stride=2",
                f"bias={gate.bias.source}",
                "gather_output=False",
            ],
            config,
        )
        new = pc.statements(
            f"# {block.gate} and {block.up} fused along the output features; with stride 2 each rank holds its\n"
            f"# shard of both, so the local output splits into (gate, up) by the per-rank sizes.\n"
            f"self.{FUSED_NAME} = {layer}\n"
            f"self.split_size = {split}\n"
            "self.specs = ModelWeightTransformationSpecs()\n"
            "self.specs.add_spec(\n"
            "    FusedLinearsSpec(\n"
            f'        fused_linear_name="{FUSED_NAME}",\n'
            f'        linear_names=["{block.gate}", "{block.up}"],\n'
            f"        bias={gate.bias.source},\n"
            '        fuse_axis="column",\n'
            f"        original_dims=[{gate_out}, {up_out}],\n"
            "    )\n"
            ")\n"
        )
        first = min(gate_index, up_index)
        _, new[0] = pc.leading_to(body[first], new[0])
        rest = [s for i, s in enumerate(body[first:], first) if i not in (gate_index, up_index)]
        body = body[:first] + new + rest
        init = pc.with_body(init, body)

        forward = self._split_forward(forward, block, cls.name.value)
        cls = pc.with_method(pc.with_method(cls, init), forward)
        cls = pc.with_base(cls, "CustomModule")
        pc.schedule_layer_imports(
            self.context,
            (pc.NXD_LAYERS, "ColumnParallelLinear"),
            (pc.NXD_STATE, "get_tensor_model_parallel_size"),
            (pc.NXD_UTILS, "divide"),
        )
        for name in ("CustomModule", "FusedLinearsSpec", "ModelWeightTransformationSpecs"):
            pc.schedule_host_import(self.context, pc.HOST_TRANSFORMATIONS, name)
        return cls

    def _split_forward(self, forward: cst.FunctionDef, block: MLPBlock, owner: str) -> cst.FunctionDef:
        """Replace `self.gate(x)` / `self.up(x)` by the two halves of one `self.gate_up_proj(x)` call."""
        gate_calls = pc.self_calls(forward, block.gate)
        up_calls = pc.self_calls(forward, block.up)
        if len(gate_calls) != 1 or len(up_calls) != 1:
            raise ScaffoldError(
                f"{self.CODE}: {owner}.forward must call {block.gate} and {block.up} once each to fuse them"
            )
        gate_call, up_call = gate_calls[0], up_calls[0]
        if (
            len(gate_call.args) != 1
            or len(up_call.args) != 1
            or pc.code(gate_call.args[0].value) != pc.code(up_call.args[0].value)
        ):
            raise ScaffoldError(
                f"{self.CODE}: {owner}.forward applies {block.gate} and {block.up} to different inputs; "
                "they cannot be fused"
            )
        taken = pc.names_in(forward)
        gate_name, up_name = pc.fresh_name("gate", taken), pc.fresh_name("up", taken)
        body = list(forward.body.body)
        position = next(
            i for i, s in enumerate(body) if any(n is gate_call or n is up_call for n in pc.walk(s))
        )
        argument = pc.code(gate_call.args[0].value)
        split = pc.statements(
            f"{gate_name}, {up_name} = self.{FUSED_NAME}({argument}).split(self.split_size, dim=-1)\n"
        )[0]
        rest = pc.replace_nodes(body[position], {gate_call: cst.Name(gate_name), up_call: cst.Name(up_name)})
        rest, split = pc.leading_to(rest, split)
        body[position : position + 1] = [split, rest]
        return pc.with_body(forward, body)
