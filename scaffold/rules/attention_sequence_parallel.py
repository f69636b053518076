"""NXS022 attention-sequence-parallel: the attention forward under NxD's sequence-parallel layout.

Under sequence parallelism the attention input is `(S/T, B, D)`, sequence-first and sharded; a column
layer gathers the sequence, so each projection returns `(S, B, h_r*d)` (h_r: per-rank heads). The rule
keeps the source's head split, per-head norms (over head_dim, before RoPE), RoPE and attention call as
written, and makes their input batch-first over the full sequence:

- the leading shape the source reads from its input (`x.shape[:-1]`) becomes `(B, S)` under SP;
- right after the projections, `(S, B, h_r*d) -> (B, S, h_r*d)` (a transpose of the first two axes);
- before the output projection, the attention output `(B, S, h_r*d)` goes back to `(S, B, h_r*d)`, the
  layout the row-parallel layer reduce-scatters along the sequence.
Without SP nothing changes: the projections return `(B, S, h_r*d)` as in transformers. Every step is a
view or a transpose, so gradients flow as in the source.

Needs the projections computed as separate assignments (NXS021). Stop-gap: the Blueprint does not say
how the forward reads its input's shape; `_leading_shape` finds `x.shape[:-1]` and refuses other reads.
"""

from __future__ import annotations

import libcst as cst

from ..blueprint import AttentionGeometry
from ..errors import ScaffoldError
from . import _parallel_code as pc
from .attention_variants import FUSED_NAME
from .base import Rule, stored_example

SP = "self.trn_config.sequence_parallel_enabled"


