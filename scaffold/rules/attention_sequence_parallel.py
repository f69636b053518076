"""NXS022 attention-sequence-parallel: the attention forward under NxD's sequence-parallel layout.

Under sequence parallelism the attention input is `(S/T, B, D)`, sequence-first and sharded; a column
layer gathers the sequence, so each projection returns `(S, B, h_r*d)` (h_r: per-rank heads). The rule
keeps the source's head split, per-head norms (over head_dim, before RoPE), RoPE and attention call as
written, and makes their input batch-first over the full sequence:

- the leading shape the source reads from its input (`x.shape[:-1]`, or `x.shape[:2]` of its `(B, S, D)`)
  becomes `(B, S)` under SP;
- right after the projections, `(S, B, h_r*d) -> (B, S, h_r*d)` (a transpose of the first two axes);
- before the output projection, the attention output `(B, S, h_r*d)` goes back to `(S, B, h_r*d)`, the
  layout the row-parallel layer reduce-scatters along the sequence.
Without SP nothing changes: the projections return `(B, S, h_r*d)` as in transformers. Every step is a
view or a transpose, so gradients flow as in the source.

Builds on the projections NXS021 computes up front. Another read of the input's shape than
`x.shape[:-1]` is refused in analysis (R026); with `--allow-unsupported` it is marked where it is. The
inserted code comes from templates/code/attention_sequence_parallel.py.
"""

from __future__ import annotations

import libcst as cst
import libcst.matchers as m

from ..blueprint import AttentionGeometry
from ..patterns import LEADING_SHAPE
from ..syntax import (
    assigned_name,
    assigned_value,
    contains,
    find_method,
    fresh_name,
    leading_to,
    names_in,
    replace_nodes,
    self_attribute,
    self_calls,
    walk,
    with_body,
    with_method,
)
from . import templates
from .attention_variants import FUSED_NAME
from .base import Rule, stored_example, with_todo

TEMPLATES = "attention_sequence_parallel"
TEMPLATE_STATES = ("query_states", "key_states", "value_states")


class AttentionSequenceParallel(Rule):
    CODE = "NXS022"
    NAME = "attention-sequence-parallel"
    SUMMARY = (
        "attention forward under SP: (S, B, h*d) projections to batch-first heads, (S, B, h*d) into o_proj"
    )
    ADVICE = (
        "Other reads of the input's shape are refused (R026) or, with --allow-unsupported, marked where they "
        "are. Disable it only for models trained without sequence parallelism."
    )
    REQUIRES = ("NXS004", "NXS021")
    EXAMPLES = (stored_example(CODE, "qwen3", "Qwen3Attention"),)

    def visit_FunctionDef(self, node: cst.FunctionDef) -> bool:
        return False  # the rule rewrites whole classes: nothing to visit inside a method

    def leave_ClassDef(self, original_node: cst.ClassDef, updated_node: cst.ClassDef) -> cst.ClassDef:
        for geometry in self.blueprint.attention:
            if geometry.owner != updated_node.name.value:
                continue
            refusal = self.refusal_for(geometry.owner)
            if refusal is not None and refusal.code != INPUT_SHAPE_CODE:
                return with_todo(updated_node, refusal)
            forward = find_method(updated_node, "forward")
            assert forward is not None, "checked in analysis (R017)"
            return with_method(updated_node, self._rewrite(forward, geometry))
        return updated_node

    def _rewrite(self, forward: cst.FunctionDef, geometry: AttentionGeometry) -> cst.FunctionDef:
        body = list(forward.body.body)
        names, last = _projection_outputs(body, geometry)
        (to_batch_first,), needed = templates.fill_statements(
            TEMPLATES,
            "projections_to_batch_first",
            self.blueprint.style,
            renames=dict(zip(TEMPLATE_STATES, names, strict=True)),
        )
        self.add_template_imports(needed)
        body.insert(last + 1, to_batch_first)
        body = self._output(body, geometry, names_in(forward))
        body = self._leading_shape(body, forward_input(forward), names_in(forward), geometry.owner)
        result = with_body(forward, body)
        assert isinstance(result, cst.FunctionDef)
        return result

    def _output(
        self, body: list[cst.BaseStatement], geometry: AttentionGeometry, taken: set[str]
    ) -> list[cst.BaseStatement]:
        """Give the output projection its sequence-first input under SP."""
        (call,) = self_calls(cst.IndentedBlock(body=body), geometry.o)  # one call: checked in analysis (R025)
        position = next(i for i, s in enumerate(body) if contains(s, call))
        argument = call.args[0].value
        new: list[cst.BaseStatement] = []
        if isinstance(argument, cst.Name):
            name = argument.value
        else:  # hoist the expression into a variable whose layout can change
            name = fresh_name("attn_output", taken)
            hoisted, _ = templates.fill_statements(
                TEMPLATES, "named_output", self.blueprint.style, renames={"attn_output": name}, value=argument
            )
            new += hoisted
            replaced = call.with_changes(args=[call.args[0].with_changes(value=cst.Name(name))])
            body[position] = replace_nodes(body[position], {call: replaced})  # type: ignore[assignment]
        transpose, _ = templates.fill_statements(
            TEMPLATES, "output_to_sequence_first", self.blueprint.style, renames={"attn_output": name}
        )
        new += transpose
        body[position], new[0] = leading_to(body[position], new[0])
        return body[:position] + new + body[position:]

    def _leading_shape(
        self, body: list[cst.BaseStatement], source_input: str, taken: set[str], owner: str
    ) -> list[cst.BaseStatement]:
        """`x.shape[:-1]` -> `(B, S)` under SP, computed once from the sequence-first shard."""
        refusal = self.refusal_for(owner)
        if refusal is not None:  # other reads of the input's shape (--allow-unsupported): marked in place
            marked = other_shape_reads(body, source_input)
            body = [with_todo(s, refusal) if any(s is other for other in marked) else s for s in body]
        leading = [n for s in body for n in walk(s) if is_leading_shape(n, source_input)]
        if not leading:
            return body
        first = next(i for i, s in enumerate(body) if contains(s, leading[0]))
        target = assigned_name(body[first])
        in_place = target is not None and assigned_value(body[first]) is leading[0]
        name = target if in_place else fresh_name("input_shape", taken)
        (definition,), needed = templates.fill_statements(
            TEMPLATES,
            "leading_shape",
            self.blueprint.style,
            renames={"input_shape": name, "hidden_states": source_input},
            leading=leading[0],
        )
        self.add_template_imports(needed)
        uses = {node: cst.Name(name) for node in leading}
        rest = [replace_nodes(s, uses) for s in body[first + (1 if in_place else 0) :]]
        if in_place:
            definition = definition.with_changes(leading_lines=body[first].leading_lines)
        else:
            rest[0], definition = leading_to(rest[0], definition)  # type: ignore[arg-type]
        return [*body[:first], definition, *rest]  # type: ignore[list-item]


