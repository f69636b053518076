"""Tensor-parallel Llama for training, in the shape of optimum-neuron's hand-written one (compact).

- `embed_tokens`: vocab-sharded `ParallelEmbedding`; `lm_head`: `ColumnParallelLinear(gather_output=False)`
  with the vocab-parallel `ForCausalLMLoss` (logits stay sharded, `(B, S, V/T)` per rank).
- MLP: `gate_up_proj` (stride 2) + `FusedLinearsSpec`, `down_proj` row-parallel.
- Attention, chosen at construction: the GQA layer + `GQAQKVColumnParallelLinearSpec` when
  `KV < T or KV % T != 0`; fused `qkv_proj` (stride 3) + `FusedLinearsSpec` when `trn_config.fuse_qkv` and
  `H == KV`; otherwise separate q/k/v column-parallel projections. `o_proj` is row-parallel.
- Sequence parallelism: activations between blocks are `(S/T, B, D)`; norm weights carry
  `sequence_parallel_enabled`.
- Eager attention only; with `recompute_causal_mask` (the default) a causal mask is built on the scores'
  device (deviation ON-09), otherwise `create_causal_mask` builds the padded 4-D mask.
Biases (`attention_bias`, `mlp_bias`) are refused rather than dropped.
"""

from __future__ import annotations

from functools import partial

import torch
from neuronx_distributed.modules.qkv_linear import GQAQKVColumnParallelLinear
from neuronx_distributed.parallel_layers.layers import (
    ColumnParallelLinear,
    ParallelEmbedding,
    RowParallelLinear,
)
from neuronx_distributed.parallel_layers.parallel_state import get_tensor_model_parallel_size
from neuronx_distributed.parallel_layers.utils import divide
from torch import nn
from transformers import PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.models.llama.configuration_llama import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb, repeat_kv

from ..config import TrainingNeuronConfig
from ..loss_utils import ForCausalLMLoss
from ..masking_utils import create_causal_mask
from ..modeling_utils import NeuronModelMixin
from ..training_utils import checkpoint_with_kwargs
from ..transformations_utils import (
    CustomModule,
    FusedLinearsSpec,
    GQAQKVColumnParallelLinearSpec,
    ModelWeightTransformationSpecs,
)


def _init_normal(std: float, weight: torch.Tensor) -> torch.Tensor:
    return nn.init.normal_(weight, mean=0.0, std=std)


class LlamaRMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-6, sequence_parallel_enabled: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.weight.sequence_parallel_enabled = sequence_parallel_enabled
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states.to(input_dtype)


class LlamaMLP(nn.Module, CustomModule):
    def __init__(self, config: LlamaConfig, trn_config: TrainingNeuronConfig):
        nn.Module.__init__(self)
        if config.mlp_bias:
            raise NotImplementedError("mlp_bias=True is not supported by this test model")
        self.trn_config = trn_config
        self.act_fn = ACT2FN[config.hidden_act]
        tp_size = get_tensor_model_parallel_size()
        self.split_size = divide(config.intermediate_size, tp_size)
        init_method = partial(_init_normal, config.initializer_range)
        sp = trn_config.sequence_parallel_enabled
        self.specs = ModelWeightTransformationSpecs(
            specs=FusedLinearsSpec(
                fused_linear_name="gate_up_proj",
                linear_names=["gate_proj", "up_proj"],
                bias=False,
                fuse_axis="column",
                original_dims=[config.intermediate_size] * 2,
            )
        )
        self.gate_up_proj = ColumnParallelLinear(
            config.hidden_size,
            2 * config.intermediate_size,
            stride=2,
            bias=False,
            gather_output=False,
            init_method=init_method,
            sequence_parallel_enabled=sp,
            sequence_dimension=0,
            dtype=config.dtype,
        )
        self.down_proj = RowParallelLinear(
            config.intermediate_size,
            config.hidden_size,
            bias=False,
            input_is_parallel=True,
            init_method=init_method,
            sequence_parallel_enabled=sp,
            sequence_dimension=0,
            dtype=config.dtype,
        )

    def _activation(self, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        return self.act_fn(gate) * up

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).split(self.split_size, dim=2)
        if self.trn_config.gradient_checkpointing:
            return self.down_proj(checkpoint_with_kwargs(self._activation, gate, up))
        return self.down_proj(self._activation(gate, up))


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    causal: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    key = repeat_kv(key, module.num_key_value_groups)
    value = repeat_kv(value, module.num_key_value_groups)
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask[:, :, :, : key.shape[-2]]
    elif causal:
        future = torch.ones(query.shape[2], key.shape[2], dtype=torch.bool, device=scores.device).triu(
            diagonal=1
        )
        scores = scores.masked_fill(future, torch.finfo(scores.dtype).min)
    weights = nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value), weights


