"""Templates of NXS021 (attention-variants), filled by `scaffold.rules.templates`."""

from neuronx_distributed.modules.qkv_linear import GQAQKVColumnParallelLinear
from neuronx_distributed.parallel_layers.layers import ColumnParallelLinear
from neuronx_distributed.parallel_layers.mappings import reduce_from_tensor_model_parallel_region
from neuronx_distributed.parallel_layers.parallel_state import get_tensor_model_parallel_size
from neuronx_distributed.parallel_layers.utils import divide

from ..transformations_utils import (
    FusedLinearsSpec,
    GQAQKVColumnParallelLinearSpec,
    ModelWeightTransformationSpecs,
)


def variant_choice(
    self,
    config,
    trn_config,
    init_method,
    tp_size,
    hidden_size,
    heads,
    kv_heads,
    heads_operand,
    kv_heads_operand,
    q_size,
    q_size_operand,
    kv_size,
    bias,
    q,
    k,
    v,
    o,
):
    """The q/k/v projections of the constructor, one of three variants chosen at construction (the
    rule puts the source's separate projections in the last branch and drops the NXD-09 note when the
    projections have no bias)."""
    # Attention variant, chosen at construction: NxD's GQA layer when the KV heads cannot be split
    # evenly over the tensor-parallel ranks (it replicates them kv_size_multiplier times), one fused
    # projection when asked for and every query head has its own K/V head, else separate projections.
    tp_size = get_tensor_model_parallel_size()
    self.qkv_linear = {kv_heads_operand} < tp_size or {kv_heads_operand} % tp_size != 0
    self.kv_size_multiplier = 1
    if self.qkv_linear:
        self.kv_size_multiplier = trn_config.kv_size_multiplier
        if self.kv_size_multiplier is None:
            self.kv_size_multiplier = trn_config.auto_kv_size_multiplier({kv_heads})
    self.specs = ModelWeightTransformationSpecs()
    if self.qkv_linear:
        # Attention biases on this layer rely on deviation NXD-09 (NxD 0.18 rejects bias=True here):
        # on Trainium such a model needs KV heads divisible by the TP size.
        self.qkv_proj = GQAQKVColumnParallelLinear(
            {hidden_size},
            [{q_size}, {kv_size}],
            bias={bias},
            gather_output=False,
            kv_size_multiplier=self.kv_size_multiplier,
            fuse_qkv=trn_config.fuse_qkv,
            init_method=init_method,
            sequence_parallel_enabled=trn_config.sequence_parallel_enabled,
            dtype=config.dtype,
        )
        self.specs.add_spec(
            GQAQKVColumnParallelLinearSpec(
                gqa_qkv_projection_name="qkv_proj",
                query_projection_name={q},
                key_projection_name={k},
                value_projection_name={v},
                output_projection_name={o},
                num_attention_heads={heads},
                num_key_value_heads={kv_heads},
                kv_size_multiplier=self.kv_size_multiplier,
                q_output_size_per_partition=self.qkv_proj.q_output_size_per_partition,
                kv_output_size_per_partition=self.qkv_proj.kv_output_size_per_partition,
                fuse_qkv=trn_config.fuse_qkv,
                bias={bias},
            )
        )
    elif trn_config.fuse_qkv and {heads_operand} == {kv_heads_operand}:
        self.qkv_proj = ColumnParallelLinear(
            {hidden_size},
            3 * {q_size_operand},
            stride=3,
            bias={bias},
            gather_output=False,
            init_method=init_method,
            sequence_parallel_enabled=trn_config.sequence_parallel_enabled,
            sequence_dimension=0,
            dtype=config.dtype,
        )
        self.specs.add_spec(
            FusedLinearsSpec(
                fused_linear_name="qkv_proj",
                linear_names=[{q}, {k}, {v}],
                bias={bias},
                fuse_axis="column",
                original_dims=[{q_size}] * 3,
            )
        )
        self.split_size = divide({q_size}, tp_size)
    else:
        pass
    return tp_size


def per_rank_heads(self, tp_size, heads, kv_heads_operand):
    """The constructor's head counts after the projections: per rank, K/V heads replicated."""

    # Per-rank head counts (K/V heads after replication by kv_size_multiplier).
    self.num_heads = divide({heads}, tp_size)
    self.num_key_value_heads = divide({kv_heads_operand} * self.kv_size_multiplier, tp_size)
    self.num_key_value_groups = self.num_heads // self.num_key_value_heads


def per_rank_heads_kv_first(self, tp_size, heads, kv_heads_operand):
    """The same, when the K/V count is read from `self.num_heads` (one head count for q, k and v): the K/V
    count is taken before `self.num_heads` becomes the per-rank query count."""

    # Per-rank head counts (K/V heads after replication by kv_size_multiplier).
    self.num_key_value_heads = divide({kv_heads_operand} * self.kv_size_multiplier, tp_size)
    self.num_heads = divide({heads}, tp_size)
    self.num_key_value_groups = self.num_heads // self.num_key_value_heads


def per_head_norm_gradients(parameters):
    """Gradient hooks for norms applied per head (q/k norms)."""
    # The per-head norms are replicated but each rank normalises only its own heads: their gradients
    # are summed over the tensor-parallel ranks, so every replica gets the full one.
    for parameter in {parameters}:
        parameter.register_hook(reduce_from_tensor_model_parallel_region)


def projections(self, hidden_states, query_states, key_states, value_states, q_proj, k_proj, v_proj):
    """The forward's q, k and v, by variant (`query_states`... and the `*_proj` attributes are renamed
    to the forward's own names and the source's projections)."""
    if (
        self.trn_config.fuse_qkv
        and self.num_heads == self.num_key_value_heads
        and self.kv_size_multiplier == 1
    ):
        query_states, key_states, value_states = self.qkv_proj({hidden_states}).split(self.split_size, dim=-1)
    elif self.qkv_linear:
        query_states, key_states, value_states = self.qkv_proj({hidden_states})
    else:
        query_states = self.q_proj({hidden_states})
        key_states = self.k_proj({hidden_states})
        value_states = self.v_proj({hidden_states})
    return query_states, key_states, value_states
