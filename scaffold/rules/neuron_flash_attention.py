"""NXS023 neuron-flash-attention: eager attention plus the Neuron flash path, nothing else.

- The attention forward's dispatch over transformers' `ALL_ATTENTION_FUNCTIONS` becomes: the source's
  eager function (`AttentionGeometry.eager_function`), or `neuron_flash_attention_forward` when
  `config._attn_implementation == "flash_attention_2"` (optimum-neuron's switch). That function calls
  NxD's `nki_flash_attn_func` (causal, K/V expanded to every query head, `(B, h, d, S)` inputs when
  `trn_config.transpose_nki_inputs`) and returns the eager path's `(B, S, h, d)` layout.
- The eager function recomputes the causal mask when no mask is passed (`trn_config.recompute_causal_mask`,
  the host default: the base model then builds none): the call passes `causal=attention_mask is None`.
  The mask is made on the scores' device (optimum-neuron hard-codes `device="xla"`: deviation ON-09).
  The flash function takes `causal` too: its kernel is causal whichever way the mask came.
- A sliding window the source passes to the attention function is applied to the scores in the eager
  path (transformers applies it through its mask, which the training host does not build); the flash
  kernel has none, so that path refuses windows shorter than the sequence. Softcapping likewise.

The inserted code comes from templates/code/neuron_flash_attention.py; the shapes it rewrites (the table
lookup, the eager function's mask block) are checked in analysis (R027).
"""

from __future__ import annotations

import libcst as cst
import libcst.matchers as m

from ..blueprint import Blueprint
from ..patterns import ATTENTION_TABLE_LOOKUP, IS_NOT_NONE
from ..syntax import (
    assigned_name,
    assigned_value,
    find_definition,
    find_method,
    keyword_argument,
    replace_nodes,
    walk,
    with_body,
    with_definition_spacing,
    with_method,
)
from . import templates
from .base import Rule, stored_example, with_todo

TEMPLATES = "neuron_flash_attention"
FLASH_FUNCTION = "neuron_flash_attention_forward"
REPEAT_KV = "repeat_kv"
SCORES = "attn_weights"  # the templates' name for the eager function's scores
INTERFACE = "attention_interface"  # the templates' name for the forward's attention function
OPTIONAL_PARAMETERS = {"sliding_window": "window", "softcap": "softcap"}


