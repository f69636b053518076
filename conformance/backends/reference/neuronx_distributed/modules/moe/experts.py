"""`Experts`: the expert MLPs applied to token slots laid out per expert (NxD's `moe/experts.py`).

Input `(E or 1, C, H)`: C token slots per expert (or one set of tokens shared by every expert). With a GLU
the fused `gate_up_proj` gives `[gate | up]` per rank, then `act(gate) * up` (or SWIGLU), then `down_proj`;
otherwise `up_proj`, the activation, `down_proj`. The output `(E, C, H)` is a TP-partial sum (the caller
reduces it together with everything else).

With expert parallelism the slots are exchanged by all-to-all over the EP group on the way in and back on
the way out, in training and in evaluation alike; a shared `(1, C, H)` input is first expanded to every
expert (deviation NXD-21: NxD exchanges only in training and fails on a shared input).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ...parallel_layers import _collectives as comm
from ...parallel_layers.mappings import enter_expert_parallel_region, exit_expert_parallel_region
from ...parallel_layers.parallel_state import get_expert_model_parallel_group, get_tensor_model_parallel_group
from .model_utils import GLUType
from .moe_parallel_layers import ExpertFusedColumnParallelLinear, ExpertFusedRowParallelLinear


class Experts(torch.nn.Module):
    """The experts' MLP weights (`gate_up_proj` or `up_proj`, and `down_proj`) and their forward pass."""

    def __init__(
        self,
        num_experts: int,
        hidden_size: int,
        intermediate_size: int,
        glu: bool,
        activation_fn: Callable[[Tensor], Tensor],
        dtype: torch.dtype,
        device: torch.device,
        bias: bool = False,
        glu_type: GLUType | None = GLUType.GLU,
        hidden_act_scaling_factor: float = 1.0,
        hidden_act_bias: float = 0.0,
        gate_clamp_upper_limit: float | None = None,
        gate_clamp_lower_limit: float | None = None,
        up_clamp_upper_limit: float | None = None,
        up_clamp_lower_limit: float | None = None,
        input_layer_init_method=None,
        output_layer_init_method=None,
        is_prefill=True,
        tensor_model_parallel_group=None,
        expert_model_parallel_group=None,
        expert_distribution: list[list[int]] | None = None,
    ) -> None:
        super().__init__()
        clamps = (gate_clamp_upper_limit, gate_clamp_lower_limit, up_clamp_upper_limit, up_clamp_lower_limit)
        if any(limit is not None for limit in clamps):
            raise NotImplementedError(
                "clamped gate/up projections are not provided by the reference backend (NXD-23)"
            )
        self._glu = glu
        self._glu_type = GLUType.validate(glu_type) if glu else glu_type
        self._activation_fn = activation_fn
        self.num_experts = num_experts
        self.hidden_act_scaling_factor = hidden_act_scaling_factor
        self.hidden_act_bias = hidden_act_bias
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
        common = {
            "num_experts": num_experts,
            "bias": bias,
            "dtype": dtype,
            "device": device,
            "tensor_model_parallel_group": self.tensor_parallel_group,
            "expert_model_parallel_group": self.expert_model_parallel_group,
            "is_prefill": is_prefill,
            "expert_distribution": expert_distribution,
        }
        if glu:
            # gate and up share one matmul; stride 2 keeps each rank's gate and up columns together.
            self.gate_up_proj = ExpertFusedColumnParallelLinear(
                input_size=hidden_size,
                output_size=2 * intermediate_size,
                stride=2,
                init_method=input_layer_init_method,
                is_fused_gate_up=True,
                **common,
            )
        else:
            self.up_proj = ExpertFusedColumnParallelLinear(
                input_size=hidden_size,
                output_size=intermediate_size,
                init_method=input_layer_init_method,
                **common,
            )
        self.down_proj = ExpertFusedRowParallelLinear(
            input_size=intermediate_size,
            output_size=hidden_size,
            reduce_output=False,
            init_method=output_layer_init_method,
            **common,
        )

    @property
    def _expert_parallel(self) -> bool:
        return comm.group_size(self.expert_model_parallel_group) > 1

    def forward(self, hidden_states: Tensor, expert_indices: Tensor | None = None) -> Tensor:
        """`(E or 1, C, H) -> (E', C, H)`, E' = E or the number of `expert_indices` (no EP with those)."""
        if expert_indices is not None and self._expert_parallel:
            raise ValueError("Selective expert loading is not supported with expert parallelism.")
        if hidden_states.dim() != 3:
            raise AssertionError(
                f"expected (experts, tokens, hidden), got shape {tuple(hidden_states.shape)}"
            )
        computed = self.num_experts if expert_indices is None else expert_indices.shape[0]
        if hidden_states.shape[0] not in {1, computed}:
            raise AssertionError(f"{hidden_states.shape[0]} expert slots for {computed} experts")
        if self._expert_parallel:
            # (E, C, H) -> (E / EP, EP, C, H): this rank's experts, the slots of every EP rank.
            dispatched = enter_expert_parallel_region(
                hidden_states.expand(self.num_experts, *hidden_states.shape[1:]), scatter_gather=False
            )
        else:
            dispatched = hidden_states.unsqueeze(1)
        projection = self.gate_up_proj if self._glu else self.up_proj
        intermediate = self._activation(projection(dispatched, expert_indices=expert_indices))
        projected = self.down_proj(intermediate, expert_indices=expert_indices)
        if self._expert_parallel:
            return exit_expert_parallel_region(projected, scatter_gather=False)
        return projected.squeeze(1)

    def _activation(self, x: Tensor) -> Tensor:
        if not self._glu:
            return self._activation_fn(x)
        gate, up = torch.chunk(x, chunks=2, dim=-1)
        if self._glu_type == GLUType.GLU:
            return self._activation_fn(self.hidden_act_scaling_factor * gate) * (up + self.hidden_act_bias)
        if self._glu_type == GLUType.SWIGLU:
            return (
                gate
                * self._activation_fn(self.hidden_act_scaling_factor * gate)
                * (up + self.hidden_act_bias)
            )
        raise NotImplementedError(f"Only supports glu_type='glu', 'swiglu', got {self._glu_type}")
