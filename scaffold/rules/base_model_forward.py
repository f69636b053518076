"""NXS012: the base model's forward under sequence parallelism, with the host's mask and checkpointing.

- After the `ParallelEmbedding` (NXS010) the hidden stream is `(S/T, B, D)` under sequence parallelism,
  so reads of the sequence length from the embeddings' dim 1 become a `sequence_length` computed from the
  layout; positions (and position ids) then span the whole sequence on every rank.
- Causal masks come from the host (`..masking_utils.create_causal_mask`, which takes `trn_config`, knows
  the layout and has no cache argument to pass). With `trn_config.recompute_causal_mask` (the default) no mask is built: the
  attention recomputes a causal one. transformers' sliding-window mask becomes a small local helper: the
  host's mask restricted to the window, so sliding windows are kept.
- Gradient checkpointing wraps each decoder layer call in `..training_utils.checkpoint_with_kwargs` when
  `self.gradient_checkpointing` (set from `trn_config.gradient_checkpointing`) and training; the
  decoder layer becomes a plain `nn.Module` (transformers' `GradientCheckpointingLayer` would checkpoint
  a second time).
- Everything else the source computes (embedding scale, collected outputs) is kept as written.
"""

from __future__ import annotations

import libcst as cst

from ..blueprint import Blueprint
from ..errors import ScaffoldError
from . import _parallel_code as pc
from ._edits import (
    argument_text,
    build_call,
    code,
    dotted,
    find_method,
    indented,
    insert_module_statements,
    mask_aliases,
    mask_builders,
    names_in,
    parse_statements,
    rebuild_call,
)
from ._imports import schedule_import, schedule_removal
from .base import Rule, stored_example

TRANSFORMERS_MASKING = "transformers.masking_utils"
HOST_MASKING_MODULE = "masking_utils"  # `from ..masking_utils import create_causal_mask`
HOST_TRAINING_MODULE = "training_utils"  # `from ..training_utils import checkpoint_with_kwargs`
CAUSAL_MASK = "create_causal_mask"
SLIDING_MASK = "create_sliding_window_causal_mask"
SLIDING_HELPER = "_create_sliding_window_causal_mask"
CHECKPOINT = "checkpoint_with_kwargs"
CACHE = "past_key_values"  # NXS002 passes None to transformers' builders; the host's do not need it
CHECKPOINTING_BASES = frozenset({"GradientCheckpointingLayer"})
SEQUENCE_LENGTH = "sequence_length"
RECOMPUTE = "self.trn_config.recompute_causal_mask"

SLIDING_HELPER_SOURCE = f'''
def {SLIDING_HELPER}(config, trn_config: TrainingNeuronConfig, **kwargs) -> torch.Tensor | None:
    """The host's causal mask, limited to the last `config.sliding_window` keys of each query.

    transformers' sliding-window mask lets query i attend to key j when i - sliding_window < j <= i; the
    host builds the causal and padding part, the window is applied here.
    """
    mask = {CAUSAL_MASK}(config=config, trn_config=trn_config, **kwargs)
    if mask is None:
        return None
    queries = torch.arange(mask.shape[-2], device=mask.device)[:, None]
    keys = torch.arange(mask.shape[-1], device=mask.device)[None, :]
    return mask.masked_fill(queries - keys >= config.sliding_window, torch.finfo(mask.dtype).min)
'''

SEQUENCE_LENGTH_SOURCE = """
# (B, S, D), or (S/T, B, D) under sequence parallelism
{name} = (
    {embeds}.size(0) * self.trn_config.tensor_parallel_size
    if self.trn_config.sequence_parallel_enabled
    else {embeds}.size(1)
)
"""


def _last(path: str | None) -> str | None:
    return None if path is None else path.rsplit(".", 1)[-1]