class LlamaAttention(nn.Module, CustomModule):
    def __init__(self, config: LlamaConfig, trn_config: TrainingNeuronConfig, layer_idx: int):
        super().__init__()
        if config.attention_bias:
            raise NotImplementedError("attention_bias=True is not supported by this test model")
        self.config = config
        self.trn_config = trn_config
        self.layer_idx = layer_idx
        heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_dropout
        tp_size = get_tensor_model_parallel_size()
        init_method = partial(_init_normal, config.initializer_range)
        sp = trn_config.sequence_parallel_enabled
        column = partial(
            ColumnParallelLinear,
            bias=False,
            gather_output=False,
            init_method=init_method,
            sequence_parallel_enabled=sp,
            sequence_dimension=0,
            dtype=config.dtype,
        )

        self.qkv_linear = kv_heads < tp_size or kv_heads % tp_size != 0
        if self.qkv_linear:
            self.kv_size_multiplier = trn_config.kv_size_multiplier or trn_config.auto_kv_size_multiplier(
                kv_heads
            )
        else:
            self.kv_size_multiplier = 1
        self.fused_qkv = not self.qkv_linear and trn_config.fuse_qkv and heads == kv_heads

        self.specs = ModelWeightTransformationSpecs()
        if self.qkv_linear:
            self.qkv_proj = GQAQKVColumnParallelLinear(
                config.hidden_size,
                [heads * self.head_dim, kv_heads * self.head_dim],
                bias=False,
                gather_output=False,
                init_method=init_method,
                sequence_parallel_enabled=sp,
                kv_size_multiplier=self.kv_size_multiplier,
                fuse_qkv=trn_config.fuse_qkv,
                dtype=config.dtype,
            )
            self.specs.add_spec(
                GQAQKVColumnParallelLinearSpec(
                    gqa_qkv_projection_name="qkv_proj",
                    query_projection_name="q_proj",
                    key_projection_name="k_proj",
                    value_projection_name="v_proj",
                    output_projection_name="o_proj",
                    num_attention_heads=heads,
                    num_key_value_heads=kv_heads,
                    kv_size_multiplier=self.kv_size_multiplier,
                    q_output_size_per_partition=self.qkv_proj.q_output_size_per_partition,
                    kv_output_size_per_partition=self.qkv_proj.kv_output_size_per_partition,
                    fuse_qkv=trn_config.fuse_qkv,
                    bias=False,
                )
            )
        elif self.fused_qkv:
            self.qkv_proj = column(config.hidden_size, 3 * heads * self.head_dim, stride=3)
            self.specs.add_spec(
                FusedLinearsSpec(
                    fused_linear_name="qkv_proj",
                    linear_names=["q_proj", "k_proj", "v_proj"],
                    bias=False,
                    fuse_axis="column",
                    original_dims=[heads * self.head_dim] * 3,
                )
            )
            self.split_size = divide(heads * self.head_dim, tp_size)
        else:
            self.q_proj = column(config.hidden_size, heads * self.head_dim)
            self.k_proj = column(config.hidden_size, kv_heads * self.head_dim)
            self.v_proj = column(config.hidden_size, kv_heads * self.head_dim)
        self.o_proj = RowParallelLinear(
            heads * self.head_dim,
            config.hidden_size,
            bias=False,
            input_is_parallel=True,
            init_method=init_method,
            sequence_parallel_enabled=sp,
            sequence_dimension=0,
            dtype=config.dtype,
        )
        # Per-rank head counts (K/V after replication).
        self.num_heads = divide(heads, tp_size)
        self.num_key_value_heads = divide(kv_heads * self.kv_size_multiplier, tp_size)
        self.num_key_value_groups = self.num_heads // self.num_key_value_heads

    def _heads(self, states: torch.Tensor, bsz: int, q_len: int, n_heads: int) -> torch.Tensor:
        """`(B, S, h*d)` or, under SP, `(S, B, h*d)` -> `(B, h, S, d)`."""
        if self.trn_config.sequence_parallel_enabled:
            return states.view(q_len, bsz, n_heads, self.head_dim).permute(1, 2, 0, 3)
        return states.view(bsz, q_len, n_heads, self.head_dim).transpose(1, 2)

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        sp = self.trn_config.sequence_parallel_enabled
        if sp:
            q_len, bsz, _ = hidden_states.shape
            q_len *= get_tensor_model_parallel_size()
        else:
            bsz, q_len, _ = hidden_states.shape
        if self.fused_qkv:
            query, key, value = self.qkv_proj(hidden_states).split(self.split_size, dim=2)
        elif self.qkv_linear:
            query, key, value = self.qkv_proj(hidden_states)
        else:
            query, key, value = (
                self.q_proj(hidden_states),
                self.k_proj(hidden_states),
                self.v_proj(hidden_states),
            )
        query = self._heads(query, bsz, q_len, self.num_heads)
        key = self._heads(key, bsz, q_len, self.num_key_value_heads)
        value = self._heads(value, bsz, q_len, self.num_key_value_heads)
        cos, sin = position_embeddings
        query, key = apply_rotary_pos_emb(query, key, cos, sin)
        attn_output, attn_weights = eager_attention_forward(
            self,
            query,
            key,
            value,
            attention_mask,
            self.scaling,
            dropout=self.attention_dropout if self.training else 0.0,
            causal=attention_mask is None,
        )
        if sp:
            attn_output = attn_output.permute(2, 0, 1, 3).reshape(q_len, bsz, self.num_heads * self.head_dim)
        else:
            attn_output = attn_output.transpose(1, 2).reshape(bsz, q_len, self.num_heads * self.head_dim)
        return self.o_proj(attn_output), attn_weights


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config: LlamaConfig, trn_config: TrainingNeuronConfig, layer_idx: int):
        super().__init__()
        sp = trn_config.sequence_parallel_enabled
        self.self_attn = LlamaAttention(config, trn_config, layer_idx)
        self.mlp = LlamaMLP(config, trn_config)
        self.input_layernorm = LlamaRMSNorm(config.hidden_size, config.rms_norm_eps, sp)
        self.post_attention_layernorm = LlamaRMSNorm(config.hidden_size, config.rms_norm_eps, sp)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        **kwargs,
    ) -> torch.Tensor:
        attn_out, _ = self.self_attn(self.input_layernorm(hidden_states), position_embeddings, attention_mask)
        hidden_states = hidden_states + attn_out
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))


