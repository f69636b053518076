"""NXS024 parallel-linears: every `nn.Linear` still in the file becomes the parallel layer of its role.

Runs last among the layer rules: fused projections (NXS020, NXS021) and the lm_head (NXS013) are already
converted, so what remains are the plain column and row projections (o_proj, down_proj, the separate
q/k/v branch, non-gated MLPs). The role comes from the Blueprint (tp plan, else dataflow):

- COLUMN -> `ColumnParallelLinear(in, out, bias=..., gather_output=False, ...)`: output features sharded,
  the output stays sharded for the head split or the elementwise activation that follows;
- ROW -> `RowParallelLinear(in, out, bias=..., input_is_parallel=True, ...)`: consumes the sharded
  features, all-reduces (reduce-scatters along the sequence under SP);
- REPLICATED / LM_HEAD / anything not a known site: left alone.
Both take the source's bias expression, `dtype=config.dtype`, `init_method` normal(0,
initializer_range), `sequence_parallel_enabled` from `trn_config` and `sequence_dimension=0`.
"""

from __future__ import annotations

import libcst as cst

from ..blueprint import LayerSite, Role
from ..errors import ScaffoldError
from . import _parallel_code as pc
from ._context import RuleContext
from ._edits import module_imports, qualified_name
from .base import Rule, stored_example

LINEAR = "torch.nn.Linear"
LAYERS = {Role.COLUMN: "ColumnParallelLinear", Role.ROW: "RowParallelLinear"}
ROLE_ARGUMENT = {Role.COLUMN: "gather_output=False", Role.ROW: "input_is_parallel=True"}


class ParallelLinears(Rule):
    CODE = "NXS024"
    NAME = "parallel-linears"
    SUMMARY = "remaining nn.Linear by role: column -> ColumnParallelLinear, row -> RowParallelLinear"
    EXAMPLES = (stored_example(CODE, "qwen2", "Qwen2MLP"),)

    def __init__(self, context: RuleContext) -> None:
        super().__init__(context)
        self._classes: list[str] = []
        self._configs: list[str | None] = []
        self._converted = False
        self._imports: dict[str, tuple[str, str | None]] = {}

    def visit_Module(self, node: cst.Module) -> None:
        self._imports = module_imports(node)

    def visit_ClassDef(self, node: cst.ClassDef) -> None:
        self._classes.append(node.name.value)

    def leave_ClassDef(self, original_node: cst.ClassDef, updated_node: cst.ClassDef) -> cst.ClassDef:
        self._classes.pop()
        return updated_node

    def visit_FunctionDef(self, node: cst.FunctionDef) -> None:
        in_init = node.name.value == "__init__" and bool(self._classes)
        self._configs.append(pc.config_parameter(node) if in_init else None)

    def leave_FunctionDef(
        self, original_node: cst.FunctionDef, updated_node: cst.FunctionDef
    ) -> cst.FunctionDef:
        self._configs.pop()
        return updated_node

    def leave_Assign(self, original_node: cst.Assign, updated_node: cst.Assign) -> cst.Assign:
        if not self._configs or self._configs[-1] is None or len(original_node.targets) != 1:
            return updated_node
        attribute = pc.self_attribute(original_node.targets[0].target)
        call = original_node.value
        if attribute is None or not isinstance(call, cst.Call) or not self._is_linear(call):
            return updated_node
        site = self._site(self._classes[-1], attribute)
        if site is None or site.role not in LAYERS:
            return updated_node
        self._converted = True
        return updated_node.with_changes(value=self._parallel(call, site, self._configs[-1]))

    def leave_Module(self, original_node: cst.Module, updated_node: cst.Module) -> cst.Module:
        return pc.ensure_init_helper(updated_node) if self._converted else updated_node

    def _is_linear(self, call: cst.Call) -> bool:
        """The callee is `torch.nn.Linear` through the module's imports (`nn.Linear`, `torch.nn.Linear`, ...)."""
        return qualified_name(call.func, self._imports) == LINEAR

    def _site(self, owner: str, attribute: str) -> LayerSite | None:
        found = [s for s in self.blueprint.sites if s.owner == owner and s.attribute == attribute]
        if len({s.role for s in found}) > 1:
            raise ScaffoldError(
                f"{self.CODE}: {found[0].location}: {owner}.{attribute} has different roles at different paths "
                f"({', '.join(sorted({s.role.value for s in found}))}); one class cannot hold both"
            )
        return found[0] if found else None

    def _parallel(self, call: cst.Call, site: LayerSite, config: str) -> cst.BaseExpression:
        positional = [arg for arg in call.args if arg.keyword is None]
        keywords = {arg.keyword.value: arg.value for arg in call.args if arg.keyword is not None}
        sizes = [arg.value for arg in positional[:2]]
        for name in ("in_features", "out_features")[len(sizes) :]:
            if name not in keywords:
                raise ScaffoldError(f"{self.CODE}: {site.location}: nn.Linear without {name}")
            sizes.append(keywords[name])
        bias = (
            pc.code(keywords["bias"])
            if "bias" in keywords
            else (pc.code(positional[2].value) if len(positional) > 2 else "True")
        )
        layer = LAYERS[site.role]
        pc.schedule_layer_imports(self.context, (pc.NXD_LAYERS, layer))
        text = pc.layer_call(
            layer, [pc.code(sizes[0]), pc.code(sizes[1]), f"bias={bias}", ROLE_ARGUMENT[site.role]], config
        )
        return cst.parse_expression(text)
