"""Data-parallel shares of the fixed batch, and putting what each share gave back together.

With expert parallelism (EP > 1) the T x EP ranks are EP data-parallel groups (NxD's layout: the EP ranks
are data-parallel ranks with their own tokens, which the experts exchange by all-to-all). Each data-parallel
rank d of D then feeds its own rows of the fixed batch (`fixed_batch.data_parallel_rows`: rows d, d + D...),
as a distributed sampler deals them, so that tokens returned to the wrong rank cannot go unnoticed. What the
ranks computed per row (logits, activations, router logits) is gathered back into the batch's row order; a
per-rank value (the loss) is gathered as a list in data-parallel rank order. Without data parallelism
every function here is the identity, and no collective runs.
"""

from __future__ import annotations

from typing import Any

import torch

from .fixed_batch import FixedBatch, data_parallel_rows


def data_parallel_position() -> tuple[int, int]:
    """(this rank's data-parallel rank, the data-parallel size)."""
    from neuronx_distributed.parallel_layers import parallel_state

    return parallel_state.get_data_parallel_rank(), parallel_state.get_data_parallel_size()


def row_shares(dp_size: int, batch_size: int) -> list[tuple[int, ...]]:
    """The rows each data-parallel rank feeds, in data-parallel rank order."""
    return [data_parallel_rows(rank, dp_size, batch_size) for rank in range(dp_size)]


def rank_batch(batch: FixedBatch) -> FixedBatch:
    """The rows of `batch` this rank feeds (the whole batch without data parallelism)."""
    dp_rank, dp_size = data_parallel_position()
    if dp_size == 1:
        return batch
    return batch.rows(data_parallel_rows(dp_rank, dp_size, batch.input_ids.shape[0]))


def gather_rows(local: torch.Tensor, batch_size: int) -> torch.Tensor:
    """`local` `(rows of this rank, ...)` from every data-parallel rank, in the batch's row order (a
    collective over the data-parallel group; every rank gets the whole)."""
    import torch.distributed as dist
    from neuronx_distributed.parallel_layers import parallel_state

    _, dp_size = data_parallel_position()
    if dp_size == 1:
        return local
    local = local.detach().contiguous()
    parts = [torch.empty_like(local) for _ in range(dp_size)]
    dist.all_gather(parts, local, group=parallel_state.get_data_parallel_group())
    whole = torch.empty((batch_size, *local.shape[1:]), dtype=local.dtype, device=local.device)
    for rows, part in zip(row_shares(dp_size, batch_size), parts):
        whole[list(rows)] = part
    return whole


def gather_values(value: Any) -> list[Any]:
    """`value` from every data-parallel rank, in data-parallel rank order (a collective)."""
    import torch.distributed as dist
    from neuronx_distributed.parallel_layers import parallel_state

    _, dp_size = data_parallel_position()
    if dp_size == 1:
        return [value]
    found: list[Any] = [None] * dp_size
    dist.all_gather_object(found, value, group=parallel_state.get_data_parallel_group())
    return found
