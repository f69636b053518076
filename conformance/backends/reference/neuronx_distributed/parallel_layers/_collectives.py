"""Out-of-place collectives over a process group, in group-rank order (the reference's own helpers).

NxD's `parallel_layers/comm.py` wraps XLA collectives with other signatures; no model uses it, so this
backend does not provide that module.

Unlike NxD's CPU-mode wrappers these never modify their input (deviation NXD-08). gloo has no
reduce-scatter, so it is an all-reduce followed by taking this rank's chunk; nccl uses the native op.
The all-to-all is torch's `all_to_all_single`, which gloo implements for CPU tensors (torch 2.13, checked
on 2 and 4 ranks by the MoE tests) as nccl does for CUDA ones; NxD's is XLA-only.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def group_size(group) -> int:
    return dist.get_world_size(group=group)


def group_rank(group) -> int:
    return dist.get_rank(group=group)


def all_reduce(tensor: torch.Tensor, group, op: dist.ReduceOp = dist.ReduceOp.SUM) -> torch.Tensor:
    """A reduced copy of `tensor` over `group`."""
    out = tensor.detach().clone(memory_format=torch.contiguous_format)
    dist.all_reduce(out, op=op, group=group)
    return out


def all_gather(tensor: torch.Tensor, dim: int, group) -> torch.Tensor:
    """Concatenation along `dim` of every member's tensor, in group-rank order."""
    tensor = tensor.detach().contiguous()
    parts = [torch.empty_like(tensor) for _ in range(group_size(group))]
    dist.all_gather(parts, tensor, group=group)
    return torch.cat(parts, dim=dim)


def split(tensor: torch.Tensor, dim: int, group) -> torch.Tensor:
    """This rank's chunk of `tensor` along `dim` (the size must divide evenly)."""
    world, rank = group_size(group), group_rank(group)
    size = tensor.shape[dim]
    if size % world != 0:
        raise ValueError(f"dimension {dim} of size {size} is not divisible by the group size {world}")
    return tensor.narrow(dim, rank * (size // world), size // world).contiguous()


def reduce_scatter(tensor: torch.Tensor, dim: int, group) -> torch.Tensor:
    """This rank's chunk, along `dim`, of the sum of every member's tensor."""
    world = group_size(group)
    if tensor.shape[dim] % world != 0:
        raise ValueError(
            f"dimension {dim} of size {tensor.shape[dim]} is not divisible by the group size {world}"
        )
    if dist.get_backend(group) == "nccl":
        moved = tensor.detach().movedim(dim, 0).contiguous()
        out = torch.empty((moved.shape[0] // world, *moved.shape[1:]), dtype=moved.dtype, device=moved.device)
        dist.reduce_scatter_tensor(out, moved, group=group)
        return out.movedim(0, dim).contiguous()
    # A fresh tensor, as the collective's output is on Trainium: the chunk of the all-reduced copy would be
    # a view made inside the autograd Function, which autograd forbids modifying in place (`y += x` on a
    # row-parallel output under sequence parallelism).
    return split(all_reduce(tensor, group), dim, group).clone()


def all_to_all(tensor: torch.Tensor, split_dim: int, concat_dim: int, group) -> torch.Tensor:
    """Cut `tensor` into group-size chunks along `split_dim`, send chunk j to member j, and concatenate the
    chunks received along `concat_dim`, in group-rank order (the semantics of XLA's `all_to_all`)."""
    world = group_size(group)
    if tensor.shape[split_dim] % world != 0:
        raise ValueError(
            f"dimension {split_dim} of size {tensor.shape[split_dim]} is not divisible by the group size {world}"
        )
    # all_to_all_single exchanges equal chunks of dimension 0.
    chunks = tensor.detach().movedim(split_dim, 0).contiguous()
    received = torch.empty_like(chunks)
    dist.all_to_all_single(received, chunks, group=group)
    pieces = received.chunk(world, dim=0)
    return torch.cat([piece.movedim(0, split_dim) for piece in pieces], dim=concat_dim).contiguous()
