"""Tensor-parallel layers (`neuronx_distributed.parallel_layers.layers`).

`ColumnParallelLinear`, `RowParallelLinear` and `ParallelEmbedding` with NxD's constructor signatures,
attributes, parameter tags and shard layouts. What generated models and optimum-neuron rely on:

- weights are sharded by `create_local_weight` (column: dim 0 with `stride`, row: dim 1, embedding: vocab
  rows or embedding columns) and tagged `tensor_model_parallel`, `partition_dim`, `partition_stride`,
  `num_partitions`, `rank_ordering`;
- on any real device a weight is initialised as NxD does on CPU: a float32 master of the full shape, the
  init method on it with the default torch RNG, then this rank's slice. A seeded layer therefore holds
  exactly the slices of `nn.Linear` / `nn.Embedding`, whatever the TP size. On `meta` only the tags are set;
- collectives follow NxD's mappings (sequence-parallel activations are sequence-first, `(S/T, B, H)`).

Deliberate differences from NxD 0.18 (see `deviations.py`): biases are master slices drawn with nn.Linear's
bound (NXD-03); `master_weight` is never a parameter (NXD-04); `padding_idx` is honoured for every value
and the embedding keeps its dtype (NXD-05); the sequence-parallel embedding reduces along a non-zero
`sequence_dimension` too (NXD-06); column input gradients are always reduced (NXD-07); stride > 1 with
`gather_output=True` returns the master's column order (NXD-15); `create_local_weight` always writes its
output (NXD-16).

This module is the import path; the code lives in one module per job: `sharded_init` (local weights and
the master-then-slice init), `linear_base` and `linears` (the linears), `embedding`, `spmd_rank`.
"""

from __future__ import annotations

# This module re-exports what NxD's `layers` module makes importable (its own names are in `__all__`).
# ruff: noqa: F401
from .embedding import ParallelEmbedding
from .layers_utils import LinearWithAsyncCommunication, linear_with_async_allreduce
from .linear_base import BaseParallelLayer, BaseParallelLinear
from .linears import ColumnParallelLinear, RowParallelLinear
from .mappings import (
    copy_to_tensor_model_parallel_region,
    gather_from_tensor_model_parallel_region,
    reduce_from_tensor_model_parallel_region,
    reduce_scatter_to_sequence_parallel_region,
    scatter_to_tensor_model_parallel_region,
)
from .parallel_state import (
    get_aot_mode,
    get_tensor_model_parallel_group,
    get_tensor_model_parallel_rank,
    get_tensor_model_parallel_size,
)
from .sharded_init import InitMethod, create_local_weight
from .spmd_rank import SPMDRank
from .utils import (
    EmbeddingUtility,
    divide,
    param_is_not_tensor_parallel_duplicate,
    set_tensor_model_parallel_attributes,
)

__all__ = [
    "BaseParallelLayer",
    "BaseParallelLinear",
    "ColumnParallelLinear",
    "LinearWithAsyncCommunication",
    "ParallelEmbedding",
    "RowParallelLinear",
    "SPMDRank",
    "create_local_weight",
    "linear_with_async_allreduce",
    "param_is_not_tensor_parallel_duplicate",
]
