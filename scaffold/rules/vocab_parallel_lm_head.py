"""NXS013: the lm head is vocabulary-parallel and feeds the host's vocab-parallel loss.

- `lm_head` becomes `ColumnParallelLinear(gather_output=False)`: rank r computes the logits of its
  vocabulary slice `[r V/T, (r+1) V/T)` and the full logits are never gathered. Under sequence
  parallelism its input is the `(S/T, B, D)` stream (all-gathered on the sequence dimension inside the
  layer) and its output `(S, B, V/T)` is transposed back to `(B, S, V/T)`.
- The causal LM's `vocab_size` becomes the per-rank size and the loss is `..loss_utils.ForCausalLMLoss`
  with it (a cross-entropy that reduces over the TP group), replacing transformers' `self.loss_function`.
- `logits_to_keep` (a generation knob) goes: training computes the logits of every position.
- What the source does to the logits after the head (scaling, softcapping) is kept as written: it is
  elementwise, so it commutes with the vocabulary split and the transpose.
- Tied embeddings keep working: the head's weight shard has the embedding shard's shape and the tie is
  declared in `_tied_weights_keys` (NXS005).
"""

from __future__ import annotations

import libcst as cst

from ..blueprint import LayerSite, Role
from ..errors import ScaffoldError
from . import _parallel_code as pc
from ._edits import (
    argument_text,
    config_parameter,
    dotted,
    find_method,
    module_imports,
    names_in,
    parse_statements,
)
from ._imports import schedule_import, schedule_removal
from .base import Rule, stored_example

LM_HEAD_CLASS = "ColumnParallelLinear"
LOSS = "ForCausalLMLoss"
HOST_LOSS_MODULE = "loss_utils"  # `from ..loss_utils import ForCausalLMLoss`
TRANSFORMERS_LOSS = "self.loss_function"
GENERATION_PARAMETERS = frozenset({"logits_to_keep"})
TRANSPOSE_SOURCE = """
if self.trn_config.sequence_parallel_enabled:
    {logits} = {logits}.transpose(0, 1).contiguous()
"""