class LlamaPreTrainedModel(PreTrainedModel):
    config = LlamaConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["LlamaDecoderLayer"]
    _supports_flash_attn = True
    _supports_sdpa = False
    _supports_flex_attn = False
    _can_compile_fullgraph = False


class LlamaModel(NeuronModelMixin, LlamaPreTrainedModel):
    def __init__(self, config: LlamaConfig, trn_config: TrainingNeuronConfig):
        LlamaPreTrainedModel.__init__(self, config)
        self.trn_config = trn_config
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        sp = trn_config.sequence_parallel_enabled
        self.embed_tokens = ParallelEmbedding(
            config.vocab_size,
            config.hidden_size,
            self.padding_idx,
            init_method=partial(_init_normal, config.initializer_range),
            sequence_parallel_enabled=sp,
            dtype=config.dtype,
        )
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(config, trn_config, i) for i in range(config.num_hidden_layers)
        )
        self.norm = LlamaRMSNorm(config.hidden_size, config.rms_norm_eps, sp)
        self.rotary_emb = LlamaRotaryEmbedding(config=config)
        self.gradient_checkpointing = trn_config.gradient_checkpointing
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        sp = self.trn_config.sequence_parallel_enabled
        length = inputs_embeds.size(0) * self.trn_config.tensor_parallel_size if sp else inputs_embeds.size(1)
        cache_position = torch.arange(length, device=inputs_embeds.device)
        if position_ids is None:
            position_ids = cache_position.unsqueeze(0)
        causal_mask = None
        if not self.trn_config.recompute_causal_mask:
            causal_mask = create_causal_mask(
                config=self.config,
                trn_config=self.trn_config,
                input_embeds=inputs_embeds,
                attention_mask=attention_mask,
                cache_position=cache_position,
                position_ids=position_ids,
            )
        hidden_states = inputs_embeds
        position_embeddings = self.rotary_emb(hidden_states, position_ids)
        for layer in self.layers:
            if self.gradient_checkpointing and self.training:
                hidden_states = checkpoint_with_kwargs(
                    layer, hidden_states, causal_mask, position_ids, position_embeddings
                )
            else:
                hidden_states = layer(
                    hidden_states,
                    attention_mask=causal_mask,
                    position_ids=position_ids,
                    position_embeddings=position_embeddings,
                )
        return BaseModelOutputWithPast(last_hidden_state=self.norm(hidden_states))


class LlamaForCausalLM(NeuronModelMixin, LlamaPreTrainedModel):
    _tied_weights_keys = ["lm_head.weight"]

    SUPPORTS_PIPELINE_PARALLELISM = True
    PIPELINE_TRANSFORMER_LAYER_CLS = LlamaDecoderLayer
    PIPELINE_INPUT_NAMES = ["input_ids", "attention_mask", "labels"]
    PIPELINE_LEAF_MODULE_CLASSE_NAMES = ["LlamaRMSNorm", "LlamaRotaryEmbedding"]

    def __init__(self, config: LlamaConfig, trn_config: TrainingNeuronConfig):
        LlamaPreTrainedModel.__init__(self, config)
        self.trn_config = trn_config
        self.model = LlamaModel(config, trn_config)
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
        self.vocab_size = divide(config.vocab_size, get_tensor_model_parallel_size())
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
        )
        logits = self.lm_head(outputs.last_hidden_state)
        if self.trn_config.sequence_parallel_enabled:
            logits = logits.transpose(0, 1).contiguous()
        loss = None
        if labels is not None:
            loss = ForCausalLMLoss(logits=logits, labels=labels, vocab_size=self.vocab_size, **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits)
