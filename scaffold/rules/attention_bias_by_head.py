"""NXS031 attention-bias-by-head: a bias with one slice per head, built once for all layers, sharded by head.

Some layer stacks build a bias for the attention scores from the total head count and pass it to every
layer (ALiBi: `scaffold.analysis.head_bias`). Under tensor parallelism each rank computes the attention of
its own heads, `[r * H / T, (r + 1) * H / T)`, so:

- the stack's forward keeps this rank's slices right after building the bias (`heads_of_rank`,
  templates/definitions/heads_of_rank.py, defined once before the first class), and refuses
  `flash_attention_2`, whose NKI kernel adds no bias; where the bias reads the padding mask, it is built
  from an all-ones mask under `trn_config.recompute_causal_mask` (the host ignores the padding mask then);
- the attention that adds the bias keeps its eager computation as written (no transformers dispatch to
  swap: NXS023 leaves it alone) and masks the future keys itself when no mask is passed
  (`trn_config.recompute_causal_mask`): its `if <mask> is not None:` block (`s = s + mask`, or MPT's
  boolean `s = s.masked_fill(mask, value)`) gets an `else`.

The inserted code comes from templates/code/attention_bias_by_head.py.
"""

from __future__ import annotations

import libcst as cst

from ..blueprint import HeadBias
from ..syntax import find_definition, find_method, leading_to, with_body, with_method
from . import templates
from .base import Rule, stored_example, with_todo
from .neuron_flash_attention import adds_head_bias, mask_block

TEMPLATES = "attention_bias_by_head"
DEFINITIONS = "heads_of_rank"
HELPER = "heads_of_rank"
BIAS = "alibi"  # the templates' name for the bias
HEADS = "num_heads"  # and for the head count it is built from
SCORES = "attn_weights"  # and for the attention's scores
MASK = "attention_mask"  # and for the padding mask the bias reads
SLICED = "nxd_scaffold.head_bias_sliced"  # scratch key: a stack of this module calls the helper


class AttentionBiasByHead(Rule):
    CODE = "NXS031"
    NAME = "attention-bias-by-head"
    SUMMARY = (
        "a per-head attention bias the layer stack builds for every layer (ALiBi) -> each rank keeps its "
        "heads' slices; the attention adding it stays eager and masks the future itself without a mask"
    )
    ADVICE = (
        "The bias must hold one slice per head along its first dimension (`(heads, ...)` or "
        "`(batch * heads, ...)`): the generated code checks it at run time. Disabling the rule leaves every "
        "rank adding the slices of the first heads to its own heads' scores (wrong at TP > 1) and the "
        "attention unmasked without a mask."
    )
    REQUIRES = ("NXS004",)
    EXAMPLES = (
        stored_example(CODE, "bloom", "BloomModel"),
        stored_example(CODE, "bloom", "BloomAttention"),
        stored_example(CODE, "mpt", "MptAttention"),
    )

    def visit_FunctionDef(self, node: cst.FunctionDef) -> bool:
        return False  # the rule rewrites methods whole in leave_ClassDef

    def leave_ClassDef(self, original_node: cst.ClassDef, updated_node: cst.ClassDef) -> cst.ClassDef:
        name = updated_node.name.value
        biases = [bias for bias in self.blueprint.head_biases if bias.owner == name]
        attention = any(geometry.owner == name for geometry in self.blueprint.attention)
        if not biases and not attention:
            return updated_node
        refusal = self.refusal_for(name)
        if refusal is not None:
            return with_todo(updated_node, refusal)
        forward = find_method(updated_node, "forward")
        if forward is None:
            return updated_node
        if biases:
            forward = self._sliced(forward, biases)
            self.context.scratch[SLICED] = True
        elif adds_head_bias(self.blueprint, forward):
            forward = self._masked(forward)
        else:
            return updated_node
        return with_method(updated_node, forward)

    def leave_Module(self, original_node: cst.Module, updated_node: cst.Module) -> cst.Module:
        if not self.context.scratch.pop(SLICED, False):  # no stack here calls the helper
            return updated_node
        body = list(updated_node.body)
        if find_definition(body, HELPER) is not None:
            return updated_node
        statements, needed = templates.definitions(DEFINITIONS, self.blueprint.style)
        self.add_template_imports(needed)
        first = next(i for i, s in enumerate(body) if isinstance(s, cst.ClassDef | cst.FunctionDef))
        statements[0] = statements[0].with_changes(  # type: ignore[union-attr]
            leading_lines=[cst.EmptyLine(), cst.EmptyLine()]
        )
        return updated_node.with_changes(body=[*body[:first], *statements, *body[first:]])

    def _sliced(self, forward: cst.FunctionDef, biases: list[HeadBias]) -> cst.FunctionDef:
        """Each bias kept to this rank's heads right after the statement that builds it."""
        body = list(forward.body.body)
        for bias in biases:
            index = next(
                (
                    i
                    for i, statement in enumerate(body)
                    if isinstance(statement, cst.SimpleStatementLine)
                    and isinstance(statement.body[0], cst.Assign)
                    and len(statement.body[0].targets) == 1
                    and isinstance(statement.body[0].targets[0].target, cst.Name)
                    and statement.body[0].targets[0].target.value == bias.name
                ),
                None,
            )
            assert index is not None, "analysis found the statement in this forward"
            message = (
                f"the NKI flash-attention kernel adds no attention bias (`{bias.name}`, one slice per head); "
                "use eager attention"
            )
            statements, needed = templates.fill_statements(
                TEMPLATES,
                "bias_of_rank_heads",
                self.blueprint.style,
                renames={BIAS: bias.name, HEADS: cst.parse_expression(bias.heads)},
                message=cst.SimpleString(repr(message)),
            )
            self.add_template_imports(needed)
            body[index + 1 : index + 1] = statements
            if bias.mask is not None:
                ignored, needed = templates.fill_statements(
                    TEMPLATES, "padding_ignored", self.blueprint.style, renames={MASK: bias.mask}
                )
                self.add_template_imports(needed)
                body[index], ignored[0] = leading_to(body[index], ignored[0])  # type: ignore[arg-type]
                body[index:index] = ignored
        result = with_body(forward, body)
        assert isinstance(result, cst.FunctionDef)
        return result

    def _masked(self, forward: cst.FunctionDef) -> cst.FunctionDef:
        """The attention's mask block with an `else` that masks the future keys."""
        found = mask_block(forward, filled=True)
        assert found is not None, "checked by adds_head_bias"
        index, scores = found
        (masked,), needed = templates.fill_statements(
            TEMPLATES, "causal_mask_when_none", self.blueprint.style, renames={SCORES: scores}
        )
        self.add_template_imports(needed)
        assert isinstance(masked, cst.If)
        body = list(forward.body.body)
        body[index] = body[index].with_changes(orelse=masked.orelse)  # type: ignore[call-arg]
        result = with_body(forward, body)
        assert isinstance(result, cst.FunctionDef)
        return result
