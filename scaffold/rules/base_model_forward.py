"""NXS012: the base model's forward under sequence parallelism, with the host's mask and checkpointing.

- After the `ParallelEmbedding` (NXS010) the hidden stream is `(S/T, B, D)` under sequence parallelism,
  so reads of the sequence length from the embeddings' dim 1 become a `sequence_length` computed from the
  layout; positions (and position ids) then span the whole sequence on every rank.
- Causal masks come from the host (`..masking_utils.create_causal_mask`, which takes `trn_config`, knows
  the layout and has no cache argument to pass). With `trn_config.recompute_causal_mask` (the default) no
  mask is built: the attention recomputes a causal one. transformers' sliding-window mask becomes a small
  local helper: the host's mask restricted to the window, so sliding windows are kept. Arguments spread
  from a dict literal get `trn_config` and lose the cache there; a `.copy()` of that dict carries both.
- Gradient checkpointing wraps each decoder layer call (in `for layer in self.layers` or `for i, layer in
  enumerate(self.layers)`) in `..training_utils.checkpoint_with_kwargs` when
  `self.gradient_checkpointing` (set from `trn_config.gradient_checkpointing`) and training; the
  decoder layer becomes a plain `nn.Module` (transformers' `GradientCheckpointingLayer` would checkpoint
  a second time).
- Learned absolute position embeddings (a replicated embedding the base model holds besides the token
  embedding) are looked up for the whole sequence on every rank; under sequence parallelism the lookup is
  then transposed and scattered into the stream's `(S/T, B, D)` layout before it is added (a lookup inside
  a larger expression is first bound to a name of its own).
- A view of the stream back to `(-1, seq_length, D)` (GPT-Neo's `hidden_states.view(output_shape)`; GPT-2's
  `(-1,) + input_shape[1:] + (D,)`, `input_shape` an input's `(B, S)`), the identity on `(B, S, D)`, runs
  only without sequence parallelism: it would scramble `(S/T, B, D)`.
- Everything else the source computes (embedding scale, collected outputs) is kept as written.
The mask builders come from the Blueprint; the shapes of their calls and of the layer loop are checked
in analysis (R021, R022). The inserted code comes from templates/code/base_model_forward.py.
"""

from __future__ import annotations

import libcst as cst
import libcst.matchers as m

from ..patterns import POST_INIT_STATEMENT
from ..syntax import (
    aliases_of,
    assigned_name,
    assigned_value,
    code,
    dotted,
    find_method,
    fresh_name,
    insert_module_statements,
    laid_out,
    leading_to,
    names_in,
    reads_self_attribute,
    self_attribute,
    walk,
    with_arguments,
    with_body,
    with_method,
)
from . import templates
from .base import Rule, stored_example, with_todo

TEMPLATES = "base_model_forward"
TRANSFORMERS_MASKING = "transformers.masking_utils"
CAUSAL_MASK = "create_causal_mask"
SLIDING_MASK = "create_sliding_window_causal_mask"
SLIDING_HELPER = "_create_sliding_window_causal_mask"
SUPPORTED_MASKS = frozenset({CAUSAL_MASK, SLIDING_MASK})
CACHE = "past_key_values"  # NXS002 passes None to transformers' builders; the host's do not need it
CHECKPOINTING_BASES = frozenset({"GradientCheckpointingLayer"})
SEQUENCE_LENGTH = "sequence_length"
TRN_CONFIG = "trn_config"


def _last(path: str | None) -> str | None:
    return None if path is None else path.rsplit(".", 1)[-1]


