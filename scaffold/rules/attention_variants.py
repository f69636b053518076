"""NXS021 attention-variants: the q/k/v projections become one of the three tensor-parallel variants,
chosen at construction as the contributing guide prescribes.

- NxD's `GQAQKVColumnParallelLinear` (+ `GQAQKVColumnParallelLinearSpec`) when the KV heads cannot be split
  evenly over the T ranks (`KV < T or KV % T != 0`); K/V heads are replicated `kv_size_multiplier` (m)
  times, the layer returns `(q, k, v)`;
- a fused `qkv_proj = ColumnParallelLinear(stride=3)` (+ `FusedLinearsSpec`) when `trn_config.fuse_qkv`
  and every query head has its own K/V head; its output splits by `H*d/T`;
- otherwise the separate q/k/v projections, left to NXS024 (column parallel).

After construction `num_heads = H/T`, `num_key_value_heads = KV*m/T` are per-rank counts and
`num_key_value_groups` their ratio; an attribute of another name holding a total count that the forward's
head reshapes read (directly, or as an argument of a helper method: GPT-J's `self._split_heads(q,
self.num_attention_heads, ...)`) is read as the per-rank one in the forward and its helpers. The forward computes the three projections first (one branch per
variant; the fused branch is taken when `fuse_qkv`, per-rank heads are equal and m == 1) and feeds them
to the source's own head reshapes, norms and RoPE. Biases follow the source (`bias=<its expression>`).
The fused branch's q, k and v are views of one `split`, which autograd lets no in-place op modify: the
source's in-place ops on them (`query_states.clamp_(...)`, `key_states *= s`) become assignments of their
out-of-place forms (`query_states = query_states.clamp(...)`).

Norms applied per head (q/k norms over head_dim, RMSNorm or LayerNorm, weight and bias) are replicated
while each rank normalises only its own heads: their gradients are summed over TP by hooks placed at the
end of the block that builds them (the constructor, or the `if config.qk_layernorm:` that does).
The inserted code comes from templates/code/attention_variants.py.
"""

from __future__ import annotations

import libcst as cst

from ..blueprint import AttentionGeometry, LayerSite, NormScope
from ..syntax import (
    assigned_name,
    assigned_self_attribute,
    assigned_value,
    contains,
    find_method,
    fresh_name,
    index_of_assignment,
    leading_to,
    names_in,
    operand,
    replace_nodes,
    self_attribute,
    self_attributes,
    self_calls,
    walk,
    with_base,
    with_body,
    with_method,
)
from . import layer_code, templates
from .base import Rule, stored_example, with_todo

TEMPLATES = "attention_variants"
FUSED_NAME = "qkv_proj"
CUSTOM_MODULE = "CustomModule"
TEMPLATE_STATES = ("query_states", "key_states", "value_states")  # the forward template's local names
TEMPLATE_PROJECTIONS = ("q_proj", "k_proj", "v_proj")  # the forward template's projection attributes
SPLIT_ATTRIBUTE = "split_size"  # the templates' per-rank split size of the fused qkv_proj (renamed if taken)


