"""`SharedExperts`: the always-on expert MLP some MoEs add to the routed ones (NxD's
`moe/shared_experts.py`).

`num_shared_experts` experts of width `intermediate_size` act as one MLP of width `n * I`, tensor-parallel
like a dense MLP: `gate_proj` / `up_proj` (or, fused, `gate_up_proj` with stride 2) are column-parallel
`[n I / TP, H]` (`[2 n I / TP, H]`), `down_proj` is row-parallel `[H, n I / TP]` with `reduce_output=False`:
the output is a TP-partial sum that `MoE` adds to the routed experts' before their common reduction. Its
parameters are not expert-parallel. It has no gate of its own (Qwen2-MoE's `shared_expert_gate` is not part
of NxD). The sequence-parallel (replicated weights) and transposed-weight variants are inference layouts and
are not provided (NXD-23).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ...parallel_layers.linears import ColumnParallelLinear, RowParallelLinear
from ...parallel_layers.parallel_state import get_tensor_model_parallel_group
from .model_utils import ACT2FN


class SharedExperts(torch.nn.Module):
    """The shared experts' gated MLP; see the module docstring."""

    def __init__(
        self,
        hidden_size: int,
        intermediate_size: int,
        num_shared_experts: int,
        hidden_act: str,
        dtype: torch.dtype = torch.float32,
        tensor_model_parallel_group=None,
        reduce_dtype: torch.dtype = torch.float32,
        fused_gate_up_projection: bool = False,
        sequence_parallel_enabled: bool = False,
        transpose_weights: bool = False,
    ):
        super().__init__()
        if sequence_parallel_enabled:
            raise NotImplementedError(
                "SharedExperts(sequence_parallel_enabled=True) replicates the weights for inference; the "
                "reference backend does not provide it (NXD-23)"
            )
        if transpose_weights:
            raise NotImplementedError("transposed shared-expert weights are an inference layout (NXD-23)")
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_shared_experts = num_shared_experts
        self.act_fn = ACT2FN[hidden_act]
        self.dtype = dtype
        self.reduce_dtype = reduce_dtype
        self.fused_gate_up_projection = fused_gate_up_projection
        self.transpose_weights = transpose_weights
        self.sequence_parallel_enabled = sequence_parallel_enabled
        self.tensor_parallel_group = tensor_model_parallel_group or get_tensor_model_parallel_group()
        self._initialize_parallel_layers()

    def _initialize_parallel_layers(self) -> None:
        width = self.intermediate_size * self.num_shared_experts
        common = {
            "dtype": self.dtype,
            "pad": not self.training,
            "reduce_dtype": self.reduce_dtype,
            "tensor_model_parallel_group": self.tensor_parallel_group,
        }
        if self.fused_gate_up_projection:
            self.gate_up_proj = self._column(2 * width, stride=2, **common)
        else:
            self.gate_proj = self._column(width, **common)
            self.up_proj = self._column(width, **common)
        self.down_proj = RowParallelLinear(
            width, self.hidden_size, bias=False, input_is_parallel=True, reduce_output=False, **common
        )

    def _column(self, output_size: int, stride: int = 1, **kwargs) -> ColumnParallelLinear:
        return ColumnParallelLinear(
            self.hidden_size, output_size, stride=stride, bias=False, gather_output=False, **kwargs
        )

    def forward(self, x: Tensor, seq_len: int) -> Tensor:
        """The TP-partial output for the (full-sequence) tokens `x`; `seq_len` is kept for NxD's signature."""
        if self.fused_gate_up_projection:
            gate, up = torch.chunk(self.gate_up_proj(x), chunks=2, dim=-1)
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        return self.down_proj(self.act_fn(gate) * up)