class AttentionSequenceParallel(Rule):
    CODE = "NXS022"
    NAME = "attention-sequence-parallel"
    SUMMARY = (
        "attention forward under SP: (S, B, h*d) projections to batch-first heads, (S, B, h*d) into o_proj"
    )
    EXAMPLES = (stored_example(CODE, "qwen3", "Qwen3Attention"),)

    def leave_ClassDef(self, original_node: cst.ClassDef, updated_node: cst.ClassDef) -> cst.ClassDef:
        for geometry in self.blueprint.attention:
            if geometry.owner == updated_node.name.value:
                forward = pc.required_method(updated_node, "forward", self.CODE)
                forward = self._rewrite(forward, geometry)
                pc.schedule_layer_imports(self.context, (pc.NXD_STATE, "get_tensor_model_parallel_size"))
                return pc.with_method(updated_node, forward)
        return updated_node

    def _rewrite(self, forward: cst.FunctionDef, geometry: AttentionGeometry) -> cst.FunctionDef:
        body = list(forward.body.body)
        names, last = self._projection_outputs(body, geometry)
        q_name, k_name, v_name = names
        to_batch_first = pc.statements(
            f"if {SP}:\n"
            "    # The column layers gathered the sequence: (S, B, h*d) -> batch-first (B, S, h*d).\n"
            f"    {q_name}, {k_name}, {v_name} = (\n"
            f"        {q_name}.transpose(0, 1),\n"
            f"        {k_name}.transpose(0, 1),\n"
            f"        {v_name}.transpose(0, 1),\n"
            "    )\n"
        )[0]
        body.insert(last + 1, to_batch_first)
        body = self._output(body, geometry, pc.names_in(forward))
        body = self._leading_shape(body, pc.first_parameter(forward), geometry.owner, pc.names_in(forward))
        return pc.with_body(forward, body)

    def _projection_outputs(
        self, body: list[cst.BaseStatement], geometry: AttentionGeometry
    ) -> tuple[tuple[str, str, str], int]:
        """Names holding the q, k, v projections and the index of the last statement computing them."""
        names: dict[str, str] = {}
        last = -1
        projections = (geometry.q, geometry.k, geometry.v)
        for index, statement in enumerate(body):
            for node in pc.walk(statement):
                if not isinstance(node, cst.SimpleStatementLine):
                    continue
                value = pc.assigned_value(node)
                target = pc.assigned_name(node)
                if target is None or not isinstance(value, cst.Call) or len(value.args) != 1:
                    continue
                attribute = pc.self_attribute(value.func)
                if attribute in projections:
                    names[attribute] = target
                    last = max(last, index)
            if any(pc.self_attribute(n) == FUSED_NAME for n in pc.walk(statement)):
                last = max(last, index)
        if set(names) != set(projections):
            raise ScaffoldError(
                f"{self.CODE}: {geometry.owner}.forward does not assign the q/k/v projections to plain names "
                "(NXS021 computes them up front; is it disabled?)"
            )
        return (names[geometry.q], names[geometry.k], names[geometry.v]), last

    def _output(
        self, body: list[cst.BaseStatement], geometry: AttentionGeometry, taken: set[str]
    ) -> list[cst.BaseStatement]:
        """Give the output projection its sequence-first input under SP."""
        calls = pc.self_calls(cst.IndentedBlock(body=body), geometry.o)
        if len(calls) != 1 or len(calls[0].args) != 1:
            raise ScaffoldError(
                f"{self.CODE}: {geometry.owner}.forward must call self.{geometry.o}(x) exactly once"
            )
        call = calls[0]
        position = next(i for i, s in enumerate(body) if any(n is call for n in pc.walk(s)))
        argument = call.args[0].value
        new: list[cst.BaseStatement] = []
        if isinstance(argument, cst.Name):
            name = argument.value
        else:  # hoist the expression into a variable whose layout can change
            name = pc.fresh_name("attn_output", taken)
            new += pc.statements(f"{name} = {pc.code(argument)}\n")
            replaced = call.with_changes(args=[call.args[0].with_changes(value=cst.Name(name))])
            body[position] = pc.replace_nodes(body[position], {call: replaced})
        new += pc.statements(
            f"if {SP}:\n"
            f"    # {geometry.o} reduce-scatters along the sequence: back to sequence-first (S, B, h*d).\n"
            f"    {name} = {name}.transpose(0, 1)\n"
        )
        body[position], new[0] = pc.leading_to(body[position], new[0])
        return body[:position] + new + body[position:]

    def _leading_shape(
        self, body: list[cst.BaseStatement], source_input: str, owner: str, taken: set[str]
    ) -> list[cst.BaseStatement]:
        """`x.shape[:-1]` -> `(B, S)` under SP, computed once from the sequence-first shard."""
        leading = [n for s in body for n in pc.walk(s) if _is_leading_shape(n, source_input)]
        others = [
            s
            for s in body
            if any(
                _reads_shape(n, source_input) and not any(n is child for m in leading for child in pc.walk(m))
                for n in pc.walk(s)
            )
        ]
        if others:
            text = pc.code(others[0]).strip().splitlines()[0]
            if not self.options.allow_unsupported:
                raise ScaffoldError(
                    f"{self.CODE}: {owner}.forward reads the shape of `{source_input}` in `{text}`; only "
                    f"`{source_input}.shape[:-1]` is converted to the sequence-parallel layout",
                    hint="pass --allow-unsupported to write a TODO marker there",
                )
            index = next(i for i, s in enumerate(body) if s is others[0])
            note = cst.EmptyLine(
                comment=cst.Comment(
                    f"# TODO({self.CODE}): under sequence parallelism `{source_input}` is (S/T, B, D); make this "
                    "shape batch-first over the full sequence"
                )
            )
            body[index] = body[index].with_changes(leading_lines=[*body[index].leading_lines, note])
        if not leading:
            return body
        first = next(i for i, s in enumerate(body) if any(n is leading[0] for n in pc.walk(s)))
        target = pc.assigned_name(body[first])
        value = pc.assigned_value(body[first])
        in_place = target is not None and value is leading[0]
        name = target if in_place else pc.fresh_name("input_shape", taken)
        definition = pc.statements(
            f"if {SP}:\n"
            f"    # {source_input} is (S/T, B, D): sequence-first and sharded over the tensor-parallel ranks.\n"
            f"    {name} = ({source_input}.shape[1], {source_input}.shape[0] * get_tensor_model_parallel_size())\n"
            "else:\n"
            f"    {name} = {pc.code(leading[0])}\n"
        )[0]
        uses = {node: cst.Name(name) for node in leading}
        rest = [pc.replace_nodes(s, uses) for s in body[first + (1 if in_place else 0) :]]
        if in_place:
            definition = definition.with_changes(leading_lines=body[first].leading_lines)
        else:
            rest[0], definition = pc.leading_to(rest[0], definition)
        return [*body[:first], definition, *rest]


def _is_leading_shape(node: cst.CSTNode, source_input: str) -> bool:
    """`x.shape[:-1]` or `x.size()[:-1]`."""
    if not isinstance(node, cst.Subscript) or len(node.slice) != 1:
        return False
    index = node.slice[0].slice
    if not (
        isinstance(index, cst.Slice)
        and index.lower is None
        and index.step is None
        and index.upper is not None
        and pc.code(index.upper).replace(" ", "") == "-1"
    ):
        return False
    value = node.value
    if isinstance(value, cst.Call) and not value.args:
        value = value.func
    return _reads_shape(value, source_input)


def _reads_shape(node: cst.CSTNode, source_input: str) -> bool:
    """`x.shape` or `x.size`."""
    return (
        isinstance(node, cst.Attribute)
        and isinstance(node.value, cst.Name)
        and node.value.value == source_input
        and node.attr.value in ("shape", "size")
    )
