"""`MoE`: router + routed experts (+ shared experts) as one layer (NxD's `moe/model.py`).

Input layouts as in NxD's training flow: `(S / TP, B, H)` with sequence parallelism (`sequence_dimension=0`),
`(B, S, H)` without. Forward:

1. with SP, all-gather the sequence over TP (backward: split);
2. the router on the shard (router in SP) or on the full sequence;
3. the affinities enter the TP region (`copy_to`: their gradient is summed over TP, since every rank's
   output is a TP-partial sum);
4. the routed experts on the flattened tokens, plus the shared experts;
5. the TP-partial output is reduce-scattered back to the sequence shard (SP) or all-reduced.

Returns `(output,)` plus, when asked, `router_logits` `(T, E)` (T = all tokens of the full sequence in the
input's flattening order) and `expert_index` `(T, top_k)`.

Expert parallelism (EP > 1) is data-parallel, as NxD's groups, gradient reduction and optimum-neuron's data
sharding assume: each EP rank routes its own tokens and the experts exchange them by all-to-all; every
reduction here stays on the TP group (deviation NXD-20: NxD's MoE reduces over the world group with EP).
"""

from __future__ import annotations

import torch

from ...parallel_layers import mappings
from ...parallel_layers.parallel_state import get_expert_model_parallel_size, get_tensor_model_parallel_group
from .expert_mlps_v2 import ExpertMLPsV2
from .routing import RouterBase
from .shared_experts import SharedExperts


class MoE(torch.nn.Module):
    """A mixture-of-experts layer; see the module docstring."""

    def __init__(
        self,
        router: RouterBase,
        expert_mlps: ExpertMLPsV2,
        shared_experts: SharedExperts | None = None,
        rmsnorm: torch.nn.Module | None = None,
        sequence_parallel_enabled: bool = False,
        sequence_dimension: int | None = None,
        return_router_logits: bool = False,
        return_expert_index: bool = False,
        token_shuffle_group_size: int = 1,
        token_shuffle_seed=None,
        tensor_model_parallel_group=None,
        init_tkg_module: bool = False,
        tkg_config=None,
    ):
        super().__init__()
        for attr in ("num_experts", "top_k", "hidden_size"):
            routed = getattr(expert_mlps.routed_experts_mlp_config, attr)
            if getattr(router, attr) != routed:
                raise ValueError(
                    f"Inconsistent {attr} across the router ({getattr(router, attr)}) and expert_mlps ({routed})"
                )
        if router.sequence_parallel_enabled:
            if not sequence_parallel_enabled:
                raise ValueError("MoE layer must have SP enabled to run router in SP")
            if router.sequence_dimension != sequence_dimension:
                raise ValueError(
                    f"Inconsistent sequence_dimension across MoE and router modules, "
                    f"{router.sequence_dimension} != {sequence_dimension}"
                )
        if token_shuffle_group_size > 1:
            raise NotImplementedError("token shuffling is not provided by the reference backend (NXD-23)")
        if init_tkg_module:
            raise NotImplementedError("the fused token-generation module is an inference kernel (NXD-23)")
        self.router = router
        self.expert_mlps = expert_mlps
        self.shared_experts = shared_experts
        self.rmsnorm = rmsnorm
        self.sequence_parallel_enabled = sequence_parallel_enabled
        self.sequence_dimension = 0 if sequence_dimension is None else sequence_dimension
        self.return_router_logits = return_router_logits
        self.return_expert_index = return_expert_index
        self.ep_enabled = get_expert_model_parallel_size() > 1
        self.token_shuffle_group_size = token_shuffle_group_size
        self.token_shuffle_seed = token_shuffle_seed
        self.shuffle_permutation = None
        self.tensor_parallel_group = (
            tensor_model_parallel_group
            if tensor_model_parallel_group is not None
            else get_tensor_model_parallel_group()
        )
        self.moe_fused_tkg = None

    def forward(self, hidden_states, padding_mask=None, is_speculative_decoding=False, residual=None):
        """See the module docstring. With `residual`, it is added to the input first and the sum is returned
        last (NxD's fused residual add)."""
        if residual is not None:
            hidden_states = hidden_states + residual
            residual = hidden_states.clone()
            return (*self._forward_compute_bound(hidden_states, padding_mask), residual)
        return self._forward_compute_bound(hidden_states, padding_mask)

    def _forward_compute_bound(self, hidden_states, padding_mask=None):
        if self.rmsnorm is not None:
            hidden_states = self.rmsnorm(hidden_states)
        if self.sequence_parallel_enabled:
            full_hidden_states = mappings.gather_from_sequence_parallel_region(
                hidden_states,
                sequence_dimension=self.sequence_dimension,
                to_model_parallel=False,
                process_group=self.tensor_parallel_group,
            )
        else:
            full_hidden_states = hidden_states
        full_shape = full_hidden_states.shape
        seq_len = full_shape[self.sequence_dimension]

        router_input = hidden_states if self.router.sequence_parallel_enabled else full_hidden_states
        router_logits, expert_affinities, expert_index = self.router(router_input)
        expert_affinities = mappings.copy_to_tensor_model_parallel_region(
            expert_affinities, process_group=self.tensor_parallel_group
        )
        tokens = full_hidden_states.reshape(-1, full_shape[-1])
        output = self.expert_mlps(
            hidden_states=tokens,
            expert_affinities=expert_affinities,
            expert_index=expert_index,
            seq_len=seq_len,
            padding_mask=padding_mask,
        )
        if self.shared_experts is not None:
            output = output + self.shared_experts(tokens, seq_len)
        output = output.view(full_shape)

        if self.sequence_parallel_enabled:
            output = mappings.reduce_scatter_to_sequence_parallel_region(
                output, self.sequence_dimension, process_group=self.tensor_parallel_group
            )
        else:
            output = mappings.reduce_from_tensor_model_parallel_region(
                output, process_group=self.tensor_parallel_group
            )

        result = (output,)
        if self.expert_mlps.return_bias:
            result += (None,)
        if self.return_router_logits:
            result += (router_logits,)
        if self.return_expert_index:
            result += (expert_index,)
        return result