class NeuronFlashAttention(Rule):
    CODE = "NXS023"
    NAME = "neuron-flash-attention"
    SUMMARY = "eager attention (causal mask recomputed without a mask) + NKI flash path for flash_attention_2"
    ADVICE = (
        "An attention that does not pick its kernel from transformers' table is refused (R027). Disable it to "
        "keep transformers' dispatch and add the Neuron flash path by hand."
    )
    REQUIRES = ("NXS004",)
    EXAMPLES = (
        stored_example(CODE, "mistral", "eager_attention_forward"),
        stored_example(CODE, "llama", "LlamaAttention"),
        stored_example(CODE, "qwen2_moe", "Qwen2MoeAttention"),
    )

    def visit_ClassDef(self, node: cst.ClassDef) -> bool:
        return False  # the rule rewrites the module's body as a whole

    def visit_FunctionDef(self, node: cst.FunctionDef) -> bool:
        return False

    def leave_Module(self, original_node: cst.Module, updated_node: cst.Module) -> cst.Module:
        body = list(updated_node.body)
        eager_functions: set[str] = set()
        owners: set[str] = set()
        for geometry in self.blueprint.attention:
            index = find_definition(body, geometry.owner)
            if index is None or geometry.owner in owners:  # one class may have several instances
                continue
            owners.add(geometry.owner)
            cls = body[index]
            assert isinstance(cls, cst.ClassDef)
            refusal = self.refusal_for(geometry.owner)
            if refusal is not None:
                body[index] = with_todo(cls, refusal)
                continue
            forward = find_method(cls, "forward")
            if forward is not None and adds_head_bias(self.blueprint, forward):
                continue  # eager only, with the bias it adds (NXS031)
            assert forward is not None and geometry.eager_function is not None, (
                "checked in analysis (R017, R027)"
            )
            body[index] = with_method(cls, self._dispatch(forward))
            eager_functions.add(geometry.eager_function)
        for eager in sorted(eager_functions):
            index = find_definition(body, eager)
            assert index is not None, "checked in analysis (R027)"
            body[index] = self._eager(body[index])  # type: ignore[arg-type]
            if find_definition(body, FLASH_FUNCTION) is None:
                body.insert(index + 1, with_definition_spacing(self._flash_function(body)))
        return updated_node.with_changes(body=body)

    # --- the attention forward ------------------------------------------------------------------------

    def _dispatch(self, forward: cst.FunctionDef) -> cst.FunctionDef:
        """Swap the backend table for the flash switch; mark the call causal when no mask is given."""
        body = list(forward.body.body)
        index, variable = table_dispatch(forward)  # type: ignore[misc]
        (switch,), needed = templates.fill_statements(
            TEMPLATES, "flash_switch", self.blueprint.style, renames={INTERFACE: variable}
        )
        self.add_template_imports(needed)
        body[index] = switch.with_changes(leading_lines=body[index].leading_lines)
        call = attention_call(body[index + 1 :], variable)
        mask = mask_argument(call) if call is not None else None
        assert call is not None and mask is not None, "checked in analysis (R027)"
        causal = keyword_argument(
            "causal",
            cst.Comparison(left=mask, comparisons=[cst.ComparisonTarget(cst.Is(), cst.Name("None"))]),
        )
        args = list(call.args)
        position = next((i for i, arg in enumerate(args) if arg.star), len(args))
        previous = args[position - 1]
        args.insert(position, causal.with_changes(comma=_without_comment(previous.comma)))
        if position == len(args) - 1:  # appended last: the previous argument needs a comma
            args[position - 1] = previous.with_changes(
                comma=cst.Comma(whitespace_after=cst.SimpleWhitespace(" "))
            )
        updated = call.with_changes(args=args)
        result = with_body(forward, [replace_nodes(s, {call: updated}) for s in body])  # type: ignore[misc]
        assert isinstance(result, cst.FunctionDef)
        return result

    # --- the eager function ---------------------------------------------------------------------------

    @property
    def _window(self) -> bool:
        return self.blueprint.features.sliding_window is not None

    @property
    def _softcap(self) -> bool:
        return self.blueprint.features.attention_softcap is not None

    def _eager(self, function: cst.FunctionDef) -> cst.FunctionDef:
        """Add `causal` (and `sliding_window`) parameters and the masks they stand for."""
        index, scores = mask_block(function)  # type: ignore[misc]
        body = list(function.body.body)
        style = self.blueprint.style
        (recompute,), needed = templates.fill_statements(
            TEMPLATES, "causal_mask_recomputed", style, renames={SCORES: scores}
        )
        self.add_template_imports(needed)
        assert isinstance(recompute, cst.If)
        body[index] = body[index].with_changes(orelse=recompute.orelse)
        if self._window:
            (window,), needed = templates.fill_statements(
                TEMPLATES, "sliding_window_applied", style, renames={SCORES: scores}
            )
            self.add_template_imports(needed)
            body.insert(index + 1, window)
        names = [param.name.value for param in function.params.params]
        added, needed = templates.fill_parameters(TEMPLATES, "eager_attention_parameters", style)
        self.add_template_imports(needed)
        added = [p for p in added if p.name.value == "causal" or (self._window and p.name.value not in names)]
        params = list(function.params.params)
        comma = params[-1].comma
        if isinstance(comma, cst.MaybeSentinel):  # the last parameter: separate it from the new ones
            params[-1] = params[-1].with_changes(comma=cst.Comma(whitespace_after=cst.SimpleWhitespace(" ")))
            added = [p.with_changes(comma=params[-1].comma) for p in added[:-1]] + [
                p.with_changes(comma=cst.MaybeSentinel.DEFAULT) for p in added[-1:]
            ]
        else:  # more follow (`**kwargs`): lay the new ones out like the last one
            added = [p.with_changes(comma=comma) for p in added]
        parameters = function.params.with_changes(params=[*params, *added])
        result = with_body(function.with_changes(params=parameters), body)
        assert isinstance(result, cst.FunctionDef)
        return result

    def _flash_function(self, module_body: list[cst.BaseStatement]) -> cst.FunctionDef:
        """The flash path, without the parameters and checks the attention does not need."""
        has_repeat = (
            REPEAT_KV in self.blueprint.functions and find_definition(module_body, REPEAT_KV) is not None
        )
        (function,), needed = templates.fill_statements(
            TEMPLATES, "flash_attention_function", self.blueprint.style
        )
        self.add_template_imports(needed)
        assert isinstance(function, cst.FunctionDef)
        unused = {name for name, feature in OPTIONAL_PARAMETERS.items() if not getattr(self, f"_{feature}")}
        params = [p for p in function.params.params if p.name.value not in unused]
        body = [s for s in function.body.body if not (isinstance(s, cst.If) and _tests_any(s, unused))]
        if not has_repeat:
            repeats = [i for i, s in enumerate(body) if any(_calls(n, REPEAT_KV) for n in walk(s))]
            expanded, needed = templates.fill_statements(TEMPLATES, "kv_heads_repeated", self.blueprint.style)
            self.add_template_imports(needed)
            body[repeats[0] : repeats[-1] + 1] = expanded
        function = function.with_changes(params=function.params.with_changes(params=params))
        result = with_body(function, body)
        assert isinstance(result, cst.FunctionDef)
        return result


# --- the shapes the rule rewrites (shared with the analysis, which checks them: R027) -----------------


