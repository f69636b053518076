"""NXS021 attention-variants: the q/k/v projections become one of the three tensor-parallel variants,
chosen at construction as the contributing guide prescribes.

- NxD's `GQAQKVColumnParallelLinear` (+ `GQAQKVColumnParallelLinearSpec`) when the KV heads cannot be split
  evenly over the T ranks (`KV < T or KV % T != 0`); K/V heads are replicated `kv_size_multiplier` (m)
  times, the layer returns `(q, k, v)`;
- a fused `qkv_proj = ColumnParallelLinear(stride=3)` (+ `FusedLinearsSpec`) when `trn_config.fuse_qkv`
  and every query head has its own K/V head; its output splits by `H*d/T`;
- otherwise the separate q/k/v projections, left to NXS024 (column parallel).

After construction `num_heads = H/T`, `num_key_value_heads = KV*m/T` are per-rank counts and
`num_key_value_groups` their ratio. The forward computes the three projections first (one branch per
variant; the fused branch is taken when `fuse_qkv`, per-rank heads are equal and m == 1) and feeds them
to the source's own head reshapes, norms and RoPE. Biases follow the source (`bias=<its expression>`).
"""

from __future__ import annotations

import libcst as cst

from ..blueprint import AttentionGeometry, LayerSite, NormScope
from ..errors import ScaffoldError
from . import _parallel_code as pc
from .base import Rule, stored_example

FUSED_NAME = "qkv_proj"
NXD_09_NOTE = (
    "# Attention biases on this layer rely on deviation NXD-09 (NxD 0.18 rejects bias=True here):\n"
    "# on Trainium such a model needs KV heads divisible by the TP size.\n"
)