INPUT_SHAPE_CODE = "R026"


def forward_input(forward: cst.FunctionDef) -> str:
    """The forward's input: its first parameter after `self` (there is one: checked in analysis, R025)."""
    return forward.params.params[1].name.value


def is_leading_shape(node: cst.CSTNode, source_input: str) -> bool:
    """`x.shape[:-1]` or `x.size()[:-1]` (or `[:2]`: the input is `(B, S, D)`) of the input `x`."""
    if not m.matches(node, LEADING_SHAPE):
        return False
    value = node.value  # type: ignore[attr-defined]
    if isinstance(value, cst.Call):
        value = value.func
    return reads_shape(value, source_input)


def reads_shape(node: cst.CSTNode, source_input: str) -> bool:
    """`x.shape` or `x.size` of the input `x`."""
    return (
        isinstance(node, cst.Attribute)
        and isinstance(node.value, cst.Name)
        and node.value.value == source_input
        and node.attr.value in ("shape", "size")
    )


def other_shape_reads(body: list[cst.BaseStatement], source_input: str) -> list[cst.BaseStatement]:
    """Top-level statements of a forward reading its input's shape other than as `x.shape[:-1]`."""
    found = []
    for statement in body:
        leading = [n for n in walk(statement) if is_leading_shape(n, source_input)]
        if any(
            reads_shape(node, source_input) and not any(contains(lead, node) for lead in leading)
            for node in walk(statement)
        ):
            found.append(statement)
    return found


def _projection_outputs(
    body: list[cst.BaseStatement], geometry: AttentionGeometry
) -> tuple[tuple[str, str, str], int]:
    """Names holding the q, k, v projections (as NXS021 computes them) and the index of the last statement
    computing them."""
    names: dict[str, str] = {}
    last = -1
    projections = (geometry.q, geometry.k, geometry.v)
    for index, statement in enumerate(body):
        for node in walk(statement):
            if not isinstance(node, cst.SimpleStatementLine):
                continue
            value = assigned_value(node)
            target = assigned_name(node)
            if target is None or not isinstance(value, cst.Call) or len(value.args) != 1:
                continue
            attribute = self_attribute(value.func)
            if attribute in projections:
                names[attribute] = target
                last = max(last, index)
        if any(self_attribute(n) == FUSED_NAME for n in walk(statement)):
            last = max(last, index)
    assert set(names) == set(projections), "NXS021 computes the projections up front"
    return (names[geometry.q], names[geometry.k], names[geometry.v]), last
