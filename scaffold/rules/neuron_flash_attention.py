"""NXS023 neuron-flash-attention: eager attention plus the Neuron flash path, nothing else.

- The attention forward's dispatch over transformers' `ALL_ATTENTION_FUNCTIONS` becomes: the source's
  eager function, or `neuron_flash_attention_forward` when `config._attn_implementation ==
  "flash_attention_2"` (optimum-neuron's switch). That function calls NxD's
  `nki_flash_attn_func` (causal, K/V expanded to every query head, `(B, h, d, S)` inputs when
  `trn_config.transpose_nki_inputs`) and returns the eager path's `(B, S, h, d)` layout.
- The eager function recomputes the causal mask when no mask is passed (`trn_config.recompute_causal_mask`,
  the host default: the base model then builds none): the call passes `causal=attention_mask is None`.
  The mask is made on the scores' device (optimum-neuron hard-codes `device="xla"`: deviation ON-09).
- A sliding window the source passes to the attention function is applied to the scores in the eager
  path (transformers applies it through its mask, which the training host does not build); the flash
  kernel has none, so that path refuses windows shorter than the sequence. Softcapping likewise.

Stop-gap facts the Blueprint does not carry yet (`AttentionGeometry.core_call` is only a location), found
by the helpers marked "stop-gap" below: how the forward picks its attention function (transformers'
`ALL_ATTENTION_FUNCTIONS` table), the module-level eager function it defaults to, the mask argument of
the call, and the eager function's `if mask is not None: scores = scores + mask` block.
"""

from __future__ import annotations

import libcst as cst

from ..blueprint import AttentionGeometry
from ..errors import ScaffoldError
from . import _parallel_code as pc
from ._imports import schedule_removal
from .base import Rule, stored_example

FLASH_FUNCTION = "neuron_flash_attention_forward"
ATTENTION_TABLE = "ALL_ATTENTION_FUNCTIONS"
TABLE_MODULE = "transformers.modeling_utils"


