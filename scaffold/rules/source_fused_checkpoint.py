"""NXS027 source-fused-checkpoint: a linear the source splits into parts keeps its checkpoint tensor.

Analysis reads a projection fused contiguously in the source (`qkv_proj` sliced into q, k and v,
`gate_up_proj` chunked into gate and up) as one linear per part (`scaffold.analysis.source_fusions`), so
the other rules give the parts their usual parallel form: NxD's attention variants, the fused
`gate_up_proj`, or plain column-parallel linears. The checkpoint still holds one tensor. This rule makes
the owning module a `CustomModule` and, after the constructor has built its specs, wraps the spec that
owns the parts in a `SourceFusedLinearSpec` (inserted once per file from
templates/definitions/source_fused_linears.py): loading splits the fused tensor into the parts and hands
them to that spec; saving joins the parts back, bit for bit. Parts interleaved per head in the source
(GPT-NeoX's `query_key_value` viewed as `(..., heads, 3 * head_size)`) give the spec their group count,
and it de-interleaves them: each rank then holds whole heads' q, k and v. So do parts split out of groups
the fused output is cut into first (CodeGen's `qkv_proj` reshaped into `mp_num` groups of `q|v|k`): the
parts are given in the source's order, so the spec reads each group's shares in that order. A linear the
source builds as transformers' `Conv1D` (weight stored `[in, out]`; `scaffold.analysis.conv1d`) gets the
subclass `TransposedSourceFusedLinearSpec` (templates/definitions/transposed_linears.py, inserted after the
first definitions where a file needs it), split into parts or not: it transposes the weight on loading and
back on saving. A helper method that picks the parts out of groups of heads, one layout per branch of config
flags (Falcon's `_split_heads`: `scaffold.analysis.helper_fusions`), gives sizes and a group count that
choose the branch's layout; so does a split the forward itself makes under such a test, one layout per
branch (GPTBigCode's contiguous q|k|v with one K/V head, or per-head interleaved: `scaffold.analysis.branch_fusions`).

The pretrained class's `_init_weights` may name the source linear (`init_weight(module.Wi, std)`), which
the generated module no longer holds: NXS015 (parallel-init-redraws) re-points it at the layers held in its
place (`held_layers`).

Where the source cuts the fused output into groups itself, the forward still cuts each rank's share of the parts into the source's groups itself
(`(..., mp_num, -1)`, then heads): that holds only when every rank has a multiple of the groups in heads, so
the constructor, after the per-rank head counts (NXS021's `self.num_heads`, `self.num_key_value_heads`),
raises `NotImplementedError` naming the counts and a tensor-parallel size that works.
"""

from __future__ import annotations

import libcst as cst
import libcst.matchers as m

from ..blueprint import SourceFusion
from ..syntax import code, find_method, with_base, with_body, with_method
from . import templates
from .base import Rule, stored_example

TEMPLATES = "source_fused_checkpoint"
DEFINITIONS = "source_fused_linears"
TRANSPOSED_DEFINITIONS = "transposed_linears"  # linears built as transformers' Conv1D (weight `[in, out]`)
CUSTOM_MODULE = "CustomModule"
PER_RANK_HEADS = ("num_heads", "num_key_value_heads")  # what NXS021's constructor sets per rank


