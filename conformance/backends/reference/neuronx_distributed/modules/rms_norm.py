"""`RMSNorm` with a sequence-parallel tag on its weight (`neuronx_distributed.modules.rms_norm`).

The weight starts at ones and carries `sequence_parallel_enabled` (its gradient is all-reduced over TP
when activations are sequence-sharded). The normalisation runs in float32 and the result is cast back to
the input's dtype: `(weight * x * rsqrt(mean(x^2) + eps)).to(x.dtype)`.
"""

from __future__ import annotations

import numbers
import warnings

import torch


def manual_rms_norm(
    input: torch.Tensor, normalized_shape: torch.Size, weight: torch.Tensor | None, eps: float
) -> torch.Tensor:
    """RMS-normalise over the trailing `normalized_shape` dimensions in float32, then scale by `weight`."""
    original_dtype = input.dtype
    hidden = input.to(torch.float32)
    dims = tuple(range(-len(normalized_shape), 0))
    hidden = hidden * torch.rsqrt(hidden.pow(2).mean(dims, keepdim=True) + eps)
    if weight is None:
        return hidden.to(original_dtype)
    return (weight * hidden).to(original_dtype)


class RMSNorm(torch.nn.Module):
    """RMS norm with a learnable scale; `elementwise_affine=False` is refused, as in NxD."""

    def __init__(
        self, normalized_shape, eps: float = 1e-5, sequence_parallel_enabled: bool = False, **kwargs
    ):
        super().__init__()
        if "elementwise_affine" in kwargs:
            warnings.warn("RMSNorm does not support `elementwise_affine` argument", stacklevel=2)
            if not kwargs.pop("elementwise_affine"):
                raise RuntimeError("RMSNorm does not support `elementwise_affine = False`")
        if isinstance(normalized_shape, numbers.Integral):
            normalized_shape = (normalized_shape,)
        self.normalized_shape = torch.Size(normalized_shape)
        self.eps = eps
        self.elementwise_affine = True
        self.weight = torch.nn.Parameter(torch.empty(self.normalized_shape))
        self.weight.sequence_parallel_enabled = sequence_parallel_enabled
        self.reset_parameters()

    def reset_parameters(self) -> None:
        torch.nn.init.ones_(self.weight)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return manual_rms_norm(input, self.normalized_shape, self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"{tuple(self.normalized_shape)}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"
