"""Small helpers of `neuronx_distributed.parallel_layers.utils`."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.distributed as dist

_TP_ATTRIBUTE_DEFAULTS = {
    "tensor_model_parallel": False,
    "partition_dim": -1,
    "partition_stride": 1,
    "num_partitions": 1,
}


def ensure_divisibility(numerator: int, denominator: int) -> None:
    if numerator % denominator != 0:
        raise AssertionError(f"{numerator} is not divisible by {denominator}")


def divide(numerator: int, denominator: int) -> int:
    """Exact integer division; an inexact one is an AssertionError naming both numbers."""
    ensure_divisibility(numerator, denominator)
    return numerator // denominator


def set_tensor_model_parallel_attributes(
    tensor: torch.Tensor,
    is_parallel: bool,
    dim: int,
    stride: int,
    num_partitions: int = -1,
    rank_ordering: Sequence[int] | None = None,
) -> None:
    """Tag a parameter with how it is sharded (the attributes checkpoints and grads read)."""
    for attribute in _TP_ATTRIBUTE_DEFAULTS:
        if hasattr(tensor, attribute):
            raise AssertionError(f"tensor already has the tensor-parallel attribute {attribute!r}")
    if num_partitions == -1:
        from .parallel_state import get_tensor_model_parallel_size

        num_partitions = get_tensor_model_parallel_size()
    if rank_ordering is not None and sorted(rank_ordering) != list(range(num_partitions)):
        raise ValueError(
            f"rank_ordering {list(rank_ordering)} is not a permutation of 0..{num_partitions - 1}"
        )
    tensor.tensor_model_parallel = is_parallel
    tensor.partition_dim = dim
    tensor.partition_stride = stride
    tensor.num_partitions = num_partitions
    tensor.rank_ordering = rank_ordering


def set_defaults_if_not_set_tensor_model_parallel_attributes(tensor: torch.Tensor) -> None:
    for attribute, value in _TP_ATTRIBUTE_DEFAULTS.items():
        if not hasattr(tensor, attribute):
            setattr(tensor, attribute, value)


def copy_tensor_model_parallel_attributes(
    destination_tensor: torch.Tensor, source_tensor: torch.Tensor
) -> None:
    for attribute in _TP_ATTRIBUTE_DEFAULTS:
        if hasattr(source_tensor, attribute):
            setattr(destination_tensor, attribute, getattr(source_tensor, attribute))


def param_is_not_tensor_parallel_duplicate(param: torch.Tensor) -> bool:
    """True for sharded parameters, and for replicated ones on TP rank 0."""
    from .parallel_state import get_tensor_model_parallel_rank

    return bool(getattr(param, "tensor_model_parallel", False)) or get_tensor_model_parallel_rank() == 0


class EmbeddingUtility:
    """Vocabulary ranges of a vocab-sharded embedding."""

    @staticmethod
    def range_from_per_partition_vocab_size(
        per_partition_vocab_size: int, rank: int, world_size: int
    ) -> tuple[int, int]:
        start = rank * per_partition_vocab_size
        return start, start + per_partition_vocab_size

    @staticmethod
    def range_from_global_vocab_size(global_vocab_size: int, rank: int, world_size: int) -> tuple[int, int]:
        per_partition = divide(global_vocab_size, world_size)
        return EmbeddingUtility.range_from_per_partition_vocab_size(per_partition, rank, world_size)


def get_local_world_size() -> int:
    """The number of ranks on this host (torchrun's LOCAL_WORLD_SIZE; the world without it)."""
    world = dist.get_world_size() if dist.is_initialized() else 1
    return int(os.environ.get("LOCAL_WORLD_SIZE", world))


def move_model_to_device(model: torch.nn.Module, device: torch.device) -> None:
    """Move the model's parameters and buffers to `device`, keeping parameter identities (NxD's helper)."""
    model.to(device)