def table_dispatch(forward: cst.FunctionDef) -> tuple[int, str] | None:
    """(index, variable) of the forward's top-level `if` that picks its attention function from
    transformers' table, and the variable it assigns; None when there is none."""
    for index, statement in enumerate(forward.body.body):
        if isinstance(statement, cst.If) and m.findall(statement.body, ATTENTION_TABLE_LOOKUP):
            for node in walk(statement.body):
                if isinstance(node, cst.SimpleStatementLine) and (name := assigned_name(node)) is not None:
                    return index, name
            return None
    return None


def eager_default(forward: cst.FunctionDef) -> str | None:
    """The function the forward's attention variable holds before the table lookup (the eager one)."""
    found = table_dispatch(forward)
    if found is None:
        return None
    index, variable = found
    eager = None
    for statement in forward.body.body[:index]:
        if assigned_name(statement) == variable:
            value = assigned_value(statement)
            eager = value.value if isinstance(value, cst.Name) else None
    return eager


def attention_call(statements: list[cst.BaseStatement], variable: str) -> cst.Call | None:
    """The one call of the attention variable in `statements` (None when there is not exactly one)."""
    calls = [
        n
        for s in statements
        for n in walk(s)
        if isinstance(n, cst.Call) and isinstance(n.func, cst.Name) and n.func.value == variable
    ]
    return calls[0] if len(calls) == 1 else None


def mask_argument(call: cst.Call) -> cst.BaseExpression | None:
    """The attention-mask argument of a transformers attention-function call (keyword or 5th)."""
    for arg in call.args:
        if arg.keyword is not None and arg.keyword.value == "attention_mask":
            return arg.value
    positional = [arg for arg in call.args if arg.keyword is None and not arg.star]
    return positional[4].value if len(positional) > 4 else None


def adds_head_bias(blueprint: Blueprint, forward: cst.FunctionDef) -> bool:
    """Whether an attention forward computes its scores inline with a per-head bias the layer stack builds
    (no transformers dispatch, a plain `if <mask> is not None:` block adding the mask): NXS031 converts it,
    and NXS023 has no dispatch to rewrite there."""
    return (
        bool(blueprint.head_biases)
        and table_dispatch(forward) is None
        and mask_block(forward, filled=True) is not None
    )


def mask_block(function: cst.FunctionDef, filled: bool = False) -> tuple[int, str] | None:
    """(index, scores) of the eager function's plain `if <mask> is not None:` block that adds the mask to
    the scores as `s = s + mask` (with `filled`, or fills a boolean mask's keys as `s = s.masked_fill(mask,
    value)`: an attention computed inline); None when it has none."""
    names = [param.name.value for param in function.params.params]
    mask = "attention_mask" if "attention_mask" in names else (names[4] if len(names) > 4 else None)
    if mask is None:
        return None
    for index, statement in enumerate(function.body.body):
        if (
            isinstance(statement, cst.If)
            and statement.orelse is None
            and m.matches(statement.test, IS_NOT_NONE)
            and m.matches(statement.test.left, m.Name(mask))  # type: ignore[attr-defined]
        ):
            scores = _scores_name(statement, mask, filled)
            return (index, scores) if scores is not None else None
    return None


def _scores_name(statement: cst.If, mask: str, filled: bool) -> str | None:
    """`s` in the eager function's mask block `s = s + mask` (the attention scores); with `filled`, also in
    a boolean mask's block `s = s.masked_fill(mask, value)`."""
    for node in walk(statement.body):
        if not isinstance(node, cst.SimpleStatementLine):
            continue
        target, value = assigned_name(node), assigned_value(node)
        if target is None:
            continue
        if (
            isinstance(value, cst.BinaryOperation)
            and isinstance(value.operator, cst.Add)
            and isinstance(value.left, cst.Name)
            and value.left.value == target
        ):
            return target
        if filled and m.matches(value, _masked_fill(target, mask)):
            return target
    return None


def _masked_fill(scores: str, mask: str) -> m.BaseMatcherNode:
    """`scores.masked_fill(mask, value)`: a boolean mask, True where a key is masked."""
    return m.Call(
        func=m.Attribute(value=m.Name(scores), attr=m.Name("masked_fill")),
        args=[m.Arg(value=m.Name(mask), keyword=None), m.Arg(keyword=None)],
    )


def _tests_any(statement: cst.If, names: set[str]) -> bool:
    """Whether an `if` tests one of `names` (the flash function's optional checks)."""
    return any(isinstance(n, cst.Name) and n.value in names for n in walk(statement.test))


def _calls(node: cst.CSTNode, name: str) -> bool:
    return isinstance(node, cst.Call) and isinstance(node.func, cst.Name) and node.func.value == name


def _without_comment(comma: cst.Comma | cst.MaybeSentinel) -> cst.Comma | cst.MaybeSentinel:
    """A copy of an argument's comma without the comment that may trail it."""
    if isinstance(comma, cst.Comma) and isinstance(comma.whitespace_after, cst.ParenthesizedWhitespace):
        first_line = comma.whitespace_after.first_line.with_changes(
            comment=None, whitespace=cst.SimpleWhitespace("")
        )
        return comma.with_changes(whitespace_after=comma.whitespace_after.with_changes(first_line=first_line))
    return comma