class AttentionVariants(Rule):
    CODE = "NXS021"
    NAME = "attention-variants"
    SUMMARY = "q/k/v -> GQA qkv layer, fused qkv_proj or separate projections, chosen at construction"
    ADVICE = (
        "Projections NxD's fused and GQA layers cannot replace are refused (R025). Disable it (with NXS022) "
        "to keep separate q/k/v projections, column-parallel by NXS024: valid only while the KV heads divide "
        "the TP size."
    )
    REQUIRES = ("NXS004",)
    EXAMPLES = (stored_example(CODE, "llama", "LlamaAttention"),)

    def visit_FunctionDef(self, node: cst.FunctionDef) -> bool:
        return False  # the rule rewrites whole classes: nothing to visit inside a method

    def leave_ClassDef(self, original_node: cst.ClassDef, updated_node: cst.ClassDef) -> cst.ClassDef:
        for geometry in self.blueprint.attention:
            if geometry.owner == updated_node.name.value:
                refusal = self.refusal_for(geometry.owner)
                if refusal is not None:
                    return with_todo(updated_node, refusal)
                return self._convert(updated_node, geometry)
        return updated_node

    def leave_Module(self, original_node: cst.Module, updated_node: cst.Module) -> cst.Module:
        if any(self.refusal_for(geometry.owner) is None for geometry in self.blueprint.attention):
            return layer_code.with_init_helper(self, updated_node)
        return updated_node

    def _convert(self, cls: cst.ClassDef, geometry: AttentionGeometry) -> cst.ClassDef:
        q, k = (self.blueprint.site(f"{geometry.path}.{name}") for name in (geometry.q, geometry.k))
        init, forward = find_method(cls, "__init__"), find_method(cls, "forward")
        assert init is not None and forward is not None, "checked in analysis (R017)"
        # the per-rank size the fused branch splits qkv_proj's output by: a name the class does not use
        # (GPT-2's attention has its own `self.split_size`, the full width)
        split = {SPLIT_ATTRIBUTE: fresh_name(SPLIT_ATTRIBUTE, self_attributes(cls))}
        init = self._constructor(init, geometry, q, k, split)
        forward = self._projections(forward, geometry, split)
        cls = with_method(with_method(cls, init), forward)
        cls = _per_rank_head_reads(cls, dict(geometry.total_head_counts))
        self.add_host_import("transformations_utils", CUSTOM_MODULE)
        return with_base(cls, CUSTOM_MODULE)

    def _constructor(
        self,
        init: cst.FunctionDef,
        geometry: AttentionGeometry,
        q: LayerSite,
        k: LayerSite,
        split: dict[str, str],
    ) -> cst.FunctionDef:
        config = self.config_parameter(geometry.owner)
        body = list(init.body.body)
        indices = [index_of_assignment(body, name) for name in (geometry.q, geometry.k, geometry.v)]
        assert None not in indices, "checked in analysis (R025)"
        places = sorted(index for index in indices if index is not None)
        heads = cst.parse_expression(geometry.num_heads.source)
        kv_heads = cst.parse_expression(geometry.num_kv_heads.source)
        q_size = cst.parse_expression(q.out_features.source)
        block, needed = templates.fill_statements(
            TEMPLATES,
            "variant_choice",
            self.blueprint.style,
            renames={"config": config},
            attributes=split,
            hidden_size=cst.parse_expression(q.in_features.source),
            heads=heads,
            kv_heads=kv_heads,
            heads_operand=operand(heads),
            kv_heads_operand=operand(kv_heads),
            q_size=q_size,
            q_size_operand=operand(q_size),
            kv_size=cst.parse_expression(k.out_features.source),
            bias=cst.parse_expression(q.bias.source),
            q=cst.SimpleString(f'"{geometry.q}"'),
            k=cst.SimpleString(f'"{geometry.k}"'),
            v=cst.SimpleString(f'"{geometry.v}"'),
            o=cst.SimpleString(f'"{geometry.o}"'),
        )
        self.add_template_imports(needed)
        if geometry.num_heads.source == geometry.num_kv_heads.source:  # every query head has its K/V head
            block[-1] = _fused_without_head_check(block[-1])
        separate = [body[index].with_changes(leading_lines=[]) for index in places]
        block[-1] = _with_separate_branch(block[-1], separate, keep_bias_note=q.bias.source != "False")
        _, block[0] = leading_to(body[places[0]], block[0])

        last = places[-1]
        # The source's global group count is replaced by the per-rank one below.
        before = [
            s
            for i, s in enumerate(body[:last])
            if i not in places and assigned_self_attribute(s) != "num_key_value_groups"
        ]
        # `self.num_heads` becomes the per-rank query count: a K/V count that reads it is taken first
        reads_heads = any(self_attribute(node) == "num_heads" for node in walk(kv_heads))
        per_rank, needed = templates.fill_statements(
            TEMPLATES,
            "per_rank_heads_kv_first" if reads_heads else "per_rank_heads",
            self.blueprint.style,
            heads=heads,
            kv_heads_operand=operand(kv_heads),
        )
        self.add_template_imports(needed)
        norms = self._per_head_norms(geometry)
        top_level = [name for name in norms if index_of_assignment(body, name) is not None]
        nested = [name for name in norms if name not in top_level]
        per_rank += self._per_head_norm_gradients(top_level)
        after = [self._with_nested_norm_gradients(statement, nested) for statement in body[last + 1 :]]
        before = [self._with_nested_norm_gradients(statement, nested) for statement in before]
        result = with_body(init, [*before, *block, *after, *per_rank])
        assert isinstance(result, cst.FunctionDef)
        return layer_code.with_init_method(self, result, config)

    def _per_head_norms(self, geometry: AttentionGeometry) -> list[str]:
        """The attention's norms applied per head (RMSNorm or LayerNorm, whatever the class), in order."""
        names = [
            norm.attribute
            for norm in self.blueprint.norms
            if norm.owner == geometry.owner and norm.scope is NormScope.PER_HEAD
        ]
        return list(dict.fromkeys(names))

    def _per_head_norm_gradients(self, norms: list[str]) -> list[cst.BaseStatement]:
        """Sum the gradients of per-head norms over TP: each rank normalises only its own heads."""
        if not norms:
            return []
        parameters = cst.Tuple(
            elements=[
                cst.StarredElement(value=cst.parse_expression(f"self.{name}.parameters()")) for name in norms
            ]
        )
        hooks, needed = templates.fill_statements(
            TEMPLATES, "per_head_norm_gradients", self.blueprint.style, parameters=parameters
        )
        self.add_template_imports(needed)
        return hooks

    def _with_nested_norm_gradients(
        self, statement: cst.BaseStatement, norms: list[str]
    ) -> cst.BaseStatement:
        """`statement` with the gradient hooks at the end of each block inside it that builds per-head
        norms (`if config.qk_layernorm:`): the hooks exist exactly when the norms do."""
        if not norms or isinstance(statement, cst.SimpleStatementLine):
            return statement
        rule = self

        class _HooksAfterNorms(cst.CSTTransformer):
            def visit_FunctionDef(self, node: cst.FunctionDef) -> bool:
                return False

            def leave_IndentedBlock(
                self, original_node: cst.IndentedBlock, updated_node: cst.IndentedBlock
            ) -> cst.IndentedBlock:
                body = list(updated_node.body)
                built = [name for name in norms if index_of_assignment(body, name) is not None]
                if not built:
                    return updated_node
                hooks = rule._per_head_norm_gradients(built)
                return updated_node.with_changes(body=[*body, *hooks])

        result = statement.visit(_HooksAfterNorms())
        assert isinstance(result, cst.BaseStatement)
        return result

    def _projections(
        self, forward: cst.FunctionDef, geometry: AttentionGeometry, split: dict[str, str]
    ) -> cst.FunctionDef:
        """Compute q, k, v up front by variant; the source's expressions then read the computed tensors."""
        calls = projection_calls(forward, geometry)
        assert calls is not None, "checked in analysis (R025)"
        body = list(forward.body.body)
        taken = names_in(forward)
        holders = [next(i for i, s in enumerate(body) if contains(s, call)) for call in calls]
        names: list[str] = []
        for index, default in zip(holders, TEMPLATE_STATES, strict=True):
            target = assigned_name(body[index])
            if target is None or target in names:
                target = fresh_name(default, taken)
                taken.add(target)
            names.append(target)
        (dispatch,), needed = templates.fill_statements(
            TEMPLATES,
            "projections",
            self.blueprint.style,
            renames=dict(zip(TEMPLATE_STATES, names, strict=True)),
            attributes={
                **dict(zip(TEMPLATE_PROJECTIONS, (geometry.q, geometry.k, geometry.v), strict=True)),
                **split,
            },
            hidden_states=calls[0].args[0].value,
        )
        self.add_template_imports(needed)
        replacements = {call: cst.Name(name) for call, name in zip(calls, names, strict=True)}
        first = min(holders)
        rewritten = [replace_nodes(s, replacements) if i in holders else s for i, s in enumerate(body)]
        rewritten[first], dispatch = leading_to(rewritten[first], dispatch)  # type: ignore[arg-type]
        rewritten.insert(first, dispatch)  # type: ignore[arg-type]
        # `q = self.q_proj(x)` became `q = q`: drop it.
        kept = [s for s in rewritten if not _self_assignment(s)]
        # The fused branch's q, k, v are views of one `split`, which autograd does not let a later in-place
        # op modify (the source's `query_states.clamp_(...)` under `clip_qkv`): such ops become assignments.
        kept = [_out_of_place(statement, set(names)) for statement in kept]  # type: ignore[arg-type]
        result = with_body(forward, kept)
        assert isinstance(result, cst.FunctionDef)
        return result