class BaseModelForward(Rule):
    CODE = "NXS012"
    NAME = "base-model-forward"
    SUMMARY = "base model forward under SP: full-length positions, host causal mask (or none), checkpoint_with_kwargs"
    ADVICE = (
        "Masks built in another way and forwards without a loop over the layers are refused (R021, R022). "
        "Disable it to write the sequence-parallel positions, the host mask and checkpointing by hand."
    )
    REQUIRES = ("NXS004", "NXS010")
    EXAMPLES = (
        stored_example(CODE, "mistral", "MistralModel"),
        stored_example(CODE, "llama", "LlamaDecoderLayer"),
        stored_example(CODE, "qwen2_moe", "Qwen2MoeModel"),
    )

    def visit_FunctionDef(self, node: cst.FunctionDef) -> bool:
        return False  # the rule rewrites whole classes: nothing to visit inside a method

    @property
    def _stack_class(self) -> str:
        """The class that embeds and loops over the layers: the base model, or the decoder it wraps."""
        return self.blueprint.backbone.stack_class or self.blueprint.base_model_class

    def visit_Module(self, node: cst.Module) -> None:
        self._uses_sliding = False

    def leave_ImportFrom(
        self, original_node: cst.ImportFrom, updated_node: cst.ImportFrom
    ) -> cst.ImportFrom | cst.RemovalSentinel:
        module = dotted(updated_node.module) if updated_node.module is not None else None
        if module == TRANSFORMERS_MASKING and self.refusal_for(self._stack_class) is None:
            return (
                cst.RemoveFromParent()
            )  # the host's builders replace transformers' (NXS003 made it absolute)
        return updated_node

    def leave_ClassDef(self, original_node: cst.ClassDef, updated_node: cst.ClassDef) -> cst.ClassDef:
        blueprint = self.blueprint
        name = updated_node.name.value
        if name == blueprint.backbone.decoder_layer:
            updated_node = self._plain_module(updated_node)
        if name == self._stack_class:
            refusal = self.refusal_for(name)
            if refusal is not None:
                return with_todo(updated_node, refusal)
            updated_node = self._base_model(updated_node)
        return updated_node

    def leave_Module(self, original_node: cst.Module, updated_node: cst.Module) -> cst.Module:
        if self._uses_sliding:
            helper, needed = templates.fill_statements(
                TEMPLATES, "sliding_window_mask_helper", self.blueprint.style
            )
            self.add_template_imports(needed)
            updated_node = insert_module_statements(updated_node, helper, before=self._stack_class)
        return updated_node

    # --- decoder layer ---------------------------------------------------------------------------------

    def _plain_module(self, cls: cst.ClassDef) -> cst.ClassDef:
        bases = []
        for arg in cls.bases:
            if dotted(arg.value) in CHECKPOINTING_BASES:
                module = "nn.Module" if self.blueprint.style.nn_alias else "torch.nn.Module"
                arg = arg.with_changes(value=cst.parse_expression(module))
                self.add_torch_import("torch", "nn" if self.blueprint.style.nn_alias else None)
            bases.append(arg)
        return cls.with_changes(bases=bases)

    # --- base model ------------------------------------------------------------------------------------

    def _base_model(self, cls: cst.ClassDef) -> cst.ClassDef:
        init, forward = find_method(cls, "__init__"), find_method(cls, "forward")
        assert init is not None and forward is not None, "checked in analysis (R017)"
        cls = with_method(cls, self._checkpointing_switch(init))
        forward, length = self._sequence_length(forward)
        if length is not None:
            forward = self._stream_views(forward, length)
        forward = self._positions_layout(forward)
        forward = self._masks(forward)
        forward = self._checkpointed_layers(forward)
        return with_method(cls, forward)

    def _checkpointing_switch(self, init: cst.FunctionDef) -> cst.FunctionDef:
        """`self.gradient_checkpointing = trn_config.gradient_checkpointing` (replacing transformers' False,
        else added before `self.post_init()`)."""
        (switch,), needed = templates.fill_statements(
            TEMPLATES, "checkpointing_from_trn_config", self.blueprint.style
        )
        self.add_template_imports(needed)
        value = switch.body[0].value  # type: ignore[attr-defined]

        class _Switch(cst.CSTTransformer):
            replaced = False

            def leave_Assign(self, original: cst.Assign, updated: cst.Assign) -> cst.Assign:
                if (
                    len(updated.targets) == 1
                    and self_attribute(updated.targets[0].target) == "gradient_checkpointing"
                ):
                    self.replaced = True
                    return updated.with_changes(value=value)
                return updated

        transformer = _Switch()
        result = init.visit(transformer)
        assert isinstance(result, cst.FunctionDef)
        if transformer.replaced:
            return result
        body = list(init.body.body)
        position = next((i for i, s in enumerate(body) if m.matches(s, POST_INIT_STATEMENT)), len(body))
        body.insert(position, switch)
        result = with_body(init, body)
        assert isinstance(result, cst.FunctionDef)
        return result

    def _sequence_length(self, forward: cst.FunctionDef) -> tuple[cst.FunctionDef, str | None]:
        """Reads of the embeddings' dim 1 (the sequence without SP) -> a layout-aware `sequence_length`
        (returned with the name it got; None when the forward reads no such length)."""
        embeds = _embedding_outputs(forward, _last(self.blueprint.backbone.embedding))
        if not embeds:
            return forward, None
        forward = self._unpacked_length(forward, embeds)
        taken = names_in(forward)
        name = SEQUENCE_LENGTH if SEQUENCE_LENGTH not in taken else fresh_name(SEQUENCE_LENGTH, taken)

        class _Length(cst.CSTTransformer):
            def __init__(self) -> None:
                self.variable: str | None = None

            def leave_Subscript(self, original: cst.Subscript, updated: cst.Subscript) -> cst.BaseExpression:
                value = updated.value
                if (
                    isinstance(value, cst.Attribute)
                    and value.attr.value == "shape"
                    and dotted(value.value) in embeds
                    and code(updated).endswith(".shape[1]")
                ):
                    self.variable = dotted(value.value)
                    return cst.Name(name)
                return updated

            def leave_Call(self, original: cst.Call, updated: cst.Call) -> cst.BaseExpression:
                func = updated.func
                if (
                    isinstance(func, cst.Attribute)
                    and func.attr.value == "size"
                    and dotted(func.value) in embeds
                    and [code(arg.value) for arg in updated.args] == ["1"]
                ):
                    self.variable = dotted(func.value)
                    return cst.Name(name)
                return updated

        body = list(forward.body.body)
        for index, statement in enumerate(body):
            finder = _Length()
            changed = statement.visit(finder)
            if finder.variable is None:
                continue
            rest = [s.visit(_Length()) for s in body[index + 1 :]]
            length, needed = templates.fill_statements(
                TEMPLATES,
                "sequence_length",
                self.blueprint.style,
                renames={SEQUENCE_LENGTH: name, "inputs_embeds": finder.variable},
            )
            self.add_template_imports(needed)
            moved, length[0] = leading_to(changed, length[0])  # type: ignore[arg-type]
            result = with_body(forward, [*body[:index], *length, moved, *rest])  # type: ignore[list-item]
            assert isinstance(result, cst.FunctionDef)
            return result, name
        return forward, None

    def _unpacked_length(self, forward: cst.FunctionDef, embeds: set[str]) -> cst.FunctionDef:
        """`batch, length, _ = embeds.shape` (or `.size()`, or `batch, length = embeds.shape[:-1]`) ->
        `length = embeds.shape[1]`, which `_sequence_length` then reads; the batch dimension is no longer
        dim 0 under SP, so a `batch` read elsewhere is bound first from the layout (`batch_size`
        template)."""
        body = list(forward.body.body)
        for index, statement in enumerate(body):
            found = _unpacked_shape(statement, embeds)
            if found is None:
                continue
            batch, length, variable = found
            others = [s for i, s in enumerate(body) if i != index]
            new: list[cst.BaseStatement] = []
            if batch != "_" and any(batch in names_in(s) for s in others):
                new, needed = templates.fill_statements(
                    TEMPLATES,
                    "batch_size",
                    self.blueprint.style,
                    renames={"batch_size": batch, "inputs_embeds": variable},
                )
                self.add_template_imports(needed)
            new.append(cst.parse_statement(f"{length} = {variable}.shape[1]"))
            new[0] = new[0].with_changes(leading_lines=statement.leading_lines)
            result = with_body(forward, [*body[:index], *new, *body[index + 1 :]])
            assert isinstance(result, cst.FunctionDef)
            return result
        return forward

    def _stream_views(self, forward: cst.FunctionDef, length: str) -> cst.FunctionDef:
        """`x = x.view(-1, S, x.size(-1))` (the shape written out or bound to a name first), the identity on
        the stream's `(B, S, D)` -> run only without sequence parallelism, where the stream has that layout."""
        lengths = _copies_of(forward, length) | {f"{name}[1:]" for name in _input_shapes(forward)}
        shapes = _tuples_bound_once(forward)
        rule = self

        class _Views(cst.CSTTransformer):
            def leave_SimpleStatementLine(
                self, original: cst.SimpleStatementLine, updated: cst.SimpleStatementLine
            ) -> cst.BaseStatement:
                if not is_stream_view(updated, lengths, shapes):
                    return updated
                (switch,), needed = templates.fill_statements(
                    TEMPLATES, "stream_view_without_sequence_parallel", rule.blueprint.style
                )
                rule.add_template_imports(needed)
                assert isinstance(switch, cst.If)
                plain = updated.with_changes(leading_lines=[])
                return switch.with_changes(
                    body=switch.body.with_changes(body=[plain]), leading_lines=updated.leading_lines
                )

        result = forward.visit(_Views())
        assert isinstance(result, cst.FunctionDef)
        return result

    def _positions_layout(self, forward: cst.FunctionDef) -> cst.FunctionDef:
        """Each lookup of a position embedding, followed by its move into the stream's layout."""
        attributes = {_last(path) for path in self.blueprint.backbone.positions}
        if not attributes:
            return forward
        rule = self
        taken = set(names_in(forward))

        def lookup(node: cst.CSTNode) -> cst.Call | None:
            for inner in walk(node):
                if isinstance(inner, cst.Call) and self_attribute(inner.func) in attributes:
                    return inner
            return None

        def layout(name: str) -> list[cst.BaseStatement]:
            statements, needed = templates.fill_statements(
                TEMPLATES,
                "positions_in_stream_layout",
                rule.blueprint.style,
                renames={"position_embeds": name},
            )
            rule.add_template_imports(needed)
            return statements

        class _Positions(cst.CSTTransformer):
            def leave_SimpleStatementLine(
                self, original: cst.SimpleStatementLine, updated: cst.SimpleStatementLine
            ) -> cst.BaseStatement | cst.FlattenSentinel[cst.BaseStatement]:
                call = lookup(updated)
                if call is None:
                    return updated
                small = updated.body[0] if len(updated.body) == 1 else None
                if (
                    isinstance(small, cst.Assign)
                    and small.value is call
                    and len(small.targets) == 1
                    and isinstance(small.targets[0].target, cst.Name)
                ):
                    return cst.FlattenSentinel([updated, *layout(small.targets[0].target.value)])
                name = fresh_name("position_embeds", taken)
                taken.add(name)
                bound = cst.SimpleStatementLine(
                    [cst.Assign([cst.AssignTarget(cst.Name(name))], call)],
                    leading_lines=updated.leading_lines,
                )
                rest = updated.deep_replace(call, cst.Name(name)).with_changes(leading_lines=[])
                return cst.FlattenSentinel([bound, *layout(name), rest])

        result = forward.visit(_Positions())
        assert isinstance(result, cst.FunctionDef)
        return result

    def _masks(self, forward: cst.FunctionDef) -> cst.FunctionDef:
        """Mask builders -> the host's (with `trn_config`), skipped when the attention recomputes the mask."""
        callables = mask_callables(forward, self.blueprint.mask_builders)
        if not callables & names_in(forward):
            return forward
        if SLIDING_MASK in names_in(forward):
            self._uses_sliding = True
        self.add_host_import("masking_utils", CAUSAL_MASK)
        direct, spread = mask_call_shapes(forward, callables)
        rule = self
        trn_config = cst.parse_expression(f"self.{TRN_CONFIG}")

        class _Masks(cst.CSTTransformer):
            def leave_Name(self, original: cst.Name, updated: cst.Name) -> cst.Name:
                return cst.Name(SLIDING_HELPER) if updated.value == SLIDING_MASK else updated

            def leave_Call(self, original: cst.Call, updated: cst.Call) -> cst.BaseExpression:
                if dotted(original.func) not in callables:
                    return updated
                if not any(arg.star == "**" for arg in updated.args):
                    updated = with_arguments(
                        updated, add=[(TRN_CONFIG, trn_config)], after="config", drop=[CACHE]
                    )
                if original in direct:
                    return updated
                wrapped, needed = templates.fill_expression(
                    TEMPLATES, "mask_value_unless_recomputed", rule.blueprint.style, mask=updated
                )
                rule.add_template_imports(needed)
                return wrapped

            def leave_Dict(self, original: cst.Dict, updated: cst.Dict) -> cst.Dict:
                if original not in spread:
                    return updated
                elements: list[cst.BaseDictElement] = []
                for element in updated.elements:
                    key = (
                        element.key.evaluated_value
                        if isinstance(element, cst.DictElement) and isinstance(element.key, cst.SimpleString)
                        else None
                    )
                    if key == CACHE:
                        continue
                    elements.append(element)
                    if key == "config":
                        elements.append(cst.DictElement(cst.SimpleString(f'"{TRN_CONFIG}"'), trn_config))
                space = cst.SimpleWhitespace(" ")
                elements = [
                    e.with_changes(comma=cst.Comma(whitespace_after=space)) for e in elements[:-1]
                ] + [e.with_changes(comma=cst.Comma()) for e in elements[-1:]]
                return updated.with_changes(
                    elements=elements, lbrace=cst.LeftCurlyBrace(), rbrace=cst.RightCurlyBrace()
                )

            def leave_SimpleStatementLine(
                self, original: cst.SimpleStatementLine, updated: cst.SimpleStatementLine
            ) -> cst.BaseStatement:
                small = original.body[0] if len(original.body) == 1 else None
                if not isinstance(small, cst.Assign) or small.value not in direct:
                    return updated
                new = updated.body[0]
                assert isinstance(new, cst.Assign)
                (statement,), needed = templates.fill_statements(
                    TEMPLATES,
                    "mask_unless_recomputed",
                    rule.blueprint.style,
                    renames={"causal_mask": new.targets[0].target},
                    mask=new.value,
                )
                rule.add_template_imports(needed)
                return statement.with_changes(leading_lines=updated.leading_lines)

        result = forward.visit(_Masks())
        assert isinstance(result, cst.FunctionDef)
        return _conversions_with_mask(result, trn_config)

    def _checkpointed_layers(self, forward: cst.FunctionDef) -> cst.FunctionDef:
        layers = layer_list(self.blueprint.backbone.layers)
        if layers is None:
            return forward
        rule = self

        class _Loop(cst.CSTTransformer):
            def leave_For(self, original: cst.For, updated: cst.For) -> cst.For:
                layer = loop_layer(updated, layers)
                if layer is None:
                    return updated
                body = []
                for statement in updated.body.body:
                    call = layer_call(statement, layer)
                    body.append(statement if call is None else rule._checkpointed(statement, call, layer))  # type: ignore[arg-type]
                return updated.with_changes(body=updated.body.with_changes(body=body))

        result = forward.visit(_Loop())  # a call in the loop: checked in analysis (R022)
        assert isinstance(result, cst.FunctionDef)
        return result

    def _checkpointed(
        self, statement: cst.SimpleStatementLine, call: cst.Call, layer: str
    ) -> cst.BaseStatement:
        style = self.blueprint.style
        wrapped, needed = templates.fill_expression(TEMPLATES, "checkpointed", style, layer=cst.Name(layer))
        self.add_template_imports(needed)
        assert isinstance(wrapped, cst.Call)
        wrapped = laid_out(wrapped.with_changes(args=[*wrapped.args, *call.args]))
        (switch,), _ = templates.fill_statements(TEMPLATES, "checkpoint_switch", style)
        assert isinstance(switch, cst.If) and isinstance(switch.orelse, cst.Else)
        checkpointed = statement.with_changes(leading_lines=[]).visit(_Swap(call, wrapped))
        plain = statement.with_changes(leading_lines=[])
        switch = switch.with_changes(
            body=switch.body.with_changes(body=[checkpointed]),
            orelse=switch.orelse.with_changes(body=switch.orelse.body.with_changes(body=[plain])),
        )
        return switch.with_changes(leading_lines=statement.leading_lines)