class NeuronFlashAttention(Rule):
    CODE = "NXS023"
    NAME = "neuron-flash-attention"
    SUMMARY = "eager attention (causal mask recomputed without a mask) + NKI flash path for flash_attention_2"
    EXAMPLES = (
        stored_example(CODE, "mistral", "eager_attention_forward"),
        stored_example(CODE, "llama", "LlamaAttention"),
    )

    def leave_Module(self, original_node: cst.Module, updated_node: cst.Module) -> cst.Module:
        if not self.blueprint.attention:
            return updated_node
        body = list(updated_node.body)
        eager_functions: set[str] = set()
        for geometry in self.blueprint.attention:
            index = _class_index(body, geometry.owner)
            if index is None:
                continue
            cls = body[index]
            forward = pc.required_method(cls, "forward", self.CODE)
            if self.options.allow_unsupported and not any(_is_table_dispatch(s) for s in forward.body.body):
                body[index] = pc.with_method(cls, _todo(forward, self.CODE))
                continue
            forward, eager = self._dispatch(forward, geometry)
            body[index] = pc.with_method(cls, forward)
            eager_functions.add(eager)
        # transformers' backend table is no longer read (NXS003 made its import absolute).
        schedule_removal(self.context, TABLE_MODULE, ATTENTION_TABLE)
        for eager in sorted(eager_functions):
            index = _function_index(body, eager)
            if index is None:
                raise ScaffoldError(
                    f"{self.CODE}: the eager attention function `{eager}` is not in the module"
                )
            body[index] = self._eager(body[index])
            if _function_index(body, FLASH_FUNCTION) is None:
                flash = pc.statements(self._flash_text(body))[0]
                flash = flash.with_changes(leading_lines=[cst.EmptyLine(), cst.EmptyLine()])
                body.insert(index + 1, flash)
        if eager_functions:
            pc.schedule_layer_imports(self.context, (pc.NXD_FLASH, "nki_flash_attn_func"))
        return updated_node.with_changes(body=body)

    # --- the attention forward ------------------------------------------------------------------------

    def _dispatch(self, forward: cst.FunctionDef, geometry: AttentionGeometry) -> tuple[cst.FunctionDef, str]:
        """Swap the backend table for the flash switch; mark the call causal when no mask is given.

        Stop-gap: the eager function is the default assigned to the dispatch variable before the `if`.
        """
        body = list(forward.body.body)
        index = next((i for i, s in enumerate(body) if _is_table_dispatch(s)), None)
        if index is None:
            raise ScaffoldError(
                f"{self.CODE}: {geometry.owner}.forward does not pick its attention function from "
                f"{ATTENTION_TABLE}; write the eager/flash switch by hand"
            )
        variable = _assigned_in(body[index])
        eager = None
        for statement in body[:index]:
            if pc.assigned_name(statement) == variable:
                value = pc.assigned_value(statement)
                eager = value.value if isinstance(value, cst.Name) else None
        if eager is None:
            raise ScaffoldError(
                f"{self.CODE}: {geometry.owner}.forward has no `{variable} = <eager function>` default"
            )
        switch = pc.statements(
            'if self.config._attn_implementation == "flash_attention_2":\n'
            f"    {variable} = {FLASH_FUNCTION}\n"
        )[0]
        body[index] = switch.with_changes(leading_lines=body[index].leading_lines)

        calls = [
            n
            for s in body[index + 1 :]
            for n in pc.walk(s)
            if isinstance(n, cst.Call) and isinstance(n.func, cst.Name) and n.func.value == variable
        ]
        if len(calls) != 1:
            raise ScaffoldError(f"{self.CODE}: {geometry.owner}.forward must call `{variable}` exactly once")
        mask = _mask_argument(calls[0])
        if mask is None:
            raise ScaffoldError(
                f"{self.CODE}: {geometry.owner}.forward passes no attention mask to `{variable}`"
            )
        causal = cst.Arg(
            keyword=cst.Name("causal"),
            equal=cst.AssignEqual(
                whitespace_before=cst.SimpleWhitespace(""), whitespace_after=cst.SimpleWhitespace("")
            ),
            value=cst.parse_expression(f"{pc.code(mask)} is None"),
        )
        args = list(calls[0].args)
        position = next((i for i, arg in enumerate(args) if arg.star), len(args))
        template = args[position - 1]
        args.insert(position, causal.with_changes(comma=_without_comment(template.comma)))
        if position == len(args) - 1:  # appended last: the previous argument needs a comma
            args[position - 1] = template.with_changes(
                comma=cst.Comma(whitespace_after=cst.SimpleWhitespace(" "))
            )
        call = calls[0].with_changes(args=args)
        body = [pc.replace_nodes(s, {calls[0]: call}) for s in body]
        return pc.with_body(forward, body), eager

    # --- the eager function ---------------------------------------------------------------------------

    @property
    def _window(self) -> bool:
        return self.blueprint.features.sliding_window is not None

    @property
    def _softcap(self) -> bool:
        return self.blueprint.features.attention_softcap is not None

    def _eager(self, function: cst.FunctionDef) -> cst.FunctionDef:
        """Add `causal` (and `sliding_window`) parameters and the masks they stand for."""
        names = [param.name.value for param in function.params.params]
        mask_name = "attention_mask" if "attention_mask" in names else (names[4] if len(names) > 4 else None)
        body = list(function.body.body)
        index = next((i for i, s in enumerate(body) if mask_name and _tests_not_none(s, mask_name)), None)
        if index is None or body[index].orelse is not None:
            raise ScaffoldError(
                f"{self.CODE}: {function.name.value} has no plain `if {mask_name} is not None:` block to add the "
                "recomputed causal mask to"
            )
        scores = _scores_name(body[index])
        if scores is None:
            raise ScaffoldError(
                f"{self.CODE}: {function.name.value} does not add the mask to the scores as `s = s + mask`"
            )
        recompute = pc.statements(
            "if x:\n"
            "    pass\n"
            "elif causal:\n"
            "    # No mask was built (trn_config.recompute_causal_mask): mask the future keys here.\n"
            f"    future = torch.ones({scores}.shape[-2:], dtype=torch.bool, device={scores}.device).triu(diagonal=1)\n"
            f"    {scores} = {scores}.masked_fill(future, torch.finfo({scores}.dtype).min)\n"
        )[0]
        body[index] = body[index].with_changes(orelse=recompute.orelse)
        if self._window:
            window = pc.statements(
                "if sliding_window is not None:\n"
                "    # Keys `sliding_window` or more positions back are outside the window (transformers applies\n"
                "    # it through its mask; the training host's mask has no window).\n"
                f"    expired = torch.ones({scores}.shape[-2:], dtype=torch.bool, device={scores}.device).tril(\n"
                "        diagonal=-sliding_window\n"
                "    )\n"
                f"    {scores} = {scores}.masked_fill(expired, torch.finfo({scores}.dtype).min)\n"
            )[0]
            body.insert(index + 1, window)
        extra = ["causal: bool = False"]
        if self._window and "sliding_window" not in names:
            extra.append("sliding_window: int | None = None")
        params = list(function.params.params)
        added = [cst.parse_statement(f"def f({text}): pass").params.params[0] for text in extra]
        comma = params[-1].comma
        if isinstance(comma, cst.MaybeSentinel):  # the last parameter: separate it from the new ones
            params[-1] = params[-1].with_changes(comma=cst.Comma(whitespace_after=cst.SimpleWhitespace(" ")))
            added = [p.with_changes(comma=params[-1].comma) for p in added[:-1]] + added[-1:]
        else:  # more follow (`**kwargs`): lay the new ones out like the last one
            added = [p.with_changes(comma=comma) for p in added]
        parameters = function.params.with_changes(params=[*params, *added])
        return pc.with_body(function.with_changes(params=parameters), body)

    def _flash_text(self, module_body: list[cst.BaseStatement]) -> str:
        repeat = "repeat_kv" if "repeat_kv" in self.blueprint.functions else None
        if repeat is not None and _function_index(module_body, repeat) is None:
            repeat = None
        if repeat is None:
            expand = (
                "    key = key.repeat_interleave(module.num_key_value_groups, dim=1)\n"
                "    value = value.repeat_interleave(module.num_key_value_groups, dim=1)\n"
            )
        else:
            expand = (
                f"    key = {repeat}(key, module.num_key_value_groups)\n"
                f"    value = {repeat}(value, module.num_key_value_groups)\n"
            )
        parameters = ""
        checks = ""
        if self._window:
            parameters += "    sliding_window: int | None = None,\n"
            checks += (
                "    if sliding_window is not None and sliding_window < query.shape[-2]:\n"
                "        raise NotImplementedError(\n"
                '            "the NKI flash-attention kernel has no sliding window; use eager attention when the "\n'
                '            "window is shorter than the sequence"\n'
                "        )\n"
            )
        if self._softcap:
            parameters += "    softcap: float | None = None,\n"
            checks += (
                "    if softcap is not None:\n"
                '        raise NotImplementedError("the NKI flash-attention kernel has no softcapping; use eager attention")\n'
            )
        return (
            f"def {FLASH_FUNCTION}(\n"
            "    module: torch.nn.Module,\n"
            "    query: torch.Tensor,\n"
            "    key: torch.Tensor,\n"
            "    value: torch.Tensor,\n"
            "    attention_mask: torch.Tensor | None,\n"
            "    scaling: float,\n"
            "    dropout: float = 0.0,\n"
            f"{parameters}"
            "    **kwargs,\n"
            ") -> tuple[torch.Tensor, None]:\n"
            '    """`flash_attention_2` on Neuron: NxD\'s NKI kernel, causal, returning the eager layout (B, S, h, d).\n'
            "\n"
            "    q, k, v come in as (B, h, S, d). The kernel ignores `attention_mask` (padding is not masked) and\n"
            "    needs a sequence length that is a multiple of 2048; dropout runs on its output.\n"
            '    """\n'
            f"{checks}"
            f"{expand}"
            "    transpose = module.trn_config.transpose_nki_inputs\n"
            "    if transpose:\n"
            "        # The kernel's native layout: (B, h, d, S).\n"
            "        query, key, value = query.transpose(2, 3), key.transpose(2, 3), value.transpose(2, 3)\n"
            "    attn_output = nki_flash_attn_func(\n"
            "        query,\n"
            "        key,\n"
            "        value,\n"
            "        dropout_p=0.0,\n"
            "        softmax_scale=scaling,\n"
            "        causal=True,\n"
            "        mixed_precision=True,\n"
            "        transpose_nki_inputs=transpose,\n"
            "    )\n"
            "    attn_output = torch.nn.functional.dropout(attn_output, p=dropout, training=module.training)\n"
            "    return attn_output.transpose(1, 2).contiguous(), None\n"
        )


