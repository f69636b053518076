"""Configuration objects of the routed experts (NxD's `moe/moe_configs.py`, the parts training uses).

`RoutedExpertsMLPOpsConfig` carries the expert MLP's shape and routing options; `BlockwiseMatmulConfig`
the settings of NxD's blockwise NKI matmul, which the reference accepts and stores but does not use (there
is no blockwise kernel here: dropless training computes every expert on every token, see NXD-22).
"""

from __future__ import annotations

from enum import Enum

from .model_utils import DEFAULT_BLOCK_SIZE, DEFAULT_LNC_SIZE, GLUType


class BlockShardStrategy(Enum):
    """Stand-in for `nkilib`'s block sharding strategies of the blockwise kernel (no effect here)."""

    HI_LO = "HI_LO"
    PING_PONG = "PING_PONG"


class BlockwiseMatmulConfig:
    """Settings of NxD's blockwise expert matmul kernel; stored for inspection, unused by the reference."""

    def __init__(
        self,
        block_size: int,
        use_block_parallel: bool,
        block_sharding_strategy: BlockShardStrategy,
        skip_dma_token: bool,
        skip_dma_weight: bool,
        logical_nc_config: int,
        blockwise_nki_autograd_cls,
        use_torch_block_wise: bool,
        parallelize_token_to_block_mapping: bool,
        optimized_block_to_token_mapping: bool,
        always_augment_inputs_for_blockwise_matmul: bool,
        use_shard_on_intermediate_dynamic_while: bool,
        use_shard_on_block_dynamic_while: bool,
        num_static_blocks: int,
        pad_num_blocks_to_even: bool = False,
    ):
        self.block_size = block_size
        self.use_block_parallel = use_block_parallel
        self.block_sharding_strategy = block_sharding_strategy
        self.skip_dma_token = skip_dma_token
        self.skip_dma_weight = skip_dma_weight
        self.logical_nc_config = logical_nc_config
        self.blockwise_nki_autograd_cls = blockwise_nki_autograd_cls
        self.use_torch_block_wise = use_torch_block_wise
        self.parallelize_token_to_block_mapping = parallelize_token_to_block_mapping
        self.optimized_block_to_token_mapping = optimized_block_to_token_mapping
        self.always_augment_inputs_for_blockwise_matmul = always_augment_inputs_for_blockwise_matmul
        self.use_shard_on_intermediate_dynamic_while = use_shard_on_intermediate_dynamic_while
        self.use_shard_on_block_dynamic_while = use_shard_on_block_dynamic_while
        self.num_static_blocks = num_static_blocks
        self.pad_num_blocks_to_even = pad_num_blocks_to_even

    @staticmethod
    def from_kwargs(**kwargs):
        """A config from keyword arguments, NxD's defaults for the ones left out (a strategy may be a name)."""
        strategy = kwargs.pop("block_sharding_strategy", BlockShardStrategy.HI_LO)
        if isinstance(strategy, str):
            if strategy not in BlockShardStrategy.__members__:
                raise ValueError(f"Unsupported block_sharding_strategy: {strategy}")
            strategy = BlockShardStrategy[strategy]
        return BlockwiseMatmulConfig(
            block_size=kwargs.pop("block_size", DEFAULT_BLOCK_SIZE),
            use_block_parallel=kwargs.pop("use_block_parallel", False),
            block_sharding_strategy=strategy,
            skip_dma_token=kwargs.pop("skip_dma_token", False),
            skip_dma_weight=kwargs.pop("skip_dma_weight", False),
            logical_nc_config=kwargs.pop("logical_nc_config", DEFAULT_LNC_SIZE),
            blockwise_nki_autograd_cls=kwargs.pop("blockwise_nki_autograd_cls", None),
            use_torch_block_wise=kwargs.pop("use_torch_block_wise", False),
            parallelize_token_to_block_mapping=kwargs.pop("parallelize_token_to_block_mapping", True),
            optimized_block_to_token_mapping=kwargs.pop("optimized_block_to_token_mapping", True),
            always_augment_inputs_for_blockwise_matmul=kwargs.pop(
                "always_augment_inputs_for_blockwise_matmul", False
            ),
            use_shard_on_intermediate_dynamic_while=kwargs.pop(
                "use_shard_on_intermediate_dynamic_while", False
            ),
            use_shard_on_block_dynamic_while=kwargs.pop("use_shard_on_block_dynamic_while", False),
            num_static_blocks=kwargs.pop("num_static_blocks", None),
            pad_num_blocks_to_even=kwargs.pop("pad_num_blocks_to_even", False),
        )

    @staticmethod
    def default():
        return BlockwiseMatmulConfig.from_kwargs()


class RoutedExpertsMLPOpsConfig:
    """Shape and routing options of the routed experts (see `ExpertMLPs` for their meaning)."""

    def __init__(
        self,
        num_experts: int,
        hidden_size: int,
        intermediate_size: int,
        top_k: int,
        hidden_act: str,
        glu_mlp: bool,
        bias: bool = False,
        glu_type: GLUType | None = GLUType.GLU,
        hidden_act_scaling_factor: float = 1.0,
        hidden_act_bias: float = 0.0,
        hidden_size_actual: int | None = None,
        intermediate_size_actual: int | None = None,
        is_hidden_dim_shuffled: bool | None = None,
        is_intermediate_dim_shuffled: bool | None = None,
        use_index_calc_kernel: bool = True,
        gate_clamp_upper_limit: float | None = None,
        gate_clamp_lower_limit: float | None = None,
        up_clamp_upper_limit: float | None = None,
        up_clamp_lower_limit: float | None = None,
        normalize_top_k_affinities: bool = False,
        early_expert_affinity_modulation: bool = False,
        input_layer_init_method=None,
        output_layer_init_method=None,
        capacity_factor: float | None = None,
        enable_spmd_rank=False,
        is_prefill=None,
        expert_distribution: list[list[int]] | None = None,
    ):
        self.num_experts = num_experts
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.top_k = top_k
        self.hidden_act = hidden_act
        self.glu_mlp = glu_mlp
        self.bias = bias
        self.glu_type = GLUType.validate(glu_type) if glu_mlp else glu_type
        self.hidden_act_scaling_factor = hidden_act_scaling_factor
        self.hidden_act_bias = hidden_act_bias
        self.hidden_size_actual = hidden_size_actual
        self.intermediate_size_actual = intermediate_size_actual
        self.is_hidden_dim_shuffled = is_hidden_dim_shuffled
        self.is_intermediate_dim_shuffled = is_intermediate_dim_shuffled
        self.use_index_calc_kernel = use_index_calc_kernel
        self.gate_clamp_upper_limit = gate_clamp_upper_limit
        self.gate_clamp_lower_limit = gate_clamp_lower_limit
        self.up_clamp_upper_limit = up_clamp_upper_limit
        self.up_clamp_lower_limit = up_clamp_lower_limit
        self.normalize_top_k_affinities = normalize_top_k_affinities
        self.early_expert_affinity_modulation = early_expert_affinity_modulation
        self.input_layer_init_method = input_layer_init_method
        self.output_layer_init_method = output_layer_init_method
        self.capacity_factor = capacity_factor
        self.enable_spmd_rank = enable_spmd_rank
        self.is_prefill = is_prefill
        self.expert_distribution = expert_distribution