def projection_calls(forward: cst.FunctionDef, geometry: AttentionGeometry) -> list[cst.Call] | None:
    """The forward's one call of each of q, k and v, all on the same single input (what NXS021 needs)."""
    calls = []
    for name in (geometry.q, geometry.k, geometry.v):
        found = self_calls(forward, name)
        if len(found) != 1 or len(found[0].args) != 1 or found[0].args[0].keyword is not None:
            return None
        calls.append(found[0])
    inputs = {cst.Module(body=[]).code_for_node(call.args[0].value) for call in calls}
    return calls if len(inputs) == 1 else None


def _per_rank_head_reads(cls: cst.ClassDef, counts: dict[str, str]) -> cst.ClassDef:
    """Reads of `self.<total>` in the forward and the helper methods it calls (`self._split_heads(q,
    self.num_attention_heads, ...)`) -> the per-rank `self.<count>`: the rank's tensors hold its heads only.
    The constructor keeps the totals (the layers and specs are built from them)."""
    if not counts:
        return cls
    for name in sorted(_forward_methods(cls)):
        method = find_method(cls, name)
        assert method is not None
        cls = with_method(cls, _with_attributes_renamed(method, counts))
    return cls


def _forward_methods(cls: cst.ClassDef) -> set[str]:
    """`forward` and the methods of `cls` it calls as `self.<method>(...)`, transitively."""
    found: set[str] = set()
    pending = ["forward"]
    while pending:
        name = pending.pop()
        method = find_method(cls, name)
        if name in found or method is None or name == "__init__":
            continue
        found.add(name)
        pending.extend(
            called
            for node in walk(method)
            if isinstance(node, cst.Call) and (called := self_attribute(node.func)) is not None
        )
    return found


