"""Autograd-aware collectives between the tensor-parallel regions of a model (NxD's `mappings`).

Every function is the identity when the group has one member. `group` defaults to the TP group. Split
and gather work on contiguous chunks in group-rank order. Entering and leaving the expert-parallel region
is an all-to-all over the expert-model-parallel group (NxD's is XLA-only; this one runs on gloo too).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

from . import _collectives as comm
from .parallel_state import get_expert_model_parallel_group, get_tensor_model_parallel_group

Collective = Callable[[torch.Tensor, int, Any], torch.Tensor]


class _RegionMapping(torch.autograd.Function):
    """`forward_op(x, dim, group)` in forward, `backward_op(grad, dim, group)` in backward.

    Each mapping below pairs a collective with its adjoint (copy / all-reduce, split / all-gather, ...).
    """

    @staticmethod
    def forward(ctx, x, dim, group, forward_op: Collective, backward_op: Collective):
        ctx.dim, ctx.group, ctx.backward_op = dim, group, backward_op
        return forward_op(x, dim, group)

    @staticmethod
    def backward(ctx, grad):
        return ctx.backward_op(grad, ctx.dim, ctx.group), None, None, None, None


def _identity(tensor: torch.Tensor, dim: int, group) -> torch.Tensor:
    return tensor


def _all_reduce(tensor: torch.Tensor, dim: int, group) -> torch.Tensor:
    return comm.all_reduce(tensor, group)


def _all_gather_as(dtype: torch.dtype | None, tensor: torch.Tensor, dim: int, group) -> torch.Tensor:
    """All-gather along `dim`, after a cast to `dtype` when it is given."""
    if dtype is not None:
        tensor = tensor.to(dtype)
    return comm.all_gather(tensor, dim, group)


def _map(input_, process_group, dim: int, forward_op: Collective, backward_op: Collective):
    """Apply the mapping over `process_group` (default: the TP group); the identity for a group of one."""
    group = process_group if process_group is not None else get_tensor_model_parallel_group()
    if comm.group_size(group) == 1:
        return input_
    return _RegionMapping.apply(input_, dim, group, forward_op, backward_op)


def copy_to_tensor_model_parallel_region(input_, process_group=None):
    """Identity forward; all-reduce of the gradient."""
    return _map(input_, process_group, -1, _identity, _all_reduce)


def reduce_from_tensor_model_parallel_region(input_, process_group=None):
    """All-reduce (sum) forward; identity backward."""
    return _map(input_, process_group, -1, _all_reduce, _identity)


def scatter_to_tensor_model_parallel_region(input_, process_group=None):
    """Keep this rank's chunk of the last dimension; gather in backward."""
    return _map(input_, process_group, input_.dim() - 1, comm.split, comm.all_gather)


def gather_from_tensor_model_parallel_region(input_, process_group=None):
    """Concatenate the last dimension across ranks; split in backward."""
    return _map(input_, process_group, input_.dim() - 1, comm.all_gather, comm.split)


def scatter_to_sequence_parallel_region(input_, sequence_dimension: int = 0, process_group=None):
    """Keep this rank's chunk of the sequence dimension; gather in backward."""
    return _map(input_, process_group, sequence_dimension, comm.split, comm.all_gather)


def gather_from_sequence_parallel_region(
    input_,
    sequence_dimension: int = 0,
    to_model_parallel: bool = True,
    process_group=None,
    tile_cc: bool = False,
):
    """Gather the sequence dimension; backward reduce-scatters (into a TP region) or splits."""
    backward_op = comm.reduce_scatter if to_model_parallel else comm.split
    return _map(input_, process_group, sequence_dimension, comm.all_gather, backward_op)


def reduce_scatter_to_sequence_parallel_region(
    input_, sequence_dimension: int = 0, process_group=None, dtype=None
):
    """Sum across ranks and keep this rank's chunk of the sequence dimension; gather in backward.

    The gradient is cast to `dtype` (when given) before the gather.
    """
    backward_op = functools.partial(_all_gather_as, dtype)
    return _map(input_, process_group, sequence_dimension, comm.reduce_scatter, backward_op)


def gather_from_tensor_model_parallel_region_with_dim(input_, gather_dim: int, process_group=None):
    """Gather along `gather_dim`; split in backward."""
    return _map(input_, process_group, gather_dim, comm.all_gather, comm.split)


def reduce_scatter_to_tensor_model_parallel_region_with_dim(input_, partition_dim: int, process_group=None):
    """Reduce-scatter along `partition_dim`; gather in backward."""
    return _map(input_, process_group, partition_dim, comm.reduce_scatter, comm.all_gather)


class _AllToAllInExpertParallelRegion(torch.autograd.Function):
    """All-to-all over the expert-model-parallel group; the backward swaps the split and concat dims."""

    @staticmethod
    def forward(ctx, input_: torch.Tensor, split_dim: int, concat_dim: int) -> torch.Tensor:
        ctx.split_dim, ctx.concat_dim = split_dim, concat_dim
        return _all_to_all_in_expert_parallel_region(input_, split_dim, concat_dim)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _all_to_all_in_expert_parallel_region(grad, ctx.concat_dim, ctx.split_dim), None, None


def _all_to_all_in_expert_parallel_region(x: torch.Tensor, split_dim: int, concat_dim: int) -> torch.Tensor:
    group = get_expert_model_parallel_group()
    if comm.group_size(group) == 1:
        return x
    return comm.all_to_all(x, split_dim, concat_dim, group)


def enter_expert_parallel_region(x: torch.Tensor, scatter_gather: bool) -> torch.Tensor:
    """`(e, c, h)` token slots for every expert -> `(e/ep, ep, c, h)`: this EP rank's experts, with the slots
    every EP rank sent it (index 1 is the sender's EP rank).

    `scatter_gather` drops the copies the TP ranks hold before the exchange and gathers them back after
    (less traffic, same result); it needs `c` divisible by TP.
    """
    e, c, h = x.shape
    x = x.view(e, 1, c, h)
    if scatter_gather:
        x = scatter_to_sequence_parallel_region(x, 2)
    x = _AllToAllInExpertParallelRegion.apply(x, 0, 1)
    if scatter_gather:
        x = gather_from_sequence_parallel_region(x, 2, to_model_parallel=False)
    return x


def exit_expert_parallel_region(x: torch.Tensor, scatter_gather: bool) -> torch.Tensor:
    """The inverse of `enter_expert_parallel_region`: `(e/ep, ep, c, h)` -> `(e, c, h)`, each slot back on the
    EP rank that sent it."""
    if scatter_gather:
        x = scatter_to_sequence_parallel_region(x, 2)
    x = _AllToAllInExpertParallelRegion.apply(x, 1, 0)
    if scatter_gather:
        x = gather_from_sequence_parallel_region(x, 2, to_model_parallel=False)
    return x.squeeze(1)
