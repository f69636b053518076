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
from .base import Rule, RuleExample

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


EXAMPLES = (
    RuleExample(
        model_type="granite",
        scope="GraniteForCausalLM",
        before=r"""class GraniteForCausalLM(NeuronModelMixin, GranitePreTrainedModel):
    _tied_weights_keys = ["lm_head.weight"]

    SUPPORTS_PIPELINE_PARALLELISM = True
    PIPELINE_TRANSFORMER_LAYER_CLS = GraniteDecoderLayer
    PIPELINE_INPUT_NAMES = ["input_ids", "attention_mask", "labels"]
    PIPELINE_LEAF_MODULE_CLASSE_NAMES = ["GraniteRMSNorm", "GraniteRotaryEmbedding"]

    def __init__(self, config, trn_config: TrainingNeuronConfig):
        super().__init__(config)
        self.trn_config = trn_config
        self.model = GraniteModel(config, trn_config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

        # Initialize weights and apply final processing
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: Optional[torch.LongTensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.LongTensor] = None,
        inputs_embeds: Optional[torch.FloatTensor] = None,
        labels: Optional[torch.LongTensor] = None,
        output_attentions: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        logits_to_keep: Union[int, torch.Tensor] = 0,
        **kwargs: Unpack[TransformersKwargs],
    ) -> CausalLMOutputWithPast:
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )

        # decoder outputs consists of (dec_features, layer_state, dec_hidden, dec_attn)
        outputs: BaseModelOutputWithPast = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            **kwargs,
        )

        hidden_states = outputs.last_hidden_state
        # Only compute necessary logits, and do not upcast them to float if we are not computing the loss
        slice_indices = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, slice_indices, :])
        logits = logits / self.config.logits_scaling  # main diff with Llama

        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)

        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )
""",
        after=r"""class GraniteForCausalLM(NeuronModelMixin, GranitePreTrainedModel):
    _tied_weights_keys = ["lm_head.weight"]

    SUPPORTS_PIPELINE_PARALLELISM = True
    PIPELINE_TRANSFORMER_LAYER_CLS = GraniteDecoderLayer
    PIPELINE_INPUT_NAMES = ["input_ids", "attention_mask", "labels"]
    PIPELINE_LEAF_MODULE_CLASSE_NAMES = ["GraniteRMSNorm", "GraniteRotaryEmbedding"]

    def __init__(self, config, trn_config: TrainingNeuronConfig):
        super().__init__(config)
        self.trn_config = trn_config
        self.model = GraniteModel(config, trn_config)
        self.vocab_size = divide(config.vocab_size, get_tensor_model_parallel_size())
        self.lm_head = ColumnParallelLinear(
            config.hidden_size,
            config.vocab_size,
            bias=False,
            gather_output=False,
            init_method=partial(_init_normal, config.initializer_range),
            sequence_parallel_enabled=trn_config.sequence_parallel_enabled,
            sequence_dimension=0,
            dtype=config.dtype,
        )

        # Initialize weights and apply final processing
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: Optional[torch.LongTensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.LongTensor] = None,
        inputs_embeds: Optional[torch.FloatTensor] = None,
        labels: Optional[torch.LongTensor] = None,
        output_attentions: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> CausalLMOutputWithPast:
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )

        # decoder outputs consists of (dec_features, layer_state, dec_hidden, dec_attn)
        outputs: BaseModelOutputWithPast = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            **kwargs,
        )

        hidden_states = outputs.last_hidden_state
        logits = self.lm_head(hidden_states)
        if self.trn_config.sequence_parallel_enabled:
            logits = logits.transpose(0, 1).contiguous()
        logits = logits / self.config.logits_scaling  # main diff with Llama

        loss = None
        if labels is not None:
            loss = ForCausalLMLoss(logits=logits, labels=labels, vocab_size=self.vocab_size, **kwargs)

        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )
""",
    ),
)
VocabParallelLMHead.EXAMPLES = EXAMPLES