def _with_attributes_renamed(method: cst.FunctionDef, counts: dict[str, str]) -> cst.FunctionDef:
    class _Rename(cst.CSTTransformer):
        def leave_Attribute(self, original: cst.Attribute, updated: cst.Attribute) -> cst.BaseExpression:
            attribute = self_attribute(updated)
            if attribute in counts:
                return updated.with_changes(attr=cst.Name(counts[attribute]))
            return updated

    result = method.visit(_Rename())
    assert isinstance(result, cst.FunctionDef)
    return result


def _with_separate_branch(
    dispatch: cst.BaseStatement, separate: list[cst.BaseStatement], *, keep_bias_note: bool
) -> cst.BaseStatement:
    """The variant `if` with the source's projections as its `else` branch (and the GQA layer's bias note
    only where the projections have a bias)."""
    assert isinstance(dispatch, cst.If) and isinstance(dispatch.orelse, cst.If)
    gqa = dispatch
    if not keep_bias_note:
        first, *rest = dispatch.body.body
        first = first.with_changes(
            leading_lines=[line for line in first.leading_lines if line.comment is None]
        )
        gqa = dispatch.with_changes(body=dispatch.body.with_changes(body=[first, *rest]))
    fused = dispatch.orelse
    orelse = fused.orelse
    assert isinstance(orelse, cst.Else)
    inner = fused.with_changes(orelse=orelse.with_changes(body=orelse.body.with_changes(body=separate)))
    return gqa.with_changes(orelse=inner)