def _todo(forward: cst.FunctionDef, code: str) -> cst.FunctionDef:
    """Mark a forward whose attention call has no transformers-style dispatch (with --allow-unsupported)."""
    body = list(forward.body.body)
    note = cst.EmptyLine(
        comment=cst.Comment(
            f"# TODO({code}): add the Neuron flash-attention path (nki_flash_attn_func when "
            'config._attn_implementation == "flash_attention_2") and a causal mask when no mask is passed'
        )
    )
    body[0] = body[0].with_changes(leading_lines=[*body[0].leading_lines, note])
    return pc.with_body(forward, body)


def _class_index(body: list[cst.BaseStatement], name: str) -> int | None:
    return next((i for i, s in enumerate(body) if isinstance(s, cst.ClassDef) and s.name.value == name), None)


def _function_index(body: list[cst.BaseStatement], name: str) -> int | None:
    return next(
        (i for i, s in enumerate(body) if isinstance(s, cst.FunctionDef) and s.name.value == name), None
    )


def _is_table_dispatch(statement: cst.CSTNode) -> bool:
    """Stop-gap: an `if` that picks the attention function from transformers' backend table."""
    return isinstance(statement, cst.If) and any(
        isinstance(n, cst.Subscript) and isinstance(n.value, cst.Name) and n.value.value == ATTENTION_TABLE
        for n in pc.walk(statement.body)
    )