class _Swap(cst.CSTTransformer):
    def __init__(self, old: cst.Call, new: cst.Call) -> None:
        super().__init__()
        self.old, self.new = old, new

    def leave_Call(self, original: cst.Call, updated: cst.Call) -> cst.BaseExpression:
        return self.new if original is self.old else updated


# --- the shapes the rule rewrites (shared with the analysis, which checks them: R021, R022) -----------


def layer_list(layers_path: str | None) -> str | None:
    """The base model's attribute holding the decoder layers (`layers` of `model.layers.*`)."""
    return _last(layers_path.removesuffix(".*")) if layers_path else None


def mask_callables(forward: cst.FunctionDef, builders: tuple[str, ...]) -> set[str]:
    """The mask builders and the forward's local names for them (`mask_function = a if c else b`)."""
    return set(builders) | aliases_of(forward, builders)


def mask_call_shapes(function: cst.FunctionDef, callables: set[str]) -> tuple[set[cst.Call], set[cst.Dict]]:
    """Mask calls that are the whole value of an assignment statement, and the dicts spread into mask
    calls (`**mask_kwargs`, each a dict literal assigned to that name: checked in analysis, R021)."""
    direct: set[cst.Call] = set()
    spread_names: set[str] = set()
    dicts: dict[str, cst.Dict] = {}
    for node in walk(function):
        if (
            isinstance(node, cst.SimpleStatementLine)
            and len(node.body) == 1
            and isinstance(node.body[0], cst.Assign)
        ):
            assign = node.body[0]
            target = assign.targets[0].target
            if isinstance(assign.value, cst.Call) and dotted(assign.value.func) in callables:
                direct.add(assign.value)
            if isinstance(target, cst.Name) and isinstance(assign.value, cst.Dict):
                dicts[target.value] = assign.value
        elif isinstance(node, cst.Call) and dotted(node.func) in callables:
            spread_names |= {
                arg.value.value for arg in node.args if arg.star == "**" and isinstance(arg.value, cst.Name)
            }
    copies = dict_copies(function)
    return direct, {dicts[root] for name in spread_names if (root := copied_from(name, copies)) in dicts}


