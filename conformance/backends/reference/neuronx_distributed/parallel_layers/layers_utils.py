"""The matmul of the parallel linears, with the collectives its backward needs (NxD's `layers_utils`).

`LinearWithAsyncCommunication` is what `ColumnParallelLinear` and `RowParallelLinear` run:

- forward: with sequence parallelism the input shard `(S/T, B, H)` is all-gathered along the sequence
  dimension first; the output is `total_input @ weight.T` (+ bias, which the layers never pass);
- backward: the input gradient is `grad_output @ weight`; column layers without sequence parallelism
  all-reduce it over TP, with sequence parallelism it is reduce-scattered back to the shard layout. The
  reduction runs in `reduce_dtype` and the result is cast back. The weight gradient is
  `grad_output.T @ total_input` over all leading dimensions.

NxD loses the all-reduced input gradient when its dtype differs from `reduce_dtype` (bf16 parameters with
the default fp32 reduce dtype); here the reduced gradient is always returned (deviation NXD-07).
"""

from __future__ import annotations

from typing import Any

import torch

from ...deviation_record import note
from . import _collectives as comm
from .parallel_state import get_tensor_model_parallel_group


def _gather_sequence(tensor: torch.Tensor, dim: int, group) -> torch.Tensor:
    return tensor if comm.group_size(group) == 1 else comm.all_gather(tensor, dim, group)


def _reduce_in(tensor: torch.Tensor, reduce_dtype: torch.dtype, reduce) -> torch.Tensor:
    """`reduce` applied in `reduce_dtype`, the result cast back to the tensor's own dtype."""
    return reduce(tensor.to(reduce_dtype)).to(tensor.dtype)


class LinearWithAsyncCommunication(torch.autograd.Function):
    """`input @ weight.T (+ bias)` with TP input-gradient reduction; see the module docstring."""

    @staticmethod
    def forward(
        ctx,
        input: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        async_grad_allreduce: bool,
        sequence_parallel_enabled: bool,
        sequence_dimension: int | None = 0,
        save_for_backward: bool = True,
        process_group=None,
        reduce_dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        if sequence_parallel_enabled and sequence_dimension is None:
            raise AssertionError("sequence_parallel_enabled is set but sequence_dimension is None")
        group = process_group if process_group is not None else get_tensor_model_parallel_group()
        ctx.use_bias = bias is not None and weight.requires_grad
        ctx.async_grad_allreduce = async_grad_allreduce
        ctx.sequence_parallel_enabled = sequence_parallel_enabled
        ctx.sequence_dimension = sequence_dimension
        ctx.compute_weight_gradient = weight.requires_grad
        ctx.process_group = group
        ctx.reduce_dtype = reduce_dtype
        ctx.saved = save_for_backward
        if save_for_backward:
            if ctx.compute_weight_gradient:
                ctx.save_for_backward(input, weight)
            else:
                ctx.save_for_backward(weight)
        total_input = (
            _gather_sequence(input, sequence_dimension, group) if sequence_parallel_enabled else input
        )
        output = torch.matmul(total_input, weight.t())
        if bias is not None:
            output = output + bias
        return output

    @staticmethod
    def backward(ctx, *grad_outputs: torch.Tensor) -> tuple[Any, ...]:
        (grad_output,) = grad_outputs
        if not ctx.saved:
            raise RuntimeError(
                "LinearWithAsyncCommunication was run with save_for_backward=False; no backward"
            )
        group = ctx.process_group
        if ctx.compute_weight_gradient:
            input, weight = ctx.saved_tensors
        else:
            (weight,) = ctx.saved_tensors
            input = None

        grad_input = grad_output.matmul(weight)
        if ctx.async_grad_allreduce:
            if grad_input.dtype != ctx.reduce_dtype:
                note("NXD-07")  # NxD throws this reduced input gradient away
            grad_input = _reduce_in(grad_input, ctx.reduce_dtype, lambda t: comm.all_reduce(t, group))
        if ctx.sequence_parallel_enabled and comm.group_size(group) > 1:
            dim = ctx.sequence_dimension
            grad_input = _reduce_in(
                grad_input, ctx.reduce_dtype, lambda t: comm.reduce_scatter(t, dim, group)
            )

        grad_weight = grad_bias = None
        if ctx.compute_weight_gradient:
            if ctx.sequence_parallel_enabled:
                total_input = _gather_sequence(input, ctx.sequence_dimension, group)
            else:
                total_input = input
            flat_grad = grad_output.reshape(-1, grad_output.shape[-1])
            flat_input = total_input.reshape(-1, total_input.shape[-1])
            grad_weight = flat_grad.t().matmul(flat_input)
            if ctx.use_bias:
                grad_bias = flat_grad.sum(dim=0)
        return grad_input, grad_weight, grad_bias, None, None, None, None, None, None


def _autocast_device(tensor: torch.Tensor) -> str | None:
    device_type = tensor.device.type
    try:
        return device_type if torch.is_autocast_enabled(device_type) else None
    except (RuntimeError, TypeError):
        return None


def linear_with_async_allreduce(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    async_grad_allreduce: bool,
    sequence_parallel_enabled: bool,
    sequence_dimension: int | None = 0,
    autograd_func_class: type[torch.autograd.Function] = LinearWithAsyncCommunication,
    save_for_backward: bool = True,
    process_group=None,
    reduce_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Run `autograd_func_class`; under autocast its floating tensors are cast to the autocast dtype first.

    The function itself runs with autocast off, as NxD does, so the matmuls happen in the cast dtype.
    """
    device_type = _autocast_device(input)
    if device_type is not None:
        dtype = torch.get_autocast_dtype(device_type)
        input, weight = input.to(dtype), weight.to(dtype)
        bias = bias.to(dtype) if bias is not None else None
    args = (input, weight, bias, async_grad_allreduce, sequence_parallel_enabled, sequence_dimension)
    args += (save_for_backward, process_group, reduce_dtype)
    if device_type is None:
        return autograd_func_class.apply(*args)
    with torch.autocast(device_type=device_type, enabled=False):
        return autograd_func_class.apply(*args)