class BaseModelForward(Rule):
    CODE = "NXS012"
    NAME = "base-model-forward"
    SUMMARY = "base model forward under SP: full-length positions, host causal mask (or none), checkpoint_with_kwargs"
    EXAMPLES = (
        stored_example(CODE, "mistral", "MistralModel"),
        stored_example(CODE, "llama", "LlamaDecoderLayer"),
    )

    def visit_Module(self, node: cst.Module) -> None:
        self._mask_names = mask_builders(node)
        self._uses_sliding = False
        self._uses_masks = False

    def leave_ImportFrom(
        self, original_node: cst.ImportFrom, updated_node: cst.ImportFrom
    ) -> cst.ImportFrom | cst.RemovalSentinel:
        if updated_node.module is not None and dotted(updated_node.module) == TRANSFORMERS_MASKING:
            return cst.RemoveFromParent()
        return updated_node

    def leave_ClassDef(self, original_node: cst.ClassDef, updated_node: cst.ClassDef) -> cst.ClassDef:
        blueprint = self.blueprint
        name = updated_node.name.value
        if name == blueprint.backbone.decoder_layer:
            updated_node = self._plain_module(updated_node)
        if name == blueprint.base_model_class:
            updated_node = self._base_model(updated_node, blueprint)
        return updated_node

    def leave_Module(self, original_node: cst.Module, updated_node: cst.Module) -> cst.Module:
        if self._uses_masks:
            schedule_import(self.context, HOST_MASKING_MODULE, CAUSAL_MASK, relative=2)
        if self._uses_sliding:
            updated_node = insert_module_statements(
                updated_node, parse_statements(SLIDING_HELPER_SOURCE), before=self.blueprint.base_model_class
            )
            schedule_import(self.context, "torch")
        return updated_node

    # --- decoder layer ---------------------------------------------------------------------------------

    def _plain_module(self, cls: cst.ClassDef) -> cst.ClassDef:
        bases = []
        for arg in cls.bases:
            name = dotted(arg.value)
            if name in CHECKPOINTING_BASES:
                arg = arg.with_changes(value=cst.parse_expression("nn.Module"))
                schedule_import(self.context, "torch", "nn")
                schedule_removal(self.context, "transformers.modeling_layers", name)
            bases.append(arg)
        return cls.with_changes(bases=bases)

    # --- base model ------------------------------------------------------------------------------------

    def _base_model(self, cls: cst.ClassDef, blueprint: Blueprint) -> cst.ClassDef:
        init = find_method(cls, "__init__")
        forward = find_method(cls, "forward")
        if init is None or forward is None:
            raise ScaffoldError(f"{self.CODE}: {blueprint.base_model_class} needs __init__ and forward")
        cls = pc.with_method(cls, _checkpointing_switch(init))
        forward = self._sequence_length(forward, blueprint)
        forward = self._masks(forward)
        forward = self._checkpointed_layers(forward, blueprint)
        return pc.with_method(cls, forward)

    def _sequence_length(self, forward: cst.FunctionDef, blueprint: Blueprint) -> cst.FunctionDef:
        """Reads of the embeddings' dim 1 (the sequence without SP) -> a layout-aware `sequence_length`."""
        embedding = _last(blueprint.backbone.embedding)
        embeds = _embedding_outputs(forward, embedding)
        if not embeds:
            return forward
        taken = names_in(forward)
        name = SEQUENCE_LENGTH if SEQUENCE_LENGTH not in taken else pc.fresh_name(SEQUENCE_LENGTH, taken)

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
            length = parse_statements(SEQUENCE_LENGTH_SOURCE.format(name=name, embeds=finder.variable))
            moved, length[0] = pc.leading_to(changed, length[0])  # type: ignore[arg-type]
            body = [*body[:index], *length, moved, *rest]  # type: ignore[list-item]
            return pc.with_body(forward, body)
        return forward

    def _masks(self, forward: cst.FunctionDef) -> cst.FunctionDef:
        """Mask builders -> the host's (with `trn_config`), skipped when the attention recomputes the mask."""
        mask_names = set(self._mask_names)
        unsupported = (names_in(forward) & mask_names) - {CAUSAL_MASK, SLIDING_MASK}
        if unsupported:
            raise ScaffoldError(
                f"{self.CODE}: the base model builds masks with {', '.join(sorted(unsupported))}, which the "
                f"training host does not provide (it has {CAUSAL_MASK})"
            )
        if SLIDING_MASK in names_in(forward):
            self._uses_sliding = True
        if names_in(forward) & mask_names:
            self._uses_masks = True
        aliases = mask_aliases(forward, mask_names)
        callables = mask_names | aliases
        direct, spread = _mask_call_shapes(forward, callables)
        rule = self.CODE

        class _Masks(cst.CSTTransformer):
            def leave_Name(self, original: cst.Name, updated: cst.Name) -> cst.Name:
                return cst.Name(SLIDING_HELPER) if updated.value == SLIDING_MASK else updated

            def leave_Call(self, original: cst.Call, updated: cst.Call) -> cst.BaseExpression:
                if dotted(original.func) not in callables:
                    return updated
                if not any(arg.star == "**" for arg in updated.args):
                    updated = rebuild_call(
                        updated, add=[(pc.TRN_CONFIG, f"self.{pc.TRN_CONFIG}")], after="config", drop=[CACHE]
                    )
                if original in direct:
                    return updated
                return cst.parse_expression(f"None if {RECOMPUTE} else {indented(code(updated))}")

            def leave_Dict(self, original: cst.Dict, updated: cst.Dict) -> cst.Dict:
                if original not in spread:
                    return updated
                texts = []
                for element in updated.elements:
                    key = element.key.evaluated_value if isinstance(element.key, cst.SimpleString) else None  # type: ignore[union-attr]
                    if key == CACHE:
                        continue
                    texts.append(f"{code(element.key)}: {code(element.value)}")  # type: ignore[union-attr]
                    if key == "config":
                        texts.append(f'"{pc.TRN_CONFIG}": self.{pc.TRN_CONFIG}')
                return _dict(texts)

            def leave_SimpleStatementLine(
                self, original: cst.SimpleStatementLine, updated: cst.SimpleStatementLine
            ) -> cst.BaseStatement:
                small = original.body[0] if len(original.body) == 1 else None
                if not isinstance(small, cst.Assign) or small.value not in direct:
                    return updated
                new = updated.body[0]
                assert isinstance(new, cst.Assign)
                target = code(new.targets[0].target)
                statement = parse_statements(
                    f"if {RECOMPUTE}:\n    {target} = None\nelse:\n    {target} = {indented(code(new.value))}\n"
                )[0]
                return statement.with_changes(leading_lines=updated.leading_lines)

        result = forward.visit(_Masks())
        assert isinstance(result, cst.FunctionDef)
        if not direct and not _contains_recompute(result) and names_in(forward) & callables:
            raise ScaffoldError(f"{rule}: the base model's mask calls are not in a form the rule understands")
        return result

    def _checkpointed_layers(self, forward: cst.FunctionDef, blueprint: Blueprint) -> cst.FunctionDef:
        layers = _last(blueprint.backbone.layers.removesuffix(".*") if blueprint.backbone.layers else None)
        if layers is None:
            return forward
        found = 0
        rule = self.CODE

        class _Loop(cst.CSTTransformer):
            def leave_For(self, original: cst.For, updated: cst.For) -> cst.For:
                nonlocal found
                if not isinstance(updated.target, cst.Name) or not _reads_self(updated.iter, layers):
                    return updated
                layer = updated.target.value
                body = []
                for statement in updated.body.body:
                    call = _layer_call(statement, layer)
                    if call is None:
                        body.append(statement)
                        continue
                    found += 1
                    body.append(_checkpointed(statement, call, layer))
                return updated.with_changes(body=updated.body.with_changes(body=body))

        result = forward.visit(_Loop())
        if not found:
            raise ScaffoldError(
                f"{rule}: no call of a decoder layer inside a loop over self.{layers} in forward"
            )
        schedule_import(self.context, HOST_TRAINING_MODULE, CHECKPOINT, relative=2)
        assert isinstance(result, cst.FunctionDef)
        return result


