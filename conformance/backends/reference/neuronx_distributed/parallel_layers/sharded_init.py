"""Sharded parameters: NxD's local-weight rule and its "float32 master, then this rank's slice" init.

On any real device a parallel layer's weight is initialised as NxD does on CPU: a float32 master of the
full shape, the init method on it with the default torch RNG, then this rank's slice by
`create_local_weight`. A seeded layer therefore holds exactly the slices of `nn.Linear` / `nn.Embedding`,
whatever the TP size. On `meta` only the tensor-parallel tags are set. Deviations: biases are master
slices drawn with nn.Linear's bound (NXD-03), a kept master is a plain tensor (NXD-04),
`create_local_weight` always writes its output (NXD-16).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.nn.parameter import Parameter

from .parallel_state import get_aot_mode, get_tensor_model_parallel_rank, get_tensor_model_parallel_size
from .utils import divide, set_tensor_model_parallel_attributes

InitMethod = Callable[[torch.Tensor], Any]


def create_local_weight(
    full_weight: torch.Tensor,
    partition_dim: int,
    per_partition_size: int,
    stride: int,
    out_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """This TP rank's shard of `full_weight`, by NxD's strided rule.

    The full tensor is cut along `partition_dim` into chunks of `per_partition_size / stride`; rank r takes
    chunks r, r + T, r + 2T, ... and concatenates them. So local index j of rank r is global index
    `(r + (j // c) * T) * c + j % c` with `c = per_partition_size / stride`. Rank and T are the global TP
    rank and size. `out_weight`, when given, is written in place (always, deviation NXD-16).
    """
    world = get_tensor_model_parallel_size()
    rank = get_tensor_model_parallel_rank()
    chunk = divide(per_partition_size, stride)
    pieces = torch.split(full_weight, chunk, dim=partition_dim)
    if len(pieces) != world * stride or pieces[-1].shape[partition_dim] != chunk:
        raise AssertionError(
            f"dimension {partition_dim} of size {full_weight.shape[partition_dim]} does not hold "
            f"{world} x {per_partition_size} (tensor parallel size x per-partition size)"
        )
    local = torch.cat(pieces[rank::world], dim=partition_dim)
    if out_weight is None:
        return local
    with torch.no_grad():
        out_weight.copy_(local)
    return out_weight


def padding_length(size: int, multiple: int) -> int:
    """How much to add to `size` to make it a multiple of `multiple` (NxD's `get_padding_length`)."""
    return (-size) % multiple


def default_linear_init(weight: torch.Tensor) -> None:
    """nn.Linear's weight init, `kaiming_uniform_(a=sqrt(5))`: the parallel linears' default init method."""
    torch.nn.init.kaiming_uniform_(weight, a=math.sqrt(5))


def linear_bias_bound(fan_in: int) -> float:
    """nn.Linear's bias bound, `1 / sqrt(fan_in)` (0 for no inputs)."""
    return 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0


def linear_bias_master(size: int, fan_in: int) -> torch.Tensor:
    """A full float32 bias drawn as nn.Linear draws it: uniform in +-1/sqrt(fan_in) (deviation NXD-03)."""
    master = torch.empty(size, dtype=torch.float32, device="cpu")
    bound = linear_bias_bound(fan_in)
    torch.nn.init.uniform_(master, -bound, bound)
    return master


def draw_master(local_shape: Sequence[int], partition_dim: int, init_method: InitMethod) -> torch.Tensor:
    """The full float32 master of a shard of `local_shape`, initialised by `init_method` on CPU.

    Like NxD, the master is a Parameter (so `requires_grad=True`): an init method that writes in place
    outside `torch.no_grad()` fails here as it does on Trainium.
    """
    shape = list(local_shape)
    shape[partition_dim] *= get_tensor_model_parallel_size()
    master = Parameter(torch.empty(shape, dtype=torch.float32, device="cpu"))
    init_method(master)
    return master


def initialize_parameter_cpu(
    param: torch.Tensor,
    partition_dim: int,
    num_partitions: int,
    init_method: InitMethod,
    return_master_param: bool = False,
    *,
    param_dtype: torch.dtype = torch.float32,
    stride: int = 1,
) -> torch.Tensor | None:
    """Tag `param` as sharded and fill it with its slice of a freshly initialised float32 master.

    The master has `param`'s shape with `partition_dim` multiplied by the global TP size; it is cast to
    `param_dtype` before slicing. With `return_master_param` the cast master comes back as a plain tensor
    (deviation NXD-04: assigning it to a module never registers a parameter).
    """
    set_tensor_model_parallel_attributes(param, True, partition_dim, stride, num_partitions=num_partitions)
    if get_aot_mode():
        return None
    master = draw_master(param.shape, partition_dim, init_method).detach().to(param_dtype)
    create_local_weight(master, partition_dim, param.shape[partition_dim], stride, out_weight=param)
    return master if return_master_param else None


def is_materialised(tensor: torch.Tensor) -> bool:
    """False on `meta`, where layers only tag their parameters."""
    return tensor.device.type != "meta"


def init_or_tag(
    weight: torch.Tensor,
    initialise: Callable[[], None],
    partition_dim: int,
    stride: int,
    num_partitions: int,
    rank_ordering: Sequence[int] | None,
) -> None:
    """Run `initialise` (which tags as it fills) on a real weight; on `meta` only set the TP tags.

    The meta tags carry `rank_ordering`; those `initialize_parameter_cpu` sets on a filled weight do not.
    """
    if is_materialised(weight):
        initialise()
        return
    set_tensor_model_parallel_attributes(
        weight, True, partition_dim, stride, num_partitions=num_partitions, rank_ordering=rank_ordering
    )
