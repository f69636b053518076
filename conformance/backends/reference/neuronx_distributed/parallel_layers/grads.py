"""Gradient norms, clipping and gradient reductions over the model-parallel mesh (NxD's `grads`).

Sharded parameters (`tensor_model_parallel=True`) contribute their shard on every TP rank and the shares
are summed over TP (then PP); replicated parameters are counted once. Expert-parallel parameters
(`expert_model_parallel=True`) are summed over the expert-model-parallel group first. Gradients are assumed
to be data-parallel reduced already, as in NxD.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence

import torch
import torch.distributed as dist

from . import parallel_state as ps
from .utils import param_is_not_tensor_parallel_duplicate

_ALLREDUCE_BUCKET_CAP_MB = 512

# zero1 optimizer groups (lists of global ranks) -> this rank's process group; created collectively once.
_ZERO1_GROUPS: dict[tuple[tuple[int, ...], ...], object] = {}


def param_is_not_shared(param: torch.Tensor) -> bool:
    return not getattr(param, "shared", False)


def _as_list(parameters: Iterable[torch.Tensor] | torch.Tensor) -> list[torch.Tensor]:
    return [parameters] if isinstance(parameters, torch.Tensor) else list(parameters)


def _zero1_group(groups: Sequence[Sequence[int]]):
    key = tuple(tuple(sorted(g)) for g in groups)
    if key not in _ZERO1_GROUPS:
        me, mine = dist.get_rank(), None
        for ranks in key:
            group = dist.new_group(list(ranks))
            if me in ranks:
                mine = group
        _ZERO1_GROUPS[key] = mine
    return _ZERO1_GROUPS[key]


def _is_expert_parallel(param: torch.Tensor) -> bool:
    return bool(getattr(param, "expert_model_parallel", False))


def _reduce_over_mesh(
    total: torch.Tensor, expert_total: torch.Tensor, op, zero1_optimizer: bool, zero1_optimizer_groups
) -> torch.Tensor:
    """Combine the norm shares of this rank over the mesh, as NxD does.

    zero1 without groups: each share over the world, then combined. Otherwise the expert share over the EP
    group, combined with the rest, then over TP, PP and the zero1 groups.
    """
    combine = torch.maximum if op == dist.ReduceOp.MAX else torch.add
    expert_parallel = ps.get_expert_model_parallel_size() > 1
    if zero1_optimizer and zero1_optimizer_groups is None:
        dist.all_reduce(total, op=op)
        if expert_parallel:
            dist.all_reduce(expert_total, op=op)
        return combine(total, expert_total)
    if expert_parallel:
        dist.all_reduce(expert_total, op=op, group=ps.get_expert_model_parallel_group())
    total = combine(total, expert_total)
    if ps.get_tensor_model_parallel_size() > 1:
        dist.all_reduce(total, op=op, group=ps.get_tensor_model_parallel_group())
    if ps.get_pipeline_model_parallel_size() > 1:
        dist.all_reduce(total, op=op, group=ps.get_pipeline_model_parallel_group())
    if zero1_optimizer_groups is not None:
        group = _zero1_group(zero1_optimizer_groups)
        if group is not None:
            dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group)
    return total


def get_grad_norm(
    parameters: Iterable[torch.Tensor] | torch.Tensor,
    norm_type: float = 2,
    zero1_optimizer: bool = False,
    zero1_optimizer_groups: Sequence[Sequence[int]] | None = None,
    force_spmd: bool = True,
) -> torch.Tensor | float:
    """The p-norm of all gradients viewed as one vector of the unsharded model.

    Parameters without a gradient or marked `shared` are skipped. With `force_spmd` (always for the inf
    norm) replicated parameters are counted on every TP rank with weight 1/T; otherwise on TP rank 0 only.
    Returns a tensor of shape [1] (dtype of the first parameter) for a finite p, a Python float for inf,
    as NxD does. Accumulation is in fp32 at least.
    """
    if not zero1_optimizer and zero1_optimizer_groups is not None:
        raise ValueError(
            "zero1_optimizer_groups was given while zero1_optimizer is False; with a zero-1 optimizer "
            "gradient clipping is handled by the optimizer"
        )
    params = _as_list(parameters)
    norm_type = float(norm_type)
    if math.isinf(norm_type):
        force_spmd = True
    dtype = params[0].dtype if params else torch.float32
    acc_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    device = params[0].device if params else torch.device("cpu")

    # (gradient, is expert-parallel) pairs
    sharded: list[tuple[torch.Tensor, bool]] = []
    duplicated: list[tuple[torch.Tensor, bool]] = []
    for param in params:
        if param.grad is None or not param_is_not_shared(param):
            continue
        entry = (param.grad.detach(), _is_expert_parallel(param))
        if getattr(param, "tensor_model_parallel", False) or (
            not force_spmd and param_is_not_tensor_parallel_duplicate(param)
        ):
            sharded.append(entry)
        elif force_spmd:
            duplicated.append(entry)

    # [non-expert share, expert share]
    shares = [torch.zeros(1, dtype=acc_dtype, device=device) for _ in range(2)]
    if math.isinf(norm_type):
        # Every rank holds the whole replicated gradient, so a MAX over shards needs no weighting.
        for grad, expert in sharded + duplicated:
            if grad.numel():
                shares[expert] = torch.maximum(shares[expert], grad.abs().max().to(acc_dtype))
        total = _reduce_over_mesh(*shares, dist.ReduceOp.MAX, zero1_optimizer, zero1_optimizer_groups)
        return total[0].item()

    for grad, expert in duplicated:
        shares[expert] += torch.linalg.vector_norm(grad.to(acc_dtype), norm_type) ** norm_type
    if duplicated:
        tp_size = ps.get_tensor_model_parallel_size()
        shares = [share / tp_size for share in shares]
    for grad, expert in sharded:
        shares[expert] += torch.linalg.vector_norm(grad.to(acc_dtype), norm_type) ** norm_type
    total = _reduce_over_mesh(*shares, dist.ReduceOp.SUM, zero1_optimizer, zero1_optimizer_groups)
    return total.pow(1.0 / norm_type).to(dtype)


def clip_grad_norm(
    parameters: Iterable[torch.Tensor] | torch.Tensor,
    max_norm: float,
    norm_type: float = 2,
    zero1_optimizer: bool = False,
    zero1_optimizer_groups: Sequence[Sequence[int]] | None = None,
    force_spmd: bool = True,
) -> torch.Tensor:
    """Scale every gradient in place by `min(1, max_norm / (total_norm + 1e-6))`; return the total norm.

    The norm is `get_grad_norm`'s, returned as a tensor of shape [1]. The inf norm works (deviation NXD-14:
    NxD raises AttributeError there).
    """
    params = _as_list(parameters)
    total = get_grad_norm(params, norm_type, zero1_optimizer, zero1_optimizer_groups, force_spmd)
    if not isinstance(total, torch.Tensor):
        dtype = params[0].dtype if params else torch.float32
        device = params[0].device if params else torch.device("cpu")
        total = torch.tensor([total], dtype=dtype, device=device)
    coeff = max_norm / (total.double() + 1.0e-6)
    scale = torch.clamp(coeff, max=1.0)
    for param in params:
        if param.grad is not None:
            param.grad.detach().mul_(scale.to(param.grad.dtype))
    return total


def _optimizer_params(optimizer) -> list[torch.Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"] if isinstance(p, torch.Tensor)]


def _grad_or_main_grad(param: torch.Tensor) -> torch.Tensor | None:
    if param.grad is not None:
        return param.grad.data
    main_grad = getattr(param, "main_grad", None)
    return main_grad.data if main_grad is not None else None


def allreduce_sequence_parallel_gradients(optimizer) -> None:
    """Sum over TP, in place and without averaging, the gradients of parameters marked
    `sequence_parallel_enabled` (norm weights, RowParallelLinear bias under SP): each rank computed them from
    its own sequence shard only.
    """
    if ps.get_tensor_model_parallel_size() == 1:
        return
    group = ps.get_tensor_model_parallel_group()
    for param in _optimizer_params(optimizer):
        if getattr(param, "sequence_parallel_enabled", False):
            grad = _grad_or_main_grad(param)
            if grad is not None:
                dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=group)


def allreduce_context_parallel_gradients(optimizer) -> None:
    """Mean over the context-parallel group of every gradient (a no-op when CP = 1)."""
    size = ps.get_context_model_parallel_size()
    if size == 1:
        return
    group = ps.get_context_model_parallel_group()
    for param in _optimizer_params(optimizer):
        grad = _grad_or_main_grad(param)
        if grad is not None:
            grad.div_(size)
            dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=group)


def bucket_allreduce_gradients(
    grads_list: Sequence[torch.Tensor], reduce_over_ep_group: bool = False
) -> None:
    """Data-parallel reduction of `grads_list`, in place, as NxD does it.

    By default: divide by the (non-expert) DP size, then all-reduce (SUM) over the expert-data-parallel group,
    which is the DP group when EP = 1. With `reduce_over_ep_group`: no division, all-reduce over the
    expert-model-parallel group. optimum-neuron's optimizer runs the first on every gradient and, when some
    parameters are expert-parallel, the second on the others, so that those are averaged over the whole DP
    group while expert weights are averaged over the ranks holding the same experts only.

    Gradients of one dtype are packed into buckets of at most `ALLREDUCE_BUCKET_CAP_MB` (default 512) MB,
    last gradient first, as NxD does; bucketing changes only the number of collectives.
    """
    if reduce_over_ep_group:
        dp_size, group = 1, ps.get_expert_model_parallel_group()
    else:
        dp_size, group = ps.get_data_parallel_size(), ps.get_expert_data_parallel_group()
    cap = int(os.environ.get("ALLREDUCE_BUCKET_CAP_MB", _ALLREDUCE_BUCKET_CAP_MB)) * 1024 * 1024
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for grad in grads_list:
        by_dtype.setdefault(grad.dtype, []).append(grad)
    for same_dtype in by_dtype.values():
        bucket: list[torch.Tensor] = []
        size = 0
        for grad in reversed(same_dtype):
            grad.data.div_(dp_size)
            nbytes = grad.numel() * grad.element_size()
            if bucket and size + nbytes > cap:
                _allreduce_bucket(bucket, group)
                bucket, size = [], 0
            bucket.append(grad)
            size += nbytes
        if bucket:
            _allreduce_bucket(bucket, group)


def _allreduce_bucket(bucket: list[torch.Tensor], group) -> None:
    if dist.get_world_size(group=group) == 1:
        return
    flat = torch.cat([g.data.reshape(-1) for g in bucket])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
    offset = 0
    for grad in bucket:
        n = grad.numel()
        grad.data.copy_(flat[offset : offset + n].view_as(grad))
        offset += n