# --- helpers ------------------------------------------------------------------------------------------


def _mask_call_shapes(function: cst.FunctionDef, callables: set[str]) -> tuple[set[cst.Call], set[cst.Dict]]:
    """Mask calls that are the whole value of an assignment statement, and dicts spread into mask calls."""
    direct: set[cst.Call] = set()
    spread_names: set[str] = set()
    dicts: dict[str, cst.Dict] = {}

    class _Find(cst.CSTVisitor):
        def visit_SimpleStatementLine(self, node: cst.SimpleStatementLine) -> None:
            if len(node.body) == 1 and isinstance(node.body[0], cst.Assign):
                assign = node.body[0]
                if isinstance(assign.value, cst.Call) and dotted(assign.value.func) in callables:
                    direct.add(assign.value)
                target = assign.targets[0].target
                if isinstance(target, cst.Name) and isinstance(assign.value, cst.Dict):
                    dicts[target.value] = assign.value

        def visit_Call(self, node: cst.Call) -> None:
            if dotted(node.func) in callables:
                for arg in node.args:
                    if arg.star == "**" and isinstance(arg.value, cst.Name):
                        spread_names.add(arg.value.value)

    function.visit(_Find())
    missing = spread_names - set(dicts)
    if missing:
        raise ScaffoldError(f"NXS012: mask arguments {', '.join(sorted(missing))} are not a dict literal")
    return direct, {dicts[name] for name in spread_names}