def dict_copies(function: cst.FunctionDef) -> dict[str, str]:
    """Names bound to a shallow copy of another name: `b = a.copy()` or `b = dict(a)` (b -> a).

    A copy of a mask-argument dict made before it is spread carries the rule's rewrite of the dict
    literal it copies (`trn_config` added, the cache dropped).
    """
    found: dict[str, str] = {}
    for node in walk(function):
        if not isinstance(node, cst.Assign) or len(node.targets) != 1:
            continue
        target, value = node.targets[0].target, node.value
        if not isinstance(target, cst.Name) or not isinstance(value, cst.Call):
            continue
        func = value.func
        if (
            isinstance(func, cst.Attribute)
            and func.attr.value == "copy"
            and isinstance(func.value, cst.Name)
            and not value.args
        ):
            found[target.value] = func.value.value
        elif (
            m.matches(func, m.Name("dict"))
            and len(value.args) == 1
            and isinstance(value.args[0].value, cst.Name)
            and value.args[0].star == ""
        ):
            found[target.value] = value.args[0].value.value
    return found


def copied_from(name: str, copies: dict[str, str]) -> str:
    """The name a chain of copies starts from (`name` itself when it is no copy)."""
    seen = {name}
    while name in copies and copies[name] not in seen:
        name = copies[name]
        seen.add(name)
    return name


