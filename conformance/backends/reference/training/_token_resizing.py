"""Resizing the vocabulary of a tensor-parallel model (`NeuronModelMixin.resize_token_embeddings`).

The sizes are global: `new_num_tokens` and `pad_to_multiple_of` count the whole vocabulary, which must stay
divisible by the TP size. After a resize, global row i of the `ParallelEmbedding` and of a
`ColumnParallelLinear` lm_head is the old global row i for every i below both sizes: each rank gathers the
old table over TP and takes its rows of the new layout. Added rows come from the model's `_init_weights`
on an `nn.Embedding` / `nn.Linear` of the added rows, drawn on every rank from the default RNG and then
broadcast from the first TP rank, so they do not depend on the TP size and every rank agrees. Building the
new layers does not consume the default RNG. Tied embeddings are tied again; a model whose `vocab_size`
attribute held the per-rank size keeps a per-rank size. Deviations ON-15 (rows) and ON-16 (sizes) list
what the release does instead.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..neuronx_distributed.parallel_layers import _collectives
from ..neuronx_distributed.parallel_layers.layers import ColumnParallelLinear, ParallelEmbedding


def resize_parallel_token_embeddings(
    model: Any, new_num_tokens: int | None, pad_to_multiple_of: int | None, mean_resizing: bool
) -> ParallelEmbedding:
    """Resize `model`'s ParallelEmbedding (and its lm_head) to a global size; return the embedding.

    Errors as optimum-neuron's: NotImplementedError for `mean_resizing`, ValueError for a non-integer
    `pad_to_multiple_of` or a size the TP size does not divide.
    """
    if mean_resizing:
        raise NotImplementedError(
            "Mean resizing is not supported for ParallelEmbedding layers. "
            "Please use standard initialization for resizing."
        )
    embeddings = model.get_input_embeddings()
    if new_num_tokens is None and pad_to_multiple_of is None:
        return embeddings
    world = dist.get_world_size(embeddings.tensor_model_parallel_group)
    old_size = embeddings.num_embeddings
    new_size = _new_vocabulary_size(old_size, new_num_tokens, pad_to_multiple_of, world)
    per_rank_attribute = (
        world > 1
        and not embeddings.shard_across_embedding
        and getattr(model, "vocab_size", None) == embeddings.num_embeddings_per_partition
    )
    if new_size != old_size:
        head = model.get_output_embeddings()
        _check_supported(embeddings, head)
        tied = model.config.get_text_config(decoder=True).tie_word_embeddings
        embeddings = _resize_embedding(model, embeddings, new_size)
        model.set_input_embeddings(embeddings)
        if head is not None:
            model.set_output_embeddings(_resize_lm_head(model, head, new_size, draw_rows=not tied))
    model.vocab_size = new_size // world if per_rank_attribute else new_size
    model.config.get_text_config().vocab_size = new_size
    model.tie_weights()
    return embeddings


def _new_vocabulary_size(old: int, new: int | None, pad_to_multiple_of: int | None, world: int) -> int:
    """The global size asked for, rounded up to `pad_to_multiple_of`; it must divide by the TP size."""
    size = old if new is None else new
    if pad_to_multiple_of is not None:
        if not isinstance(pad_to_multiple_of, int):
            raise ValueError(
                f"Asking to pad the embedding matrix to a multiple of `{pad_to_multiple_of}`, which is not an "
                "integer. Please make sure to pass an integer"
            )
        size = -(-size // pad_to_multiple_of) * pad_to_multiple_of
    if size % world != 0:
        raise ValueError(f"New vocabulary size ({size}) must be divisible by tensor parallel size ({world})")
    return size


def _check_supported(embeddings: ParallelEmbedding, head: nn.Module | None) -> None:
    if embeddings.pad:
        raise NotImplementedError("Resizing a ParallelEmbedding built with pad=True is not supported.")
    if head is not None and not (
        isinstance(head, ColumnParallelLinear) and head.stride == 1 and not head.pad
    ):
        raise NotImplementedError(
            "Resizing supports a ColumnParallelLinear lm_head with stride 1 and pad=False, "
            f"not {type(head).__name__}."
        )


def _resize_embedding(model: Any, old: ParallelEmbedding, new_size: int) -> ParallelEmbedding:
    group = old.tensor_model_parallel_group
    count = new_size - old.num_embeddings
    added = None
    if count > 0:
        added = _drawn_rows(
            model, nn.Embedding, count, old.embedding_dim, group, device=old.weight.device
        ).weight
    padding_idx = _global_padding_idx(old, group)
    with torch.random.fork_rng(devices=[]):
        new = ParallelEmbedding(
            new_size,
            old.embedding_dim,
            padding_idx=padding_idx if padding_idx is not None and padding_idx < new_size else None,
            max_norm=old.max_norm,
            norm_type=old.norm_type,
            scale_grad_by_freq=old.scale_grad_by_freq,
            sparse=old.sparse,
            init_method=old.init_method,
            device=old.weight.device,
            dtype=old.weight.dtype,
            shard_across_embedding=old.shard_across_embedding,
            sequence_parallel_enabled=old.sequence_parallel_enabled,
            tensor_model_parallel_group=group,
            use_spmd_rank=old.rank_util is not None,
            sequence_dimension=old.sequence_dim,
            tile_cc=old.tile_cc,
            rank_ordering=old.rank_ordering,
            collect_output=old.collect_output,
        )
    _fill(new.weight, old.weight, added, new.weight_partition_dim, group)
    return new


def _resize_lm_head(
    model: Any, old: ColumnParallelLinear, new_size: int, draw_rows: bool
) -> ColumnParallelLinear:
    """The resized lm_head. Without `draw_rows` (its weight is about to be tied) added rows are zeros."""
    group = old.tensor_parallel_group
    count = new_size - old.output_size
    drawn = None
    if draw_rows and count > 0:
        drawn = _drawn_rows(
            model,
            nn.Linear,
            count,
            old.input_size,
            group,
            bias=old.bias is not None,
            device=old.weight.device,
        )
    with torch.random.fork_rng(devices=[]):
        new = ColumnParallelLinear(
            old.input_size,
            new_size,
            bias=old.bias is not None,
            gather_output=old.gather_output,
            dtype=old.dtype,
            device=old.weight.device,
            init_method=old.arg_init_method,
            sequence_parallel_enabled=old.sequence_parallel_enabled,
            sequence_dimension=old.sequence_dimension,
            keep_master_weight=old.keep_master_weight,
            skip_bias_add=old.skip_bias_add,
            tensor_model_parallel_group=group,
            reduce_dtype=old.reduce_dtype,
            rank_ordering=old.rank_ordering,
        )
    full_weight = _fill(new.weight, old.weight, drawn.weight if drawn is not None else None, 0, group)
    if new.keep_master_weight:
        new.master_weight = full_weight
    if old.bias is not None:
        _fill(
            new.bias,
            old.bias,
            drawn.bias if drawn is not None else None,
            None if old.gather_output else 0,
            group,
        )
    return new


def _drawn_rows(
    model: Any, layer: type[nn.Embedding | nn.Linear], count: int, width: int, group: Any, **options: Any
) -> nn.Module:
    """A float32 `layer` of `count` rows initialised by `model._init_weights`, the same on every rank of `group`.

    Every rank draws (so the default RNG advances alike everywhere); the first TP rank's draw is kept.
    """
    shape = (count, width) if layer is nn.Embedding else (width, count)
    drawn = torch.nn.utils.skip_init(layer, *shape, dtype=torch.float32, **options)
    model._init_weights(drawn)
    if dist.get_world_size(group) > 1:
        source = dist.get_global_rank(group, 0)
        for tensor in drawn.parameters():
            dist.broadcast(tensor.data, src=source, group=group)
    return drawn


def _fill(
    new: torch.Tensor, old: torch.Tensor, added: torch.Tensor | None, partition_dim: int | None, group: Any
) -> torch.Tensor:
    """Write this rank's part of the new global table into `new`; return the whole table.

    The new table is the old global rows followed by `added` (zeros when None), cut to the new size. Rows
    are dim 0 of every table; `partition_dim` is the dimension split over TP (None: replicated).
    """
    full_old = old.detach() if partition_dim is None else _collectives.all_gather(old, partition_dim, group)
    size = new.shape[0] * (dist.get_world_size(group) if partition_dim == 0 else 1)
    if added is None:
        added = full_old.new_zeros((max(size - full_old.shape[0], 0), *full_old.shape[1:]))
    full_new = torch.cat([full_old[:size], added.detach().to(full_old.dtype)])[:size]
    part = full_new if partition_dim is None else _collectives.split(full_new, partition_dim, group)
    with torch.no_grad():
        new.copy_(part)
    new.requires_grad_(old.requires_grad)
    return full_new


def _global_padding_idx(embeddings: ParallelEmbedding, group: Any) -> int | None:
    """The padding row's global index (the layer keeps a local index on the rank that holds it)."""
    if embeddings.shard_across_embedding or dist.get_world_size(group) == 1:
        return embeddings.padding_idx
    local = embeddings.padding_idx
    mine = torch.tensor(
        [-1 if local is None else embeddings.start_index + local], device=embeddings.weight.device
    )
    found = int(_collectives.all_reduce(mine, group, op=dist.ReduceOp.MAX).item())
    return None if found < 0 else found
