"""`ExpertMLPsV2`: from routing decisions to the combined expert output (NxD's `moe/expert_mlps_v2.py`).

Given the tokens `(T, H)`, their affinities `(T, E)` and chosen experts `(T, top_k)`, the output for token t
is `sum over its kept experts e of a[t, e] * MLP_e(x_t)`, a TP-partial sum (MoE reduces it). `a` is the
router's affinity masked to the chosen experts, L1-normalised over them with `normalize_top_k_affinities`.

Training, as NxD chooses:
- `capacity_factor=None` (or >= E / top_k, which NxD turns into None): every token through every expert,
  weighted by the masked affinities (`forward_all_experts`); nothing is dropped;
- `capacity_factor > 0`: each expert takes at most `C = min(ceil(T * top_k * cf / E), T)` tokens, first come
  first served in the flattened token order; the choices beyond C are dropped, and the normalisation runs
  over the choices that remain (`forward_capacity_factor`);
- `capacity_factor <= 0` selects NxD's blockwise NKI kernel; without it NxD (and the reference) runs
  `forward_all_experts` (NXD-22).
Out of training the dropless paths are all `forward_all_experts` here (NxD picks selective loading or
blockwise kernels by size: same sums, another order, NXD-22); a capacity factor keeps its capacity path.
With sequence parallelism out of training the masked affinities are all-gathered over TP first, as in NxD.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ...parallel_layers import mappings
from ...parallel_layers.parallel_state import (
    get_expert_model_parallel_group,
    get_tensor_model_parallel_group,
    get_world_group,
)
from ...parallel_layers.spmd_rank import SPMDRank
from .experts import Experts
from .model_utils import ACT2FN
from .moe_configs import BlockwiseMatmulConfig, RoutedExpertsMLPOpsConfig


class ExpertMLPsV2(torch.nn.Module):
    """The routed experts (`mlp_op`, an `Experts`) and how tokens reach them; see the module docstring."""

    def __init__(
        self,
        routed_experts_mlp_config: RoutedExpertsMLPOpsConfig,
        blockwise_matmul_config: BlockwiseMatmulConfig = BlockwiseMatmulConfig.default(),  # noqa: B008 (NxD's default)
        return_bias: bool = False,
        dtype: torch.dtype = torch.float32,
        sequence_parallel_enabled: bool = False,
        device: torch.device = torch.device("cpu"),  # noqa: B008 (NxD's default, compared by the API-surface test)
        tensor_model_parallel_group=None,
        expert_model_parallel_group=None,
        tkg_tensor_model_parallel_group=None,
        tkg_expert_model_parallel_group=None,
        cte_tensor_model_parallel_group=None,
        cte_expert_model_parallel_group=None,
        is_prefill=True,
        enabled_hybrid_sharding=False,
    ):
        super().__init__()
        if return_bias:
            raise NotImplementedError("Returning bias is currently unsupported for MoE")
        if enabled_hybrid_sharding:
            raise NotImplementedError(
                "hybrid sharding (separate prefill/decode experts) is an inference feature"
            )
        config = routed_experts_mlp_config
        if config.early_expert_affinity_modulation:
            raise NotImplementedError(
                "early_expert_affinity_modulation is not provided by the reference backend (NXD-23)"
            )
        self.validate_routed_experts_configs(config)
        self.routed_experts_mlp_config = config
        self.blockwise_matmul_config = blockwise_matmul_config
        self.sequence_parallel_enabled = sequence_parallel_enabled
        self.enabled_hybrid_sharding = enabled_hybrid_sharding
        self.return_bias = return_bias
        self.dtype = dtype
        self.device = device
        self.is_prefill = is_prefill
        self.tensor_parallel_group = (
            tensor_model_parallel_group
            if tensor_model_parallel_group is not None
            else get_tensor_model_parallel_group()
        )
        self.expert_model_parallel_group = (
            expert_model_parallel_group
            if expert_model_parallel_group is not None
            else get_expert_model_parallel_group()
        )
        # Without hybrid sharding NxD builds the experts on the "context encoding" groups when given.
        self.moe_tensor_model_parallel_group = cte_tensor_model_parallel_group or self.tensor_parallel_group
        self.moe_expert_model_parallel_group = (
            cte_expert_model_parallel_group or self.expert_model_parallel_group
        )
        if config.enable_spmd_rank:
            self.spmd_rank = SPMDRank(
                world_size=get_world_group().size(),
                tensor_model_parallel_size=self.moe_tensor_model_parallel_group.size(),
            )
        self.mlp_op = self.initialize_mlp_op(
            self.moe_tensor_model_parallel_group, self.moe_expert_model_parallel_group, True
        )

    def initialize_mlp_op(
        self, tensor_model_parallel_group, expert_model_parallel_group, is_prefill: bool
    ) -> Experts:
        """The `Experts` of this configuration on the given groups."""
        config = self.routed_experts_mlp_config
        return Experts(
            num_experts=config.num_experts,
            hidden_size=config.hidden_size,
            intermediate_size=config.intermediate_size,
            glu=config.glu_mlp,
            activation_fn=ACT2FN[config.hidden_act],
            dtype=self.dtype,
            device=self.device,
            bias=config.bias,
            glu_type=config.glu_type,
            hidden_act_scaling_factor=config.hidden_act_scaling_factor,
            hidden_act_bias=config.hidden_act_bias,
            gate_clamp_upper_limit=config.gate_clamp_upper_limit,
            gate_clamp_lower_limit=config.gate_clamp_lower_limit,
            up_clamp_upper_limit=config.up_clamp_upper_limit,
            up_clamp_lower_limit=config.up_clamp_lower_limit,
            input_layer_init_method=config.input_layer_init_method,
            output_layer_init_method=config.output_layer_init_method,
            tensor_model_parallel_group=tensor_model_parallel_group,
            expert_model_parallel_group=expert_model_parallel_group,
            is_prefill=is_prefill,
            expert_distribution=config.expert_distribution if is_prefill else None,
        )

    def get_mlp_op(self) -> Experts:
        return self.mlp_op

    def get_spmd_rank(self) -> SPMDRank:
        """The `SPMDRank` built with `enable_spmd_rank` (an inference helper; unused by the forward pass)."""
        return self.spmd_rank

    @staticmethod
    def validate_routed_experts_configs(routed_experts_mlp_config: RoutedExpertsMLPOpsConfig) -> None:
        """Check top_k and the activation; a capacity factor of E / top_k or more becomes None (no drop)."""
        config = routed_experts_mlp_config
        if not 0 < config.top_k <= config.num_experts:
            raise ValueError(f"Invalid top_k={config.top_k} for num_experts={config.num_experts}")
        if config.hidden_act not in ACT2FN:
            raise ValueError(f"Unknown activation: {config.hidden_act} ; Supported: {list(ACT2FN)}")
        if config.capacity_factor is None or config.capacity_factor >= config.num_experts / config.top_k:
            config.capacity_factor = None
        if config.normalize_top_k_affinities and config.top_k == 1:
            raise ValueError("top_k must be greater than 1 for normalizing top-k expert affinities")

    @staticmethod
    def get_expert_mask(expert_index: torch.Tensor, num_experts: int) -> torch.Tensor:
        """`(T, E)` float64 mask with a 1 for each expert a token chose."""
        mask = torch.zeros(
            expert_index.shape[0], num_experts, device=expert_index.device, dtype=torch.float64
        )
        return mask.scatter(1, expert_index, 1.0)

    @staticmethod
    def get_expert_affinities_masked(
        expert_affinities: torch.Tensor, expert_mask: torch.Tensor, normalize_top_k_affinities: bool
    ) -> torch.Tensor:
        """The affinities of the masked-in experts (zeros elsewhere), L1-normalised per token if asked."""
        masked = expert_affinities.masked_fill(torch.eq(expert_mask, 0), 0)
        return F.normalize(masked, p=1.0, dim=1) if normalize_top_k_affinities else masked

    def _gather_for_sp_inference(self, *tensors: torch.Tensor) -> list[torch.Tensor]:
        """In SP evaluation the router saw only this rank's tokens: gather its outputs along the tokens."""
        return [
            mappings.gather_from_sequence_parallel_region(
                tensor,
                sequence_dimension=0,
                to_model_parallel=False,
                process_group=self.tensor_parallel_group,
            )
            for tensor in tensors
        ]

    def forward_all_experts(self, hidden_states, expert_affinities, expert_index, chosen_expert_indices=None):
        """Every token through every expert, combined with the masked affinities (no token is dropped)."""
        if chosen_expert_indices is not None:
            raise NotImplementedError(
                "chosen_expert_indices (selective expert compute) is an inference feature"
            )
        num_experts = self.routed_experts_mlp_config.num_experts
        if expert_affinities.shape[1] != num_experts:
            raise AssertionError(
                f"{expert_affinities.shape[1]} affinities per token for {num_experts} experts"
            )
        expert_mask = self.get_expert_mask(expert_index, num_experts)
        masked = self.get_expert_affinities_masked(
            expert_affinities, expert_mask, self.routed_experts_mlp_config.normalize_top_k_affinities
        )
        if self.sequence_parallel_enabled and not self.training:
            (masked,) = self._gather_for_sp_inference(masked)
        # (1, T, H) -> (E, T, H)
        mlp_output = self.get_mlp_op()(hidden_states.unsqueeze(0))
        output = torch.zeros_like(hidden_states)
        for expert in range(num_experts):
            output = output + mlp_output[expert] * masked[:, expert].unsqueeze(1)
        return output

    def forward_capacity_factor(self, hidden_states, expert_affinities, expert_index):
        """Each expert takes at most C tokens, in token order; see the module docstring."""
        config = self.routed_experts_mlp_config
        num_experts = config.num_experts
        total_tokens = hidden_states.shape[0]
        capacity = min(
            math.ceil(total_tokens * config.top_k * config.capacity_factor / num_experts), total_tokens
        )
        if self.sequence_parallel_enabled and not self.training:
            expert_affinities, expert_index = self._gather_for_sp_inference(expert_affinities, expert_index)

        expert_mask = self.get_expert_mask(expert_index, num_experts)
        # 1-based arrival order of each token at each expert; beyond the capacity it is dropped.
        position = torch.cumsum(expert_mask, dim=0)
        expert_mask = expert_mask.masked_fill(position > capacity, 0)
        masked = self.get_expert_affinities_masked(
            expert_affinities, expert_mask, config.normalize_top_k_affinities
        )

        tokens, experts = torch.nonzero(expert_mask, as_tuple=True)
        slots = position[tokens, experts].to(torch.long) - 1
        # (E, C) token of each slot; empty slots read token 0, whose output is never used.
        slot_token = torch.zeros(num_experts, capacity, dtype=torch.long, device=hidden_states.device)
        slot_token[experts, slots] = tokens
        expert_output = self.get_mlp_op()(hidden_states[slot_token])
        weighted = expert_output[experts, slots] * masked[tokens, experts].unsqueeze(1)
        return torch.zeros_like(hidden_states).index_add(0, tokens, weighted)

    def forward(
        self,
        hidden_states,
        expert_affinities,
        expert_index,
        seq_len,
        padding_mask=None,
        expert_affinities_masked_full=None,
    ):
        """`(T, H)` output of the routed experts (TP-partial); the path follows the module docstring.

        `padding_mask` and `expert_affinities_masked_full` serve NxD's blockwise kernel only; like NxD's
        other paths this one ignores them.
        """
        capacity_factor = self.routed_experts_mlp_config.capacity_factor
        if not self.training and seq_len == 1:
            return self.forward_all_experts(hidden_states, expert_affinities, expert_index)
        if capacity_factor is None or capacity_factor <= 0:
            return self.forward_all_experts(hidden_states, expert_affinities, expert_index)
        return self.forward_capacity_factor(hidden_states, expert_affinities, expert_index)