def spread_without_dict(function: cst.FunctionDef, callables: set[str]) -> set[str]:
    """Names spread into mask calls (`**name`) that are not a dict literal assigned in the function."""
    assigned = {
        node.targets[0].target.value
        for node in walk(function)
        if isinstance(node, cst.Assign)
        and isinstance(node.targets[0].target, cst.Name)
        and isinstance(node.value, cst.Dict)
    }
    spread = {
        arg.value.value
        for node in walk(function)
        if isinstance(node, cst.Call) and dotted(node.func) in callables
        for arg in node.args
        if arg.star == "**" and isinstance(arg.value, cst.Name)
    }
    copies = dict_copies(function)
    return {name for name in spread if copied_from(name, copies) not in assigned}


VIEWS = frozenset({"view", "reshape"})


def is_stream_view(statement: cst.BaseStatement, lengths: set[str], shapes: dict[str, cst.Tuple]) -> bool:
    """Whether `statement` is `x = x.view(shape)` (or `reshape`) with `shape` `(-1, S, x.size(-1))` (or
    `x.shape[-1]`), written as the arguments, a tuple, or a name bound once to that tuple, and `S` one of
    `lengths`: on a 3-d `(B, S, D)` tensor that view is the identity."""
    if not isinstance(statement, cst.SimpleStatementLine) or len(statement.body) != 1:
        return False
    assign = statement.body[0]
    if not isinstance(assign, cst.Assign) or len(assign.targets) != 1:
        return False
    target, call = assign.targets[0].target, assign.value
    if not isinstance(target, cst.Name) or not isinstance(call, cst.Call):
        return False
    func = call.func
    if not (
        isinstance(func, cst.Attribute)
        and func.attr.value in VIEWS
        and m.matches(func.value, m.Name(target.value))
        and all(arg.keyword is None and arg.star == "" for arg in call.args)
    ):
        return False
    parts: list[cst.BaseExpression] = [arg.value for arg in call.args]
    if len(parts) == 1:
        shape = parts[0]
        if isinstance(shape, cst.Name):
            shape = shapes.get(shape.value, shape)
        if isinstance(shape, cst.Tuple) and all(isinstance(e, cst.Element) for e in shape.elements):
            parts = [element.value for element in shape.elements]
    if len(parts) != 3:
        return False
    first, second, third = (code(part) for part in parts)
    stream = target.value
    return first == "-1" and second in lengths and third in {f"{stream}.size(-1)", f"{stream}.shape[-1]"}


