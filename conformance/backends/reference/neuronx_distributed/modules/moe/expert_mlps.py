"""`ExpertMLPs`: the routed experts built from plain arguments (NxD's `moe/expert_mlps.py`).

The arguments of NxD's blockwise NKI kernel (`block_size`, `logical_nc_config`, `use_block_parallel`,
`skip_dma_*`, ...) are accepted and stored in `blockwise_matmul_config`; they change nothing here (NXD-22).
Expert biases, clamped projections, early affinity modulation, uneven expert distributions and hybrid
sharding are not provided (NXD-23): asking for them raises NotImplementedError.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .expert_mlps_v2 import ExpertMLPsV2
from .model_utils import DEFAULT_BLOCK_SIZE, DEFAULT_LNC_SIZE, GLUType
from .moe_configs import BlockShardStrategy, BlockwiseMatmulConfig, RoutedExpertsMLPOpsConfig


class ExpertMLPs(ExpertMLPsV2):
    """Routed experts for `num_experts` experts of `hidden_size -> intermediate_size -> hidden_size`.

    `glu_mlp=True` gives the gated MLP (`act(x W_gate) * (x W_up)`, then `W_down`); `capacity_factor=None`
    drops no token; `normalize_top_k_affinities` renormalises the chosen affinities to sum to 1 (top_k > 1).
    The weights are `mlp_op.gate_up_proj.weight` `[E / EP, H, 2 I / TP]` (or `mlp_op.up_proj.weight`
    `[E / EP, H, I / TP]`) and `mlp_op.down_proj.weight` `[E / EP, I / TP, H]`.
    """

    def __init__(
        self,
        num_experts: int,
        top_k: int,
        hidden_size: int,
        intermediate_size: int,
        hidden_act: str,
        glu_mlp: bool,
        capacity_factor: float | None,
        sequence_parallel_enabled: bool = False,
        block_size: int | None = None,
        normalize_top_k_affinities: bool = False,
        bias: bool = False,
        glu_type: GLUType | None = GLUType.GLU,
        hidden_act_scaling_factor: float = 1.0,
        hidden_act_bias: float = 0.0,
        gate_clamp_upper_limit: float | None = None,
        gate_clamp_lower_limit: float | None = None,
        up_clamp_upper_limit: float | None = None,
        up_clamp_lower_limit: float | None = None,
        return_bias: bool = False,
        init_method: Callable[..., Any] | None = torch.nn.init.kaiming_uniform_,
        output_layer_init_method: Callable[..., Any] | None = torch.nn.init.kaiming_uniform_,
        dtype: torch.dtype = torch.float32,
        device: torch.device = torch.device("cpu"),  # noqa: B008 (NxD's default, compared by the API-surface test)
        tensor_model_parallel_group=None,
        expert_model_parallel_group=None,
        enable_spmd_rank: bool = False,
        blockwise_nki_autograd_cls=None,
        use_torch_block_wise: bool = False,
        logical_nc_config=DEFAULT_LNC_SIZE,
        parallelize_token_to_block_mapping: bool = True,
        early_expert_affinity_modulation: bool = False,
        optimized_block_to_token_mapping: bool = True,
        use_block_parallel: bool = False,
        always_augment_inputs_for_blockwise_matmul: bool = False,
        block_sharding_strategy: BlockShardStrategy = BlockShardStrategy.HI_LO,
        skip_dma_token: bool = False,
        skip_dma_weight: bool = False,
        tkg_tensor_model_parallel_group=None,
        tkg_expert_model_parallel_group=None,
        cte_tensor_model_parallel_group=None,
        cte_expert_model_parallel_group=None,
        is_prefill=True,
        enabled_hybrid_sharding=False,
        use_shard_on_intermediate_dynamic_while=False,
        use_shard_on_block_dynamic_while=False,
        use_index_calc_kernel=False,
        expert_distribution: list[list[int]] | None = None,
    ):
        routed_experts_mlp_config = RoutedExpertsMLPOpsConfig(
            num_experts=num_experts,
            hidden_size=hidden_size,
            intermediate_size=intermediate_size,
            glu_mlp=glu_mlp,
            bias=bias,
            glu_type=glu_type,
            hidden_act_scaling_factor=hidden_act_scaling_factor,
            hidden_act_bias=hidden_act_bias,
            gate_clamp_upper_limit=gate_clamp_upper_limit,
            gate_clamp_lower_limit=gate_clamp_lower_limit,
            up_clamp_upper_limit=up_clamp_upper_limit,
            up_clamp_lower_limit=up_clamp_lower_limit,
            normalize_top_k_affinities=normalize_top_k_affinities,
            early_expert_affinity_modulation=early_expert_affinity_modulation,
            input_layer_init_method=init_method,
            output_layer_init_method=output_layer_init_method,
            capacity_factor=capacity_factor,
            top_k=top_k,
            hidden_act=hidden_act,
            enable_spmd_rank=enable_spmd_rank,
            use_index_calc_kernel=use_index_calc_kernel,
            expert_distribution=expert_distribution,
        )
        blockwise_matmul_config = BlockwiseMatmulConfig.from_kwargs(
            block_size=block_size if block_size else DEFAULT_BLOCK_SIZE,
            logical_nc_config=logical_nc_config,
            use_torch_block_wise=use_torch_block_wise,
            blockwise_nki_autograd_cls=blockwise_nki_autograd_cls,
            parallelize_token_to_block_mapping=parallelize_token_to_block_mapping,
            optimized_block_to_token_mapping=optimized_block_to_token_mapping,
            use_block_parallel=use_block_parallel,
            always_augment_inputs_for_blockwise_matmul=always_augment_inputs_for_blockwise_matmul,
            block_sharding_strategy=block_sharding_strategy,
            skip_dma_token=skip_dma_token,
            skip_dma_weight=skip_dma_weight,
            use_shard_on_intermediate_dynamic_while=use_shard_on_intermediate_dynamic_while,
            use_shard_on_block_dynamic_while=use_shard_on_block_dynamic_while,
        )
        super().__init__(
            routed_experts_mlp_config=routed_experts_mlp_config,
            blockwise_matmul_config=blockwise_matmul_config,
            sequence_parallel_enabled=sequence_parallel_enabled,
            dtype=dtype,
            device=device,
            return_bias=return_bias,
            tensor_model_parallel_group=tensor_model_parallel_group,
            expert_model_parallel_group=expert_model_parallel_group,
            tkg_tensor_model_parallel_group=tkg_tensor_model_parallel_group,
            tkg_expert_model_parallel_group=tkg_expert_model_parallel_group,
            cte_tensor_model_parallel_group=cte_tensor_model_parallel_group,
            cte_expert_model_parallel_group=cte_expert_model_parallel_group,
            is_prefill=is_prefill,
            enabled_hybrid_sharding=enabled_hybrid_sharding,
        )
