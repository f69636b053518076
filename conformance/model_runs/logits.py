"""The full-vocabulary logits of a parallel model, whichever valid layout it returns them in.

A tensor-parallel causal LM may return, on each of its T ranks:

- its vocab-parallel shard `(B, S, V/T)` (an `lm_head` that is a `ColumnParallelLinear(gather_output=False)`,
  what optimum-neuron's models and generated ones do): the shards are gathered over TP, in rank order;
- the full vocabulary `(B, S, V)` on every rank (a replicated `lm_head`, or one that gathers its output):
  taken as it is, after checking that every rank holds the same values.

Both are valid designs and both are compared; anything else is named with its shape. The layouts are
decided from every rank's shape at once (one collective), so every rank takes the same branch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .fixed_batch import FixedBatch

VOCAB_PARALLEL = "vocab-parallel"
REPLICATED = "replicated"


class LogitsLayoutError(ValueError):
    """The logits have neither of the recognised layouts."""


@dataclass
class FullLogits:
    """The `(B, S, V)` logits, how the model laid them out, and (replicated) how far ranks disagree."""

    logits: torch.Tensor
    layout: str
    local_shape: tuple[int, ...]
    replica_spread: float = 0.0
    """max |rank r - rank 0| of replicated logits (0 for vocab-parallel ones)."""


def full_vocabulary_logits(local: torch.Tensor, vocab_size: int) -> FullLogits:
    """Rank-local logits as the `(B, S, V)` tensor every rank agrees on (a collective; see the module
    docstring). `LogitsLayoutError` when the local last dimension is neither V/T nor V."""
    import torch.distributed as dist
    from neuronx_distributed.parallel_layers.mappings import gather_from_tensor_model_parallel_region
    from neuronx_distributed.parallel_layers.parallel_state import (
        get_tensor_model_parallel_group,
        get_tensor_model_parallel_size,
    )

    tp_size = get_tensor_model_parallel_size()
    shape = tuple(local.shape)
    shapes: list[tuple[int, ...] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(shapes, shape)
    if any(other != shape for other in shapes):
        raise LogitsLayoutError(f"the ranks returned logits of different shapes: {shapes}")
    local = local.detach().contiguous()
    if shape[-1] == vocab_size:
        spread = _replica_spread(local, get_tensor_model_parallel_group()) if tp_size > 1 else 0.0
        return FullLogits(local, REPLICATED if tp_size > 1 else VOCAB_PARALLEL, shape, spread)
    if shape[-1] * tp_size == vocab_size:
        return FullLogits(gather_from_tensor_model_parallel_region(local), VOCAB_PARALLEL, shape)
    raise LogitsLayoutError(
        f"logits have shape {shape} on each of the {tp_size} ranks: neither the vocab-parallel shard "
        f"(batch, sequence, {vocab_size}/{tp_size}) nor the full vocabulary (batch, sequence, {vocab_size})"
    )


def _replica_spread(local: torch.Tensor, group: object) -> float:
    """max |rank r - rank 0| over the TP group (the same on every rank)."""
    import torch.distributed as dist

    first = local.clone()
    dist.broadcast(first, src=dist.get_global_rank(group, 0), group=group)
    spread = (local.float() - first.float()).abs().max().reshape(1)
    dist.all_reduce(spread, op=dist.ReduceOp.MAX, group=group)
    return float(spread)


def logits_of(model: torch.nn.Module, inputs: dict[str, torch.Tensor], vocab_size: int) -> torch.Tensor:
    """The model's full-vocabulary logits on `inputs` (its keyword inputs), fp32, no grad (a collective)."""
    with torch.no_grad():
        return full_vocabulary_logits(model(**inputs).logits, vocab_size).logits.float()


def batch_logits(model: torch.nn.Module, batch: FixedBatch, vocab_size: int) -> torch.Tensor:
    """The model's full-vocabulary logits on the whole `batch` (no labels, no grad, a collective): each
    data-parallel rank feeds its own rows (`data_parallel.rank_batch`) and the rows are put back together."""
    from .data_parallel import gather_rows, rank_batch

    local = logits_of(model, rank_batch(batch).model_inputs(labels=False), vocab_size)
    return gather_rows(local, batch.input_ids.shape[0])
