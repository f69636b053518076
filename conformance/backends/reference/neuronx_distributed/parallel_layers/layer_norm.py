"""`LayerNorm` that tags its parameters for sequence parallelism (`parallel_layers.layer_norm`).

Under sequence parallelism a norm sees only its sequence shard, so the gradients of its replicated weight
and bias are partial and must be all-reduced over TP; the `sequence_parallel_enabled` attribute on each
parameter is what tells the gradient code to do so. The computation is `nn.LayerNorm`'s. (NxD computes in
float64 when `XLA_DOWNCAST_BF16=1`, an XLA-only setting that does not apply here.)
"""

from __future__ import annotations

import torch


class LayerNorm(torch.nn.LayerNorm):
    """`nn.LayerNorm` whose `weight` and `bias` carry `sequence_parallel_enabled`."""

    def __init__(
        self,
        normalized_shape: int | list[int] | torch.Size,
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = True,
        device=None,
        dtype=None,
        sequence_parallel_enabled: bool = False,
    ):
        super().__init__(
            normalized_shape=normalized_shape,
            eps=eps,
            elementwise_affine=elementwise_affine,
            bias=bias,
            device=device,
            dtype=dtype,
        )
        self.sequence_parallel_enabled = sequence_parallel_enabled
        for param in (self.weight, self.bias):
            if param is not None:
                param.sequence_parallel_enabled = sequence_parallel_enabled
