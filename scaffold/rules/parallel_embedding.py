"""NXS010: the token embedding becomes a vocabulary-parallel `ParallelEmbedding`.

Rank r holds rows `[r V/T, (r+1) V/T)` of the table; ids outside its range contribute zeros and the
partial outputs are summed over the TP group, or, with sequence parallelism, reduce-scattered into the
sequence-first shard `(S/T, B, D)` the rest of the model works on. The arguments of the source call
(sizes, `padding_idx`) are kept as written; the layer gets the init method every parallel layer uses,
the sequence-parallel flag and the config's dtype. This rule also emits the file's one `_init_normal`
helper that every later parallel-layer rule refers to.
"""

from __future__ import annotations

import libcst as cst

from ..blueprint import LayerSite, Role
from ..errors import ScaffoldError
from . import _parallel_code as pc
from ._edits import argument_text, config_parameter, find_method, self_attribute
from .base import Rule, RuleExample

EMBEDDING_CLASS = "ParallelEmbedding"


def embedding_sites(sites: tuple[LayerSite, ...]) -> list[LayerSite]:
    """The layer sites the Blueprint gives the token-embedding role."""
    return [site for site in sites if site.role is Role.EMBEDDING]


class ParallelEmbeddingRule(Rule):
    CODE = "NXS010"
    NAME = "parallel-embedding"
    SUMMARY = "token embedding -> ParallelEmbedding (vocab-sharded, SP output, init from initializer_range)"

    def leave_ClassDef(self, original_node: cst.ClassDef, updated_node: cst.ClassDef) -> cst.ClassDef:
        sites = [
            site for site in embedding_sites(self.blueprint.sites) if site.owner == updated_node.name.value
        ]
        if not sites:
            return updated_node
        init = find_method(updated_node, "__init__")
        if init is None:
            raise ScaffoldError(
                f"{self.CODE}: {sites[0].location}: {updated_node.name.value} has no __init__"
            )
        config = config_parameter(init, self.CODE)
        for site in sites:
            init = _replace_constructor(init, site, config, self.CODE)
        pc.schedule_layer_imports(self.context, (pc.NXD_LAYERS, EMBEDDING_CLASS))
        return pc.with_method(updated_node, init)

    def leave_Module(self, original_node: cst.Module, updated_node: cst.Module) -> cst.Module:
        if embedding_sites(self.blueprint.sites):
            return pc.ensure_init_helper(updated_node)
        return updated_node


def _replace_constructor(init: cst.FunctionDef, site: LayerSite, config: str, rule: str) -> cst.FunctionDef:
    replaced = 0

    class _Constructor(cst.CSTTransformer):
        def leave_Assign(self, original: cst.Assign, updated: cst.Assign) -> cst.Assign:
            nonlocal replaced
            if len(updated.targets) != 1 or self_attribute(updated.targets[0].target) != site.attribute:
                return updated
            if not isinstance(updated.value, cst.Call):
                return updated
            replaced += 1
            arguments = [argument_text(arg) for arg in updated.value.args]
            layer = pc.layer_call(EMBEDDING_CLASS, arguments, config, sequence_dimension=False)
            return updated.with_changes(value=cst.parse_expression(layer))

    result = init.visit(_Constructor())
    if not replaced:
        raise ScaffoldError(f"{rule}: {site.location}: no `self.{site.attribute} = {site.source}` to convert")
    assert isinstance(result, cst.FunctionDef)
    return result


EXAMPLES = (
    RuleExample(
        model_type="llama",
        scope="LlamaModel",
        before=r"""class LlamaModel(NeuronModelMixin, LlamaPreTrainedModel):
    def __init__(self, config: LlamaConfig, trn_config: TrainingNeuronConfig):
        super().__init__(config)
        self.trn_config = trn_config
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size

        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList(
            [LlamaDecoderLayer(config, trn_config, layer_idx) for layer_idx in range(config.num_hidden_layers)]
        )
        self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = LlamaRotaryEmbedding(config=config)
        self.gradient_checkpointing = False

        # Initialize weights and apply final processing
        self.post_init()

    def forward(
        self,
        input_ids: Optional[torch.LongTensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.LongTensor] = None,
        inputs_embeds: Optional[torch.FloatTensor] = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPast:
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")

        if inputs_embeds is None:
            inputs_embeds: torch.Tensor = self.embed_tokens(input_ids)

        cache_position: torch.Tensor = torch.arange(0, inputs_embeds.shape[1], device=inputs_embeds.device)

        if position_ids is None:
            position_ids = cache_position.unsqueeze(0)

        causal_mask = create_causal_mask(
            config=self.config,
            input_embeds=inputs_embeds,
            attention_mask=attention_mask,
            cache_position=cache_position,
            past_key_values=None,
            position_ids=position_ids,
        )

        hidden_states = inputs_embeds
        position_embeddings = self.rotary_emb(hidden_states, position_ids)

        for decoder_layer in self.layers[: self.config.num_hidden_layers]:
            hidden_states = decoder_layer(
                hidden_states,
                attention_mask=causal_mask,
                position_ids=position_ids,
                position_embeddings=position_embeddings,
                **kwargs,
            )

        hidden_states = self.norm(hidden_states)
        return BaseModelOutputWithPast(
            last_hidden_state=hidden_states,
        )
""",
        after=r"""class LlamaModel(NeuronModelMixin, LlamaPreTrainedModel):
    def __init__(self, config: LlamaConfig, trn_config: TrainingNeuronConfig):
        super().__init__(config)
        self.trn_config = trn_config
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size

        self.embed_tokens = ParallelEmbedding(
            config.vocab_size,
            config.hidden_size,
            self.padding_idx,
            init_method=partial(_init_normal, config.initializer_range),
            sequence_parallel_enabled=trn_config.sequence_parallel_enabled,
            dtype=config.dtype,
        )
        self.layers = nn.ModuleList(
            [LlamaDecoderLayer(config, trn_config, layer_idx) for layer_idx in range(config.num_hidden_layers)]
        )
        self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = LlamaRotaryEmbedding(config=config)
        self.gradient_checkpointing = False

        # Initialize weights and apply final processing
        self.post_init()

    def forward(
        self,
        input_ids: Optional[torch.LongTensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.LongTensor] = None,
        inputs_embeds: Optional[torch.FloatTensor] = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPast:
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")

        if inputs_embeds is None:
            inputs_embeds: torch.Tensor = self.embed_tokens(input_ids)

        cache_position: torch.Tensor = torch.arange(0, inputs_embeds.shape[1], device=inputs_embeds.device)

        if position_ids is None:
            position_ids = cache_position.unsqueeze(0)

        causal_mask = create_causal_mask(
            config=self.config,
            input_embeds=inputs_embeds,
            attention_mask=attention_mask,
            cache_position=cache_position,
            past_key_values=None,
            position_ids=position_ids,
        )

        hidden_states = inputs_embeds
        position_embeddings = self.rotary_emb(hidden_states, position_ids)

        for decoder_layer in self.layers[: self.config.num_hidden_layers]:
            hidden_states = decoder_layer(
                hidden_states,
                attention_mask=causal_mask,
                position_ids=position_ids,
                position_embeddings=position_embeddings,
                **kwargs,
            )

        hidden_states = self.norm(hidden_states)
        return BaseModelOutputWithPast(
            last_hidden_state=hidden_states,
        )
""",
    ),
)
ParallelEmbeddingRule.EXAMPLES = EXAMPLES
