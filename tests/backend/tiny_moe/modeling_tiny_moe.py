"""Mixtral's parameters without attention: embeddings, MoE blocks, norms and the LM head, for checkpoints.

`model.layers.{i}.block_sparse_moe` is NxD's `MoE` (router + expert-fused MLPs) carrying the specs that map
Mixtral's `gate.weight` and `experts.{e}.w1/w3/w2.weight` onto it; the embedding and the LM head are
vocab-parallel, the norms replicated. There is no forward pass: the tests load, save and consolidate it.
"""

from __future__ import annotations

import torch
from neuronx_distributed.modules.moe import ExpertMLPs, MoE, RouterTopK
from neuronx_distributed.parallel_layers.layers import ColumnParallelLinear, ParallelEmbedding
from torch import nn
from transformers import MixtralConfig, PreTrainedModel

from ..config import TrainingNeuronConfig
from ..modeling_utils import NeuronModelMixin
from ..transformations_utils import CustomModule, ModelWeightTransformationSpecs
from .moe_expert_weights import ExpertMLPsSpec, RenamedParametersSpec


class TinyMoeRMSNorm(nn.Module):
    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))


class TinyMoeSparseBlock(MoE, CustomModule):
    """Mixtral's `block_sparse_moe` on NxD's MoE layer, with the specs of its weights."""

    def __init__(self, config: MixtralConfig) -> None:
        E, k, H = config.num_local_experts, config.num_experts_per_tok, config.hidden_size
        router = RouterTopK(
            num_experts=E,
            top_k=k,
            hidden_size=H,
            act_fn="softmax",
            sequence_parallel_enabled=False,
            sequence_dimension=1,
            dtype=config.dtype,
            device=torch.device("cpu"),
        )
        experts = ExpertMLPs(
            num_experts=E,
            top_k=k,
            hidden_size=H,
            intermediate_size=config.intermediate_size,
            hidden_act=config.hidden_act,
            glu_mlp=True,
            capacity_factor=None,
            normalize_top_k_affinities=True,
            dtype=config.dtype,
        )
        super().__init__(router, experts, return_router_logits=True, sequence_dimension=1)
        self.specs = ModelWeightTransformationSpecs(
            specs=[
                RenamedParametersSpec({"router.linear_router.weight": "gate.weight"}),
                ExpertMLPsSpec(num_experts=E, gate_proj_name="w1", up_proj_name="w3", down_proj_name="w2"),
            ]
        )


class TinyMoeDecoderLayer(nn.Module):
    def __init__(self, config: MixtralConfig) -> None:
        super().__init__()
        self.block_sparse_moe = TinyMoeSparseBlock(config)
        self.post_attention_layernorm = TinyMoeRMSNorm(config.hidden_size)


class TinyMoePreTrainedModel(PreTrainedModel):
    config = MixtralConfig
    base_model_prefix = "model"


class TinyMoeModel(nn.Module):
    def __init__(self, config: MixtralConfig) -> None:
        super().__init__()
        self.embed_tokens = ParallelEmbedding(config.vocab_size, config.hidden_size, dtype=config.dtype)
        self.layers = nn.ModuleList(TinyMoeDecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = TinyMoeRMSNorm(config.hidden_size)


class TinyMoeForCausalLM(NeuronModelMixin, TinyMoePreTrainedModel):
    def __init__(self, config: MixtralConfig, trn_config: TrainingNeuronConfig) -> None:
        TinyMoePreTrainedModel.__init__(self, config)
        self.trn_config = trn_config
        self.model = TinyMoeModel(config)
        self.lm_head = ColumnParallelLinear(
            config.hidden_size, config.vocab_size, bias=False, gather_output=False, dtype=config.dtype
        )
        self.post_init()