class SourceFusedCheckpoint(Rule):
    CODE = "NXS027"
    NAME = "source-fused-checkpoint"
    SUMMARY = (
        "q|k|v or gate|up fused in the source (one after the other, or interleaved per head or group): parts as "
        "parallel layers + SourceFusedLinearSpec"
    )
    ADVICE = (
        "Splits of another shape than contiguous slices `t[..., a:b]`, `t.chunk(n, dim=-1)` (unpacked, or "
        "bound to one name read only as `c[i]`) or an unpacked "
        "`t.split(size, dim=-1)` of one linear (after in-place clamps), "
        "`t.chunk(n, dim=-1)` of its output viewed as `(..., n * d)`, `torch.split(g, size, dim=-1)` "
        "of its output cut into groups `(..., groups, -1)`, or a helper method picking each part's heads out "
        "of groups under tests of config flags (one layout per branch), or such a split in the forward's "
        "`if`/`else` on config flags (one of these layouts per branch), are refused (R007, R003). Disabling "
        "it leaves the generated model expecting one checkpoint tensor per part."
    )
    REQUIRES = ("NXS004",)
    EXAMPLES = (
        stored_example(CODE, "phi3", "Phi3MLP"),
        stored_example(CODE, "falcon", "FalconAttention"),
        stored_example(CODE, "codegen", "CodeGenAttention"),
    )

    def visit_FunctionDef(self, node: cst.FunctionDef) -> bool:
        return False  # the rule rewrites whole classes: nothing to visit inside a method

    def leave_ClassDef(self, original_node: cst.ClassDef, updated_node: cst.ClassDef) -> cst.ClassDef:
        fusions = [f for f in self.blueprint.fusions if f.owner == updated_node.name.value]
        if not fusions or self.refusal_for(updated_node.name.value) is not None:
            return updated_node
        init = find_method(updated_node, "__init__")
        assert init is not None, "the split source linears are built in __init__"
        for fusion in fusions:
            init = self._with_spec(init, fusion)
        self.add_host_import("transformations_utils", CUSTOM_MODULE)
        return with_base(with_method(updated_node, init), CUSTOM_MODULE)  # type: ignore[arg-type]

    def leave_Module(self, original_node: cst.Module, updated_node: cst.Module) -> cst.Module:
        converted = {f.owner for f in self.blueprint.fusions if self.refusal_for(f.owner) is None}
        if not converted:
            return updated_node
        statements, needed = templates.definitions(DEFINITIONS, self.blueprint.style)
        if any(f.transposed for f in self.blueprint.fusions if f.owner in converted):
            transposed, more = templates.definitions(TRANSPOSED_DEFINITIONS, self.blueprint.style)
            statements += transposed
            needed |= {n for n in more if n.module != DEFINITIONS}
        self.add_template_imports(needed)
        body = list(updated_node.body)
        first = next(i for i, s in enumerate(body) if isinstance(s, cst.ClassDef | cst.FunctionDef))
        statements[0] = statements[0].with_changes(  # type: ignore[union-attr]
            leading_lines=[cst.EmptyLine(), cst.EmptyLine()]
        )
        return updated_node.with_changes(body=[*body[:first], *statements, *body[first:]])

    def _with_spec(self, init: cst.FunctionDef, fusion: SourceFusion) -> cst.FunctionDef:
        """The constructor with the wrapping statement after the last statement naming a part."""
        body = list(init.body.body)
        mentions = [
            index
            for index, statement in enumerate(body)
            if any(_names_part(code(statement), part) for part in fusion.part_names)
        ]
        assert mentions, "the parts are built in __init__"
        fields: dict[str, cst.BaseExpression] = {
            "source": cst.SimpleString(f'"{fusion.source_name}"'),
            "parts": cst.List([cst.Element(cst.SimpleString(f'"{part}"')) for part in fusion.part_names]),
            "sizes": cst.List([cst.Element(cst.parse_expression(size)) for size in fusion.part_sizes]),
            "bias": cst.parse_expression(fusion.bias),
        }
        template = "transposed_spec" if fusion.transposed else "source_fused_spec"
        if fusion.groups is not None:
            template = "transposed_interleaved_spec" if fusion.transposed else "source_fused_interleaved_spec"
            fields["groups"] = cst.parse_expression(fusion.groups)
        statement, needed = templates.fill_statements(TEMPLATES, template, self.blueprint.style, **fields)
        self.add_template_imports(
            {n for n in needed if n.module not in (DEFINITIONS, TRANSPOSED_DEFINITIONS)}
        )
        last = mentions[-1] + 1
        body = [*body[:last], *statement, *body[last:]]
        if fusion.groups_in_forward and fusion.groups is not None:
            body = self._with_group_guard(body, fusion)
        result = with_body(init, body)
        assert isinstance(result, cst.FunctionDef)
        return result

    def _with_group_guard(
        self, body: list[cst.BaseStatement], fusion: SourceFusion
    ) -> list[cst.BaseStatement]:
        """`body` with the check that each rank's heads fill the forward's groups, after the statements
        that set the per-rank head counts; unchanged where the constructor sets none (no attention variant)."""
        heads = _per_rank_heads(body)
        if heads is None:
            return body
        at, total = heads
        groups = fusion.groups
        shown = groups if groups.isdigit() else f"{{{groups}}}"  # a constant as it is, else its value
        parts = ", ".join(fusion.part_names)
        message = cst.parse_expression(
            f'(f"{{self.num_heads}} query and {{self.num_key_value_heads}} key/value heads per rank "\n'
            f'f"({{{total}}} heads over tensor-parallel size {{tp_size}}): the forward cuts each rank\'s "\n'
            f'"{parts} into {shown} groups of whole heads (the source\'s fused {fusion.source_name}); "\n'
            f'"use a tensor-parallel size that leaves a multiple of {shown} heads per rank")'
        ).with_changes(lpar=[], rpar=[])  # the call's own parentheses hold the lines together
        guard, needed = templates.fill_statements(
            TEMPLATES,
            "refuse_indivisible_groups",
            self.blueprint.style,
            groups=cst.parse_expression(groups),
            message=message,
        )
        self.add_template_imports(needed)
        return [*body[:at], *guard, *body[at:]]


def _per_rank_heads(body: list[cst.BaseStatement]) -> tuple[int, str] | None:
    """(index after the last statement setting the per-rank head counts, the total query head count) of a
    constructor NXS021 gave `self.num_heads = divide(<heads>, tp_size)` and `self.num_key_value_heads = ...`."""
    total: str | None = None
    after: dict[str, int] = {}
    for index, statement in enumerate(body):
        found = m.extract(
            statement,
            m.SimpleStatementLine(
                body=[
                    m.Assign(
                        targets=[
                            m.AssignTarget(
                                m.Attribute(m.Name("self"), m.SaveMatchedNode(m.Name(), "attribute"))
                            )
                        ],
                        value=m.Call(
                            func=m.Name("divide"),
                            args=[m.Arg(m.SaveMatchedNode(m.DoNotCare(), "heads")), m.Arg(m.Name("tp_size"))],
                        ),
                    )
                ]
            ),
        )
        if not found:
            continue
        attribute = found["attribute"].value  # type: ignore[union-attr]
        if attribute in PER_RANK_HEADS:
            after[attribute] = index + 1
            if attribute == PER_RANK_HEADS[0]:
                total = code(found["heads"])  # type: ignore[arg-type]
    if total is None or len(after) != len(PER_RANK_HEADS):
        return None
    return max(after.values()), total


def _names_part(text: str, part: str) -> bool:
    """The statement's code builds or names the part (`self.part = ...` or the string `"part"`)."""
    return f"self.{part} " in text or f"self.{part}=" in text or f'"{part}"' in text