def _dict(entries: list[str]) -> cst.Dict:
    inner = "".join(f"    {indented(entry)},\n" for entry in entries)
    expression = cst.parse_expression("{\n" + inner + "}")
    assert isinstance(expression, cst.Dict)
    return expression


def _contains_recompute(node: cst.CSTNode) -> bool:
    return RECOMPUTE in cst.Module(body=[]).code_for_node(node)


def _embedding_outputs(forward: cst.FunctionDef, embedding: str | None) -> set[str]:
    """Names assigned from an expression that calls `self.<embedding>(...)`."""
    found: set[str] = set()
    if embedding is None:
        return found

    class _Find(cst.CSTVisitor):
        def visit_Assign(self, node: cst.Assign) -> None:
            if _reads_self(node.value, embedding):
                found.update(dotted(target.target) or "" for target in node.targets)

        def visit_AnnAssign(self, node: cst.AnnAssign) -> None:
            if node.value is not None and _reads_self(node.value, embedding):
                found.add(dotted(node.target) or "")

    forward.visit(_Find())
    found.discard("")
    return found


def _reads_self(node: cst.CSTNode, attribute: str) -> bool:
    return any(pc.self_attribute(n) == attribute for n in pc.walk(node))


def _checkpointing_switch(init: cst.FunctionDef) -> cst.FunctionDef:
    """`self.gradient_checkpointing = trn_config.gradient_checkpointing` (replacing transformers' False)."""
    value = cst.parse_expression(f"{pc.TRN_CONFIG}.gradient_checkpointing")
    replaced = 0

    class _Switch(cst.CSTTransformer):
        def leave_Assign(self, original: cst.Assign, updated: cst.Assign) -> cst.Assign:
            nonlocal replaced
            if (
                len(updated.targets) == 1
                and pc.self_attribute(updated.targets[0].target) == "gradient_checkpointing"
            ):
                replaced += 1
                return updated.with_changes(value=value)
            return updated

    result = init.visit(_Switch())
    assert isinstance(result, cst.FunctionDef)
    if replaced:
        return result
    body = list(init.body.body)
    position = next((index for index, statement in enumerate(body) if _calls_post_init(statement)), len(body))
    body[position:position] = parse_statements(f"self.gradient_checkpointing = {code(value)}")
    return init.with_changes(body=init.body.with_changes(body=body))


def _calls_post_init(statement: cst.BaseStatement) -> bool:
    """`self.post_init()`: transformers' end-of-constructor hook."""
    return (
        isinstance(statement, cst.SimpleStatementLine)
        and len(statement.body) == 1
        and isinstance(statement.body[0], cst.Expr)
        and isinstance(statement.body[0].value, cst.Call)
        and dotted(statement.body[0].value.func) == "self.post_init"
    )


def _layer_call(statement: cst.BaseStatement, layer: str) -> cst.Call | None:
    """The call `layer(...)` when it is the whole statement or the whole value of its assignment."""
    if not isinstance(statement, cst.SimpleStatementLine) or len(statement.body) != 1:
        return None
    small = statement.body[0]
    value = small.value if isinstance(small, cst.Assign | cst.Expr) else None
    if isinstance(value, cst.Call) and dotted(value.func) == layer:
        return value
    return None


def _checkpointed(statement: cst.SimpleStatementLine, call: cst.Call, layer: str) -> cst.BaseStatement:
    small = statement.body[0]
    prefix = f"{code(small.targets[0].target)} = " if isinstance(small, cst.Assign) else ""
    arguments = [argument_text(arg) for arg in call.args]
    wrapped = code(build_call(CHECKPOINT, [layer, *arguments]))
    plain = code(call)
    text = (
        "if self.gradient_checkpointing and self.training:\n"
        f"    {prefix}{indented(wrapped)}\n"
        "else:\n"
        f"    {prefix}{indented(plain)}\n"
    )
    return parse_statements(text)[0].with_changes(leading_lines=statement.leading_lines)
