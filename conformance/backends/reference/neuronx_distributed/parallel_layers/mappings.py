"""Autograd-aware collectives between the tensor-parallel regions of a model (NxD's `mappings`).

Every function is the identity when the group has one member. `group` defaults to the TP group. Split
and gather work on contiguous chunks in group-rank order.
"""

from __future__ import annotations

import torch

from . import comm
from .parallel_state import get_tensor_model_parallel_group


def _tp(group):
    return group if group is not None else get_tensor_model_parallel_group()


class _CopyToRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x

    @staticmethod
    def backward(ctx, grad):
        return comm.all_reduce(grad, ctx.group), None


class _ReduceFromRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        return comm.all_reduce(x, group)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class _ScatterToRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dim, group):
        ctx.dim, ctx.group = dim, group
        return comm.split(x, dim, group)

    @staticmethod
    def backward(ctx, grad):
        return comm.all_gather(grad, ctx.dim, ctx.group), None, None


class _GatherFromRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dim, group, backward_reduce_scatter):
        ctx.dim, ctx.group, ctx.reduce_scatter = dim, group, backward_reduce_scatter
        return comm.all_gather(x, dim, group)

    @staticmethod
    def backward(ctx, grad):
        if ctx.reduce_scatter:
            return comm.reduce_scatter(grad, ctx.dim, ctx.group), None, None, None
        return comm.split(grad, ctx.dim, ctx.group), None, None, None


class _ReduceScatterToRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dim, group, grad_dtype):
        ctx.dim, ctx.group, ctx.grad_dtype = dim, group, grad_dtype
        return comm.reduce_scatter(x, dim, group)

    @staticmethod
    def backward(ctx, grad):
        if ctx.grad_dtype is not None:
            grad = grad.to(ctx.grad_dtype)
        return comm.all_gather(grad, ctx.dim, ctx.group), None, None, None


def _single(group) -> bool:
    return comm.group_size(group) == 1


def copy_to_tensor_model_parallel_region(input_, process_group=None):
    """Identity forward; all-reduce of the gradient."""
    group = _tp(process_group)
    return input_ if _single(group) else _CopyToRegion.apply(input_, group)


def reduce_from_tensor_model_parallel_region(input_, process_group=None):
    """All-reduce (sum) forward; identity backward."""
    group = _tp(process_group)
    return input_ if _single(group) else _ReduceFromRegion.apply(input_, group)


def scatter_to_tensor_model_parallel_region(input_, process_group=None):
    """Keep this rank's chunk of the last dimension; gather in backward."""
    group = _tp(process_group)
    return input_ if _single(group) else _ScatterToRegion.apply(input_, input_.dim() - 1, group)


def gather_from_tensor_model_parallel_region(input_, process_group=None):
    """Concatenate the last dimension across ranks; split in backward."""
    group = _tp(process_group)
    return input_ if _single(group) else _GatherFromRegion.apply(input_, input_.dim() - 1, group, False)


def scatter_to_sequence_parallel_region(input_, sequence_dimension: int = 0, process_group=None):
    """Keep this rank's chunk of the sequence dimension; gather in backward."""
    group = _tp(process_group)
    return input_ if _single(group) else _ScatterToRegion.apply(input_, sequence_dimension, group)


def gather_from_sequence_parallel_region(
    input_,
    sequence_dimension: int = 0,
    to_model_parallel: bool = True,
    process_group=None,
    tile_cc: bool = False,
):
    """Gather the sequence dimension; backward reduce-scatters (into a TP region) or splits."""
    group = _tp(process_group)
    if _single(group):
        return input_
    return _GatherFromRegion.apply(input_, sequence_dimension, group, to_model_parallel)


def reduce_scatter_to_sequence_parallel_region(
    input_, sequence_dimension: int = 0, process_group=None, dtype=None
):
    """Sum across ranks and keep this rank's chunk of the sequence dimension; gather in backward."""
    group = _tp(process_group)
    return (
        input_ if _single(group) else _ReduceScatterToRegion.apply(input_, sequence_dimension, group, dtype)
    )


def gather_from_tensor_model_parallel_region_with_dim(input_, gather_dim: int, process_group=None):
    """Gather along `gather_dim`; split in backward."""
    group = _tp(process_group)
    return input_ if _single(group) else _GatherFromRegion.apply(input_, gather_dim, group, False)


def reduce_scatter_to_tensor_model_parallel_region_with_dim(input_, partition_dim: int, process_group=None):
    """Reduce-scatter along `partition_dim`; gather in backward."""
    group = _tp(process_group)
    return input_ if _single(group) else _ReduceScatterToRegion.apply(input_, partition_dim, group, None)