class AttentionVariants(Rule):
    CODE = "NXS021"
    NAME = "attention-variants"
    SUMMARY = "q/k/v -> GQA qkv layer, fused qkv_proj or separate projections, chosen at construction"
    EXAMPLES = (stored_example(CODE, "llama", "LlamaAttention"),)

    def leave_ClassDef(self, original_node: cst.ClassDef, updated_node: cst.ClassDef) -> cst.ClassDef:
        for geometry in self.blueprint.attention:
            if geometry.owner == updated_node.name.value:
                return self._convert(updated_node, geometry)
        return updated_node

    def leave_Module(self, original_node: cst.Module, updated_node: cst.Module) -> cst.Module:
        return pc.ensure_init_helper(updated_node) if self.blueprint.attention else updated_node

    def _sites(self, geometry: AttentionGeometry) -> tuple[LayerSite, LayerSite, LayerSite]:
        q, k, v = (
            self.blueprint.site(f"{geometry.path}.{name}") for name in (geometry.q, geometry.k, geometry.v)
        )
        if (
            len({q.bias.source, k.bias.source, v.bias.source}) != 1
            or len({q.in_features.source, k.in_features.source, v.in_features.source}) != 1
        ):
            raise ScaffoldError(
                f"{self.CODE}: {q.location}: q/k/v projections differ in input size or bias; NxD's fused and "
                "GQA layers need one input and one bias setting for all three"
            )
        if k.out_features.source != v.out_features.source:
            raise ScaffoldError(
                f"{self.CODE}: {k.location}: k and v projections differ in size ({k.source} vs {v.source}); "
                "NxD's GQA layer holds one K/V size"
            )
        if any(site.conditional for site in (q, k, v)):
            raise ScaffoldError(f"{self.CODE}: {q.location}: q/k/v projections built under a condition")
        return q, k, v

    def _convert(self, cls: cst.ClassDef, geometry: AttentionGeometry) -> cst.ClassDef:
        q, k, v = self._sites(geometry)
        init = pc.required_method(cls, "__init__", self.CODE)
        forward = pc.required_method(cls, "forward", self.CODE)
        init = self._constructor(init, geometry, q, k, v)
        forward = self._projections(forward, geometry, cls.name.value)
        cls = pc.with_base(pc.with_method(pc.with_method(cls, init), forward), "CustomModule")
        pc.schedule_layer_imports(
            self.context,
            (pc.NXD_LAYERS, "ColumnParallelLinear"),
            (pc.NXD_QKV, "GQAQKVColumnParallelLinear"),
            (pc.NXD_STATE, "get_tensor_model_parallel_size"),
            (pc.NXD_UTILS, "divide"),
        )
        for name in (
            "CustomModule",
            "FusedLinearsSpec",
            "GQAQKVColumnParallelLinearSpec",
            "ModelWeightTransformationSpecs",
        ):
            pc.schedule_host_import(self.context, pc.HOST_TRANSFORMATIONS, name)
        return cls

    def _constructor(
        self, init: cst.FunctionDef, geometry: AttentionGeometry, q: LayerSite, k: LayerSite, v: LayerSite
    ) -> cst.FunctionDef:
        config = pc.config_parameter(init)
        body = list(init.body.body)
        indices = [pc.index_of_assignment(body, name) for name in (geometry.q, geometry.k, geometry.v)]
        if None in indices:
            raise ScaffoldError(
                f"{self.CODE}: {q.location}: q/k/v are not plain `self.x = ...` statements of "
                f"{geometry.owner}.__init__"
            )
        heads, kv_heads = geometry.num_heads.source, geometry.num_kv_heads.source
        bias = q.bias.source
        q_out, kv_out = q.out_features.source, k.out_features.source
        separate = [body[i] for i in sorted(indices)]
        gqa_layer = pc.layer_call(
            "GQAQKVColumnParallelLinear",
            [
                q.in_features.source,
                f"[{q_out}, {kv_out}]",
                f"bias={bias}",
                "gather_output=False",
                "kv_size_multiplier=self.kv_size_multiplier",
                f"fuse_qkv={pc.TRN_CONFIG}.fuse_qkv",
            ],
            config,
            sequence_dimension=False,
        )
        fused_layer = pc.layer_call(
            "ColumnParallelLinear",
            [
                q.in_features.source,
                f"3 * {pc.operand(q_out)}",
                "stride=3",
                f"bias={bias}",
                "gather_output=False",
            ],
            config,
        )
        note = NXD_09_NOTE if bias != "False" else ""
        trn = pc.TRN_CONFIG
        text = (
            "# Attention variant, chosen at construction: NxD's GQA layer when the KV heads cannot be split\n"
            "# evenly over the tensor-parallel ranks (it replicates them kv_size_multiplier times), one fused\n"
            "# projection when asked for and every query head has its own K/V head, else separate projections.\n"
            "tp_size = get_tensor_model_parallel_size()\n"
            f"self.qkv_linear = {pc.operand(kv_heads)} < tp_size or {pc.operand(kv_heads)} % tp_size != 0\n"
            "self.kv_size_multiplier = 1\n"
            "if self.qkv_linear:\n"
            f"    self.kv_size_multiplier = {trn}.kv_size_multiplier\n"
            "    if self.kv_size_multiplier is None:\n"
            f"        self.kv_size_multiplier = {trn}.auto_kv_size_multiplier({kv_heads})\n"
            "self.specs = ModelWeightTransformationSpecs()\n"
            "if self.qkv_linear:\n"
            + _indent(note + f"self.{FUSED_NAME} = {gqa_layer}\n")
            + "    self.specs.add_spec(\n"
            "        GQAQKVColumnParallelLinearSpec(\n"
            f'            gqa_qkv_projection_name="{FUSED_NAME}",\n'
            f'            query_projection_name="{geometry.q}",\n'
            f'            key_projection_name="{geometry.k}",\n'
            f'            value_projection_name="{geometry.v}",\n'
            f'            output_projection_name="{geometry.o}",\n'
            f"            num_attention_heads={heads},\n"
            f"            num_key_value_heads={kv_heads},\n"
            "            kv_size_multiplier=self.kv_size_multiplier,\n"
            f"            q_output_size_per_partition=self.{FUSED_NAME}.q_output_size_per_partition,\n"
            f"            kv_output_size_per_partition=self.{FUSED_NAME}.kv_output_size_per_partition,\n"
            f"            fuse_qkv={trn}.fuse_qkv,\n"
            f"            bias={bias},\n"
            "        )\n"
            "    )\n"
            f"elif {trn}.fuse_qkv and {pc.operand(heads)} == {pc.operand(kv_heads)}:\n"
            + _indent(f"self.{FUSED_NAME} = {fused_layer}\n")
            + "    self.specs.add_spec(\n"
            "        FusedLinearsSpec(\n"
            f'            fused_linear_name="{FUSED_NAME}",\n'
            f'            linear_names=["{geometry.q}", "{geometry.k}", "{geometry.v}"],\n'
            f"            bias={bias},\n"
            '            fuse_axis="column",\n'
            f"            original_dims=[{q_out}] * 3,\n"
            "        )\n"
            "    )\n"
            f"    self.split_size = divide({q_out}, tp_size)\n"
            "else:\n"
            "    pass\n"
        )
        block = pc.statements(text)
        dispatch = block[-1]
        assert isinstance(dispatch, cst.If) and isinstance(dispatch.orelse, cst.If)
        orelse = dispatch.orelse.orelse
        assert isinstance(orelse, cst.Else)
        kept = [statement.with_changes(leading_lines=[]) for statement in separate]
        inner = dispatch.orelse.with_changes(
            orelse=orelse.with_changes(body=orelse.body.with_changes(body=kept))
        )
        block[-1] = dispatch.with_changes(orelse=inner)
        _, block[0] = pc.leading_to(body[min(indices)], block[0])

        last = max(indices)
        before = [s for i, s in enumerate(body[:last]) if i not in indices]
        after = body[last + 1 :]
        # The source's global group count is replaced by the per-rank one below.
        before = [s for s in before if pc.assigned_self_attribute(s) != "num_key_value_groups"]
        per_rank = pc.statements(
            "\n# Per-rank head counts (K/V heads after replication by kv_size_multiplier).\n"
            f"self.num_heads = divide({heads}, tp_size)\n"
            f"self.num_key_value_heads = divide({pc.operand(kv_heads)} * self.kv_size_multiplier, tp_size)\n"
            "self.num_key_value_groups = self.num_heads // self.num_key_value_heads\n"
        )
        per_rank += self._per_head_norm_gradients(geometry, body)
        return pc.with_body(init, [*before, *block, *after, *per_rank])

    def _per_head_norm_gradients(
        self, geometry: AttentionGeometry, body: list[cst.BaseStatement]
    ) -> list[cst.BaseStatement]:
        """Sum the gradients of per-head norms over TP: each rank normalises only its own heads."""
        norms = [
            norm.attribute
            for norm in self.blueprint.norms
            if norm.owner == geometry.owner
            and norm.scope is NormScope.PER_HEAD
            and pc.index_of_assignment(body, norm.attribute) is not None
        ]
        norms = list(dict.fromkeys(norms))
        if not norms:
            return []
        pc.schedule_layer_imports(self.context, (pc.NXD_MAPPINGS, "reduce_from_tensor_model_parallel_region"))
        parameters = ", ".join(f"*self.{name}.parameters()" for name in norms)
        return pc.statements(
            f"# {' and '.join(norms)} are replicated but each rank normalises only its own heads: their\n"
            "# gradients are summed over the tensor-parallel ranks, so every replica gets the full one.\n"
            f"for parameter in ({parameters}):\n"
            "    parameter.register_hook(reduce_from_tensor_model_parallel_region)\n"
        )

    def _projections(
        self, forward: cst.FunctionDef, geometry: AttentionGeometry, owner: str
    ) -> cst.FunctionDef:
        """Compute q, k, v up front by variant; the source's expressions then read the computed tensors."""
        calls = []
        for name in (geometry.q, geometry.k, geometry.v):
            found = pc.self_calls(forward, name)
            if len(found) != 1 or len(found[0].args) != 1:
                raise ScaffoldError(f"{self.CODE}: {owner}.forward must call self.{name}(x) exactly once")
            calls.append(found[0])
        argument = pc.code(calls[0].args[0].value)
        if any(pc.code(call.args[0].value) != argument for call in calls):
            raise ScaffoldError(f"{self.CODE}: {owner}.forward projects q, k and v from different inputs")
        body = list(forward.body.body)
        taken = pc.names_in(forward)
        holders = []
        for call in calls:
            index = next(i for i, s in enumerate(body) if any(n is call for n in pc.walk(s)))
            holders.append(index)
        names = []
        for index, default in zip(holders, ("query_states", "key_states", "value_states")):
            target = pc.assigned_name(body[index])
            if target is None or target in names:
                target = pc.fresh_name(default, taken)
                taken.add(target)
            names.append(target)
        q_name, k_name, v_name = names
        dispatch = pc.statements(
            "if self.trn_config.fuse_qkv and self.num_heads == self.num_key_value_heads "
            "and self.kv_size_multiplier == 1:\n"
            f"    {q_name}, {k_name}, {v_name} = self.{FUSED_NAME}({argument}).split(self.split_size, dim=-1)\n"
            "elif self.qkv_linear:\n"
            f"    {q_name}, {k_name}, {v_name} = self.{FUSED_NAME}({argument})\n"
            "else:\n"
            f"    {q_name} = self.{geometry.q}({argument})\n"
            f"    {k_name} = self.{geometry.k}({argument})\n"
            f"    {v_name} = self.{geometry.v}({argument})\n"
        )[0]
        replacements = {call: cst.Name(name) for call, name in zip(calls, names)}
        first = min(holders)
        rewritten = [pc.replace_nodes(s, replacements) if i in holders else s for i, s in enumerate(body)]
        rewritten[first], dispatch = pc.leading_to(rewritten[first], dispatch)
        rewritten.insert(first, dispatch)
        # `q = self.q_proj(x)` became `q = q`: drop it.
        rewritten = [s for s in rewritten if not _self_assignment(s)]
        return pc.with_body(forward, rewritten)


def _indent(text: str) -> str:
    return "".join(f"    {line}" if line.strip() else line for line in text.splitlines(keepends=True))


def _self_assignment(statement: cst.BaseStatement) -> bool:
    value = pc.assigned_value(statement)
    name = pc.assigned_name(statement)
    return name is not None and isinstance(value, cst.Name) and value.value == name