def _copies_of(function: cst.FunctionDef, name: str) -> set[str]:
    """`name` and the local names bound to it, directly or through one another (`seq_length = name`)."""
    found = {name}
    pairs = [
        (node.targets[0].target.value, node.value.value)
        for node in walk(function)
        if isinstance(node, cst.Assign)
        and len(node.targets) == 1
        and isinstance(node.targets[0].target, cst.Name)
        and isinstance(node.value, cst.Name)
    ]
    grown = True
    while grown:
        grown = False
        for target, value in pairs:
            if value in found and target not in found:
                found.add(target)
                grown = True
    return found


def _tuples_bound_once(function: cst.FunctionDef) -> dict[str, cst.Tuple]:
    """Local names bound exactly once in `function`, to a tuple literal."""
    bound: dict[str, list[cst.CSTNode]] = {}
    for node in walk(function):
        if isinstance(node, cst.Assign):
            for target in node.targets:
                if isinstance(target.target, cst.Name):
                    bound.setdefault(target.target.value, []).append(node.value)
        elif isinstance(node, cst.AugAssign | cst.AnnAssign) and isinstance(node.target, cst.Name):
            bound.setdefault(node.target.value, []).append(node)
    found: dict[str, cst.Tuple] = {}
    input_shapes = _input_shapes(function)
    for name, values in bound.items():
        if len(values) == 1 and isinstance(values[0], cst.Tuple):
            found[name] = values[0]
        elif len(values) == 1 and (joined := _joined_tuple(values[0], input_shapes)) is not None:
            found[name] = joined
    return found