def _assigned_in(statement: cst.If) -> str:
    for node in pc.walk(statement.body):
        if isinstance(node, cst.SimpleStatementLine) and pc.assigned_name(node) is not None:
            return pc.assigned_name(node)
    raise ScaffoldError(f"{NeuronFlashAttention.CODE}: the attention-table `if` assigns no variable")


def _mask_argument(call: cst.Call) -> cst.BaseExpression | None:
    """Stop-gap: the attention-mask argument of a transformers attention-function call (keyword or 5th)."""
    for arg in call.args:
        if arg.keyword is not None and arg.keyword.value == "attention_mask":
            return arg.value
    positional = [arg for arg in call.args if arg.keyword is None and not arg.star]
    return positional[4].value if len(positional) > 4 else None


def _tests_not_none(statement: cst.CSTNode, name: str) -> bool:
    if not isinstance(statement, cst.If) or not isinstance(statement.test, cst.Comparison):
        return False
    test = statement.test
    return (
        isinstance(test.left, cst.Name)
        and test.left.value == name
        and len(test.comparisons) == 1
        and isinstance(test.comparisons[0].operator, cst.IsNot)
        and pc.code(test.comparisons[0].comparator) == "None"
    )


def _scores_name(statement: cst.If) -> str | None:
    """Stop-gap: `s` in the eager function's mask block `s = s + mask` (the attention scores)."""
    for node in pc.walk(statement.body):
        if not isinstance(node, cst.SimpleStatementLine):
            continue
        target, value = pc.assigned_name(node), pc.assigned_value(node)
        if (
            target is not None
            and isinstance(value, cst.BinaryOperation)
            and isinstance(value.operator, cst.Add)
            and isinstance(value.left, cst.Name)
            and value.left.value == target
        ):
            return target
    return None


def _without_comment(comma: cst.Comma | cst.MaybeSentinel) -> cst.Comma | cst.MaybeSentinel:
    """A copy of an argument's comma without the comment that may trail it."""
    if isinstance(comma, cst.Comma) and isinstance(comma.whitespace_after, cst.ParenthesizedWhitespace):
        first_line = comma.whitespace_after.first_line.with_changes(
            comment=None, whitespace=cst.SimpleWhitespace("")
        )
        return comma.with_changes(whitespace_after=comma.whitespace_after.with_changes(first_line=first_line))
    return comma