class VocabParallelLMHead(Rule):
    CODE = "NXS013"
    NAME = "vocab-parallel-lm-head"
    SUMMARY = (
        "lm_head -> ColumnParallelLinear(gather_output=False) + vocab-parallel ForCausalLMLoss (V/T per rank)"
    )
    EXAMPLES = (stored_example(CODE, "granite", "GraniteForCausalLM"),)

    def visit_Module(self, node: cst.Module) -> None:
        self._imports = module_imports(node)

    def leave_ClassDef(self, original_node: cst.ClassDef, updated_node: cst.ClassDef) -> cst.ClassDef:
        heads = [
            site
            for site in self.blueprint.sites
            if site.role is Role.LM_HEAD and site.owner == updated_node.name.value
        ]
        if not heads:
            return updated_node
        if len(heads) > 1:
            raise ScaffoldError(
                f"{self.CODE}: {heads[1].location}: more than one lm head in {heads[1].owner}"
            )
        site = heads[0]
        init = find_method(updated_node, "__init__")
        forward = find_method(updated_node, "forward")
        if init is None or forward is None:
            raise ScaffoldError(f"{self.CODE}: {site.location}: {site.owner} needs __init__ and forward")
        updated_node = pc.with_method(updated_node, self._init(init, site))
        updated_node = pc.with_method(updated_node, self._forward(forward, site))
        pc.schedule_layer_imports(
            self.context,
            (pc.NXD_LAYERS, LM_HEAD_CLASS),
            (pc.NXD_STATE, "get_tensor_model_parallel_size"),
            (pc.NXD_UTILS, "divide"),
        )
        schedule_import(self.context, HOST_LOSS_MODULE, LOSS, relative=2)
        return updated_node

    def leave_Module(self, original_node: cst.Module, updated_node: cst.Module) -> cst.Module:
        if any(site.role is Role.LM_HEAD for site in self.blueprint.sites):
            return pc.ensure_init_helper(updated_node)
        return updated_node

    def _init(self, init: cst.FunctionDef, site: LayerSite) -> cst.FunctionDef:
        config = config_parameter(init, self.CODE)
        per_rank = f"divide({site.out_features.source}, get_tensor_model_parallel_size())"
        head_built = 0
        vocab_set = 0

        class _Init(cst.CSTTransformer):
            def leave_Assign(self, original: cst.Assign, updated: cst.Assign) -> cst.Assign:
                nonlocal head_built, vocab_set
                if len(updated.targets) != 1:
                    return updated
                attribute = pc.self_attribute(updated.targets[0].target)
                if attribute == site.attribute and isinstance(updated.value, cst.Call):
                    head_built += 1
                    arguments = [argument_text(arg) for arg in updated.value.args]
                    if not any(text.startswith("bias=") for text in arguments):
                        arguments.append("bias=True")  # nn.Linear's default, explicit for the parallel layer
                    arguments.append("gather_output=False")
                    return updated.with_changes(
                        value=cst.parse_expression(pc.layer_call(LM_HEAD_CLASS, arguments, config))
                    )
                if attribute == "vocab_size":
                    vocab_set += 1
                    return updated.with_changes(value=cst.parse_expression(per_rank))
                return updated

        result = init.visit(_Init())
        assert isinstance(result, cst.FunctionDef)
        if not head_built:
            raise ScaffoldError(
                f"{self.CODE}: {site.location}: no `self.{site.attribute} = {site.source}` to convert"
            )
        if not vocab_set:
            body = list(result.body.body)
            index = pc.index_of_assignment(body, site.attribute)
            position = len(body) if index is None else index + 1
            body[position:position] = parse_statements(f"self.vocab_size = {per_rank}")
            result = pc.with_body(result, body)
        return result

    def _forward(self, forward: cst.FunctionDef, site: LayerSite) -> cst.FunctionDef:
        for param in forward.params.params:
            if param.name.value in GENERATION_PARAMETERS and param.annotation is not None:
                for name in names_in(param.annotation):  # `Union` of `Union[int, torch.Tensor]`
                    if name in self._imports:
                        module, obj = self._imports[name]
                        schedule_removal(self.context, module, obj)
        forward = _without_generation_parameters(forward)
        body = list(forward.body.body)
        position = None
        logits = None
        for index, statement in enumerate(body):
            if pc.self_calls(statement, site.attribute):
                logits = pc.assigned_name(statement)
                position = index
                break
        if position is None or logits is None:
            raise ScaffoldError(
                f"{self.CODE}: {site.location}: {site.owner}.forward does not assign `self.{site.attribute}(...)` "
                "to a name"
            )
        body[position + 1 : position + 1] = parse_statements(TRANSPOSE_SOURCE.format(logits=logits))
        forward = pc.with_body(forward, body)
        return self._loss(forward, site)

    def _loss(self, forward: cst.FunctionDef, site: LayerSite) -> cst.FunctionDef:
        replaced = 0

        class _Loss(cst.CSTTransformer):
            def leave_Call(self, original: cst.Call, updated: cst.Call) -> cst.Call:
                nonlocal replaced
                if dotted(updated.func) != TRANSFORMERS_LOSS:
                    return updated
                replaced += 1
                args = [
                    arg.with_changes(value=cst.parse_expression("self.vocab_size"))
                    if arg.keyword is not None and arg.keyword.value == "vocab_size"
                    else arg
                    for arg in updated.args
                ]
                return updated.with_changes(func=cst.Name(LOSS), args=args)

        result = forward.visit(_Loss())
        if not replaced:
            raise ScaffoldError(
                f"{self.CODE}: {site.location}: {site.owner}.forward computes its loss without "
                f"`{TRANSFORMERS_LOSS}(...)`; the vocab-parallel loss cannot replace it"
            )
        assert isinstance(result, cst.FunctionDef)
        return result


def _without_generation_parameters(forward: cst.FunctionDef) -> cst.FunctionDef:
    """Drop `logits_to_keep` and what it selects: indexing by it is unwrapped, names derived from it go."""
    params = [param for param in forward.params.params if param.name.value not in GENERATION_PARAMETERS]
    if len(params) == len(forward.params.params):
        return forward
    forward = forward.with_changes(params=forward.params.with_changes(params=params))
    derived = set(GENERATION_PARAMETERS)

    class _Unwrap(cst.CSTTransformer):
        def leave_Subscript(self, original: cst.Subscript, updated: cst.Subscript) -> cst.BaseExpression:
            if any(names_in(element) & derived for element in updated.slice):
                return updated.value
            return updated

    body: list[cst.BaseStatement] = []
    carried: list[cst.EmptyLine] = []
    for statement in forward.body.body:
        statement = statement.visit(_Unwrap())  # type: ignore[assignment]
        target = pc.assigned_name(statement)
        value = pc.assigned_value(statement)
        if target is not None and value is not None and names_in(value) & derived:
            derived.add(target)
            carried.extend(line for line in statement.leading_lines if line.comment is None)
            continue
        if carried:
            statement = statement.with_changes(leading_lines=[*carried[:1], *statement.leading_lines])
            carried = []
        body.append(statement)
    result = pc.with_body(forward, body)
    left = names_in(result.body) & derived
    if left:
        raise ScaffoldError(f"NXS013: {', '.join(sorted(left))} still used in {forward.name.value}")
    return result