def _joined_tuple(value: cst.CSTNode, input_shapes: set[str]) -> cst.Tuple | None:
    """`(a,) + s[1:] + (b,)` (tuple literals and slices of a shape from 1 joined by `+`, GPT-2's output
    shape) as one tuple `(a, s[1:], b)`: the slice stands for the one dimension it holds on a `(B, S)`
    input shape (`_input_shapes`); such a shape whole (`s + (b,)`, GPTBigCode's) stands for `(-1, s[1:])`,
    its batch being the one a view of the stream's `(B, S, D)` infers; None for anything else."""
    if isinstance(value, cst.Tuple):
        return value if all(isinstance(e, cst.Element) for e in value.elements) else None
    if isinstance(value, cst.Name) and value.value in input_shapes:
        rest = cst.parse_expression(f"{value.value}[1:]")
        return cst.Tuple([cst.Element(cst.parse_expression("-1")), cst.Element(rest)])
    if m.matches(
        value, m.Subscript(slice=[m.SubscriptElement(slice=m.Slice(lower=m.Integer("1"), upper=None))])
    ):
        return cst.Tuple([cst.Element(value)])  # type: ignore[arg-type]
    if isinstance(value, cst.BinaryOperation) and isinstance(value.operator, cst.Add):
        left, right = _joined_tuple(value.left, input_shapes), _joined_tuple(value.right, input_shapes)
        if left is not None and right is not None:
            return cst.Tuple([*left.elements, *right.elements])
    return None


def _input_shapes(function: cst.FunctionDef) -> set[str]:
    """Local names every binding of which is an input's leading shape: `ids.size()` / `ids.shape` or
    `embeds.size()[:-1]` / `embeds.shape[:-1]` (`(B, S)` in training, so `name[1:]` is the sequence)."""
    leading = m.OneOf(
        m.Call(func=m.Attribute(attr=m.Name("size")), args=[]),
        m.Attribute(attr=m.Name("shape")),
    )
    without_features = m.Subscript(
        value=leading,
        slice=[
            m.SubscriptElement(
                slice=m.Slice(
                    lower=None, upper=m.UnaryOperation(operator=m.Minus(), expression=m.Integer("1"))
                )
            )
        ],
    )
    bindings: dict[str, list[bool]] = {}
    for node in walk(function):
        if isinstance(node, cst.Assign):
            for target in node.targets:
                if isinstance(target.target, cst.Name):
                    shape = m.matches(node.value, leading | without_features)  # type: ignore[operator]
                    bindings.setdefault(target.target.value, []).append(shape)
        elif isinstance(node, cst.AugAssign | cst.AnnAssign) and isinstance(node.target, cst.Name):
            bindings.setdefault(node.target.value, []).append(False)
    return {name for name, shapes in bindings.items() if all(shapes)}


def _embedding_outputs(forward: cst.FunctionDef, embedding: str | None) -> set[str]:
    """Names assigned from an expression that calls `self.<embedding>(...)`."""
    found: set[str] = set()
    if embedding is None:
        return found
    for node in walk(forward):
        if isinstance(node, cst.Assign) and reads_self_attribute(node.value, embedding):
            found.update(name for target in node.targets if (name := dotted(target.target)) is not None)
        elif (
            isinstance(node, cst.AnnAssign)
            and node.value is not None
            and reads_self_attribute(node.value, embedding)
        ):
            name = dotted(node.target)
            if name is not None:
                found.add(name)
    return found


def layer_call(statement: cst.BaseStatement, layer: str) -> cst.Call | None:
    """The call `layer(...)` when it is the whole statement or the whole value of its assignment."""
    if not isinstance(statement, cst.SimpleStatementLine) or len(statement.body) != 1:
        return None
    small = statement.body[0]
    value = small.value if isinstance(small, cst.Assign | cst.Expr) else None
    if isinstance(value, cst.Call) and dotted(value.func) == layer:
        return value
    return None


