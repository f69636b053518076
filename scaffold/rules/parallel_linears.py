"""NXS024 parallel-linears: every `nn.Linear` still in the file becomes the parallel layer of its role.

Runs after the rules that fuse projections (NXS020, NXS021) and convert the lm_head (NXS013), so what
remains are the plain column and row projections (o_proj, down_proj, the separate q/k/v branch,
non-gated MLPs). The role comes from the Blueprint (tp plan, else dataflow):

- COLUMN -> `ColumnParallelLinear(in, out, bias=..., gather_output=False, ...)`: output features sharded,
  the output stays sharded for the head split or the elementwise activation that follows;
- ROW -> `RowParallelLinear(in, out, bias=..., input_is_parallel=True, ...)`: consumes the sharded
  features, all-reduces (reduce-scatters along the sequence under SP);
- REPLICATED / LM_HEAD / anything not a known site: left alone.
Both take the source's bias expression, `dtype=config.dtype`, the constructor's `init_method`,
`sequence_parallel_enabled` from `trn_config` and `sequence_dimension=0` (templates
`column_parallel_linear`, `row_parallel_linear`). Which assignments build those linears is a Blueprint
fact (the analysis recognises `nn.Linear`, `torch.nn.Linear` and aliases by qualified name, and refuses an
attribute also assigned something else: R028).
"""

from __future__ import annotations

import libcst as cst

from ..blueprint import LayerSite, Role
from ..syntax import self_attribute
from . import layer_code
from .base import Rule, stored_example, with_todo

LINEAR = "torch.nn.Linear"
TEMPLATES = {Role.COLUMN: "column_parallel_linear", Role.ROW: "row_parallel_linear"}
LINEAR_ARGUMENTS = ("in_features", "out_features", "bias")


class ParallelLinears(Rule):
    CODE = "NXS024"
    NAME = "parallel-linears"
    SUMMARY = "remaining nn.Linear by role: column -> ColumnParallelLinear, row -> RowParallelLinear"
    ADVICE = (
        "Linears whose sizes cannot be read or whose roles differ between instances are refused (R028). "
        "Disable it to shard the remaining linears by hand."
    )
    REQUIRES = ("NXS004",)
    EXAMPLES = (stored_example(CODE, "qwen2", "Qwen2MLP"),)

    def visit_Module(self, node: cst.Module) -> None:
        self._classes: list[str] = []
        self._in_init: list[bool] = []
        self._converted: set[str] = set()  # classes whose constructor now builds a parallel linear

    def visit_ClassDef(self, node: cst.ClassDef) -> None:
        self._classes.append(node.name.value)

    def leave_ClassDef(self, original_node: cst.ClassDef, updated_node: cst.ClassDef) -> cst.ClassDef:
        name = self._classes.pop()
        refusal = self.refusal_for(name)
        if refusal is not None and self._sites_of(name):
            return with_todo(updated_node, refusal)
        return updated_node

    def visit_FunctionDef(self, node: cst.FunctionDef) -> bool:
        in_init = (
            node.name.value == "__init__"
            and bool(self._classes)
            and self.refusal_for(self._classes[-1]) is None
        )
        self._in_init.append(in_init)
        return in_init  # layers are built in constructors: nothing to look at in other functions

    def leave_FunctionDef(
        self, original_node: cst.FunctionDef, updated_node: cst.FunctionDef
    ) -> cst.FunctionDef:
        in_init = self._in_init.pop()
        owner = self._classes[-1] if self._classes else None
        if in_init and owner in self._converted:
            return layer_code.with_init_method(self, updated_node, self.config_parameter(owner))
        return updated_node

    def leave_Assign(self, original_node: cst.Assign, updated_node: cst.Assign) -> cst.Assign:
        if not self._in_init or not self._in_init[-1] or len(original_node.targets) != 1:
            return updated_node
        attribute = self_attribute(original_node.targets[0].target)
        call = original_node.value
        if attribute is None or not isinstance(call, cst.Call):
            return updated_node
        owner = self._classes[-1]
        site = next((s for s in self._sites_of(owner) if s.attribute == attribute), None)
        if site is None or site.role not in TEMPLATES:
            return updated_node
        self._converted.add(owner)
        return updated_node.with_changes(value=self._parallel(call, site, self.config_parameter(owner)))

    def leave_Module(self, original_node: cst.Module, updated_node: cst.Module) -> cst.Module:
        return layer_code.with_init_helper(self, updated_node) if self._converted else updated_node

    def _sites_of(self, owner: str) -> list[LayerSite]:
        """The linears of `owner` with a column or row role (torch.nn.Linear by qualified name)."""
        return [
            site
            for site in self.blueprint.sites
            if site.owner == owner and site.role in TEMPLATES and site.constructor == LINEAR
        ]

    def _parallel(self, call: cst.Call, site: LayerSite, config: str) -> cst.Call:
        """The parallel layer with the source call's sizes and bias (read as nn.Linear's arguments)."""
        positional = [arg.value for arg in call.args if arg.keyword is None]
        keywords = {arg.keyword.value: arg.value for arg in call.args if arg.keyword is not None}
        values = dict(zip(LINEAR_ARGUMENTS, positional, strict=False)) | keywords
        return layer_code.layer(
            self,
            TEMPLATES[site.role],
            config,
            in_features=values["in_features"],  # both sizes are there: checked in analysis (R028)
            out_features=values["out_features"],
            bias=values.get("bias", cst.Name("True")),
        )