def _self_assignment(statement: cst.BaseStatement) -> bool:
    value = assigned_value(statement)
    name = assigned_name(statement)
    return name is not None and isinstance(value, cst.Name) and value.value == name


_AUGMENTED_OPERATORS: dict[type[cst.BaseAugOp], type[cst.BaseBinaryOp]] = {
    cst.AddAssign: cst.Add,
    cst.SubtractAssign: cst.Subtract,
    cst.MultiplyAssign: cst.Multiply,
    cst.DivideAssign: cst.Divide,
    cst.FloorDivideAssign: cst.FloorDivide,
    cst.ModuloAssign: cst.Modulo,
    cst.PowerAssign: cst.Power,
    cst.MatrixMultiplyAssign: cst.MatrixMultiply,
}


def _out_of_place(statement: cst.BaseStatement, names: set[str]) -> cst.BaseStatement:
    """`statement` with each in-place op on one of `names` written as an assignment of its out-of-place
    form: `q.clamp_(...)` -> `q = q.clamp(...)`, `q *= s` -> `q = q * s` (same values; the local name
    is the tensor's only reference)."""

    class _OutOfPlace(cst.CSTTransformer):
        def visit_FunctionDef(self, node: cst.FunctionDef) -> bool:
            return False  # a nested function's names are its own

        def leave_Expr(self, original_node: cst.Expr, updated_node: cst.Expr) -> cst.BaseSmallStatement:
            call = updated_node.value
            if not (
                isinstance(call, cst.Call)
                and isinstance(call.func, cst.Attribute)
                and isinstance(call.func.value, cst.Name)
                and call.func.value.value in names
            ):
                return updated_node
            method = call.func.attr.value
            if not method.endswith("_") or method.startswith("_"):
                return updated_node
            out_of_place = call.with_changes(func=call.func.with_changes(attr=cst.Name(method[:-1])))
            return cst.Assign(targets=[cst.AssignTarget(cst.Name(call.func.value.value))], value=out_of_place)

        def leave_AugAssign(
            self, original_node: cst.AugAssign, updated_node: cst.AugAssign
        ) -> cst.BaseSmallStatement:
            target = updated_node.target
            operator = _AUGMENTED_OPERATORS.get(type(updated_node.operator))
            if not isinstance(target, cst.Name) or target.value not in names or operator is None:
                return updated_node
            value = cst.BinaryOperation(
                left=cst.Name(target.value), operator=operator(), right=operand(updated_node.value)
            )
            return cst.Assign(targets=[cst.AssignTarget(cst.Name(target.value))], value=value)

    result = statement.visit(_OutOfPlace())
    assert isinstance(result, cst.BaseStatement)
    return result


def _fused_without_head_check(statement: cst.BaseStatement) -> cst.BaseStatement:
    """The variant choice whose fused branch reads `elif trn_config.fuse_qkv:` where the template's
    `and <heads> == <kv heads>` compares one count with itself (a source without a K/V head count)."""

    class _Drop(cst.CSTTransformer):
        def leave_BooleanOperation(
            self, original_node: cst.BooleanOperation, updated_node: cst.BooleanOperation
        ) -> cst.BaseExpression:
            right = updated_node.right
            if (
                isinstance(updated_node.operator, cst.And)
                and isinstance(right, cst.Comparison)
                and len(right.comparisons) == 1
                and isinstance(right.comparisons[0].operator, cst.Equal)
                and right.left.deep_equals(right.comparisons[0].comparator)
            ):
                return updated_node.left
            return updated_node

    result = statement.visit(_Drop())
    assert isinstance(result, cst.BaseStatement)
    return result