def loop_layer(loop: cst.For, layers: str) -> str | None:
    """The name a `for` binds to each decoder layer: `for layer in self.<layers>` (sliced or not), or
    `for i, layer in enumerate(self.<layers>)`; None for any other loop."""
    if isinstance(loop.target, cst.Name):
        return loop.target.value if reads_self_attribute(loop.iter, layers) else None
    enumerated = m.Call(func=m.Name("enumerate"), args=[m.Arg(star="", keyword=None), m.ZeroOrMore()])
    if not m.matches(loop.iter, enumerated):  # `enumerate(self.<layers>)`, a start index or not
        return None
    assert isinstance(loop.iter, cst.Call)
    if not reads_self_attribute(loop.iter.args[0].value, layers):
        return None
    target = loop.target
    if isinstance(target, cst.Tuple) and len(target.elements) == 2:
        index, layer = (element.value for element in target.elements)
        if isinstance(index, cst.Name) and isinstance(layer, cst.Name):
            return layer.value
    return None


def layer_loop_calls(forward: cst.FunctionDef, layers: str) -> int:
    """How many decoder-layer calls the rule would checkpoint: statements calling the loop variable of a
    `for` over `self.<layers>` (`loop_layer`)."""
    found = 0
    for node in walk(forward):
        if isinstance(node, cst.For) and (layer := loop_layer(node, layers)) is not None:
            found += sum(layer_call(statement, layer) is not None for statement in node.body.body)
    return found


def _unpacked_shape(statement: cst.BaseStatement, embeds: set[str]) -> tuple[str, str, str] | None:
    """(batch, length, embeddings) of `batch, length, _ = e.shape` / `e.size()`, or `batch, length =
    e.shape[:-1]` / `e.size()[:-1]`, `e` one of `embeds`; None for any other statement."""
    if not (isinstance(statement, cst.SimpleStatementLine) and len(statement.body) == 1):
        return None
    small = statement.body[0]
    if not (isinstance(small, cst.Assign) and len(small.targets) == 1):
        return None
    target, value = small.targets[0].target, small.value
    if not (isinstance(target, cst.Tuple) and all(isinstance(e.value, cst.Name) for e in target.elements)):
        return None
    names = [e.value.value for e in target.elements]  # type: ignore[attr-defined]
    if len(names) == 2 and m.matches(
        value,
        m.Subscript(
            slice=[
                m.SubscriptElement(
                    m.Slice(
                        lower=None,
                        upper=m.UnaryOperation(operator=m.Minus(), expression=m.Integer("1")),
                        step=None,
                    )
                )
            ]
        ),
    ):
        value = value.value  # type: ignore[attr-defined]
        names.append("_")
    if len(names) != 3 or names[2] != "_":
        return None
    if isinstance(value, cst.Call) and not value.args:
        value = value.func  # `.size()` as `.size`
    if not (
        isinstance(value, cst.Attribute)
        and value.attr.value in ("shape", "size")
        and dotted(value.value) in embeds
    ):
        return None
    return names[0], names[1], dotted(value.value)  # type: ignore[return-value]


def _conversions_with_mask(forward: cst.FunctionDef, trn_config: cst.BaseExpression) -> cst.FunctionDef:
    """Statements right after a mask built unless recomputed that convert it in place (`m = m.bool()`: MPT
    fills a boolean mask) move into the branch that builds it: no mask is there to convert otherwise."""
    test = f"{code(trn_config).strip()}.recompute_causal_mask"

    class _Moved(cst.CSTTransformer):
        def leave_IndentedBlock(
            self, original: cst.IndentedBlock, updated: cst.IndentedBlock
        ) -> cst.IndentedBlock:
            body = list(updated.body)
            index = 0
            while index < len(body):
                built = body[index]
                index += 1
                if not (isinstance(built, cst.If) and code(built.test).strip() == test):
                    continue
                orelse = built.orelse
                if not isinstance(orelse, cst.Else) or not isinstance(orelse.body, cst.IndentedBlock):
                    continue
                mask = assigned_name(orelse.body.body[-1]) if orelse.body.body else None
                moved: list[cst.BaseStatement] = []
                while mask is not None and index < len(body) and _converts(body[index], mask):
                    moved.append(body.pop(index))
                if moved:
                    block = orelse.body.with_changes(body=[*orelse.body.body, *moved])
                    body[index - 1] = built.with_changes(orelse=orelse.with_changes(body=block))
            return updated.with_changes(body=body)

    result = forward.visit(_Moved())
    assert isinstance(result, cst.FunctionDef)
    return result


def _converts(statement: cst.BaseStatement, mask: str) -> bool:
    """`mask = mask.<method>(...)`: a conversion of the mask that reads nothing else of it."""
    return assigned_name(statement) == mask and m.matches(
        assigned_value(statement), m.Call(func=m.Attribute(value=m.Name(mask)))
    )
