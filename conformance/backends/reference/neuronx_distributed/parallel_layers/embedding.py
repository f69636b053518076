"""`ParallelEmbedding` (NxD's tensor-parallel embedding): the table sharded by vocabulary rows or columns.

Deviations: `padding_idx` is honoured for every value and the embedding keeps its dtype (NXD-05); the
sequence-parallel embedding reduces along a non-zero `sequence_dimension` too (NXD-06).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.parameter import Parameter

from ...deviation_record import note
from . import _collectives as comm
from .linear_base import BaseParallelLayer
from .mappings import (
    gather_from_tensor_model_parallel_region,
    reduce_from_tensor_model_parallel_region,
    reduce_scatter_to_sequence_parallel_region,
)
from .parallel_state import get_tensor_model_parallel_group
from .sharded_init import InitMethod, init_or_tag, initialize_parameter_cpu, padding_length
from .spmd_rank import SPMDRank
from .utils import EmbeddingUtility, divide


class ParallelEmbedding(BaseParallelLayer):
    """`nn.Embedding` with its table sharded over TP: vocabulary rows (default) or embedding columns.

    Vocabulary sharding: rank r holds rows `[vocab_start_index, vocab_end_index)` (the vocabulary must divide
    by T). Ids outside the range read local row 0 and are multiplied by 0, so they contribute zeros and no
    gradient; the partial outputs are summed over TP, or with sequence parallelism reduce-scattered into
    the sequence-first shard `(S/T, B, H)` (for `sequence_dimension` None/0: `(B, S, H)` is transposed first).
    `collect_output=False` returns the partial.

    Embedding sharding (`shard_across_embedding=True`): rank r holds columns `[r H/T, (r+1) H/T)`; the
    outputs are concatenated.

    `padding_idx` behaves as in `nn.Embedding` for every value, 0 included: its row starts at zero and never
    receives a gradient (deviation NXD-05). The attribute holds the local index, or None when the row lives
    on another rank.
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        padding_idx: int | None = None,
        max_norm: float | None = None,
        norm_type: float = 2.0,
        scale_grad_by_freq: bool = False,
        sparse: bool = False,
        init_method: InitMethod = torch.nn.init.normal_,
        device: torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        shard_across_embedding: bool = False,
        pad: bool = False,
        sequence_parallel_enabled: bool = False,
        tensor_model_parallel_group=None,
        use_spmd_rank: bool = False,
        sequence_dimension: int | None = None,
        tile_cc: bool = False,
        rank_ordering: Sequence[int] | None = None,
        collect_output: bool = True,
    ):
        super().__init__(device=device)
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.max_norm = max_norm
        self.norm_type = norm_type
        self.scale_grad_by_freq = scale_grad_by_freq
        self.sparse = sparse
        self.tensor_model_parallel_group = (
            tensor_model_parallel_group
            if tensor_model_parallel_group is not None
            else get_tensor_model_parallel_group()
        )
        world = self.tensor_model_parallel_size = comm.group_size(self.tensor_model_parallel_group)
        rank = comm.group_rank(self.tensor_model_parallel_group)
        self.shard_across_embedding = shard_across_embedding
        self.stride = 1
        self.pad = pad
        self.sequence_parallel_enabled = sequence_parallel_enabled
        self.sequence_dim = sequence_dimension
        self.tile_cc = tile_cc
        self.rank_util: SPMDRank | None = SPMDRank(world) if use_spmd_rank else None
        self.rank_ordering = rank_ordering
        self.collect_output = collect_output
        global_padding_idx = _checked_padding_idx(padding_idx, num_embeddings)
        if padding_idx == 0:
            note("NXD-05")  # NxD drops a falsy padding_idx: its row would train on Trainium

        if shard_across_embedding:
            if pad:
                self.pad_size = padding_length(embedding_dim, world)
                self.embedding_dim = embedding_dim + self.pad_size
            self.num_embeddings_per_partition = self.num_embeddings
            self.embedding_dim_per_partition = divide(self.embedding_dim, world)
            self.start_index, self.end_index = 0, self.num_embeddings
            self.padding_idx = global_padding_idx
            self.per_partition_size = self.embedding_dim_per_partition
            self.weight_partition_dim = 1
        else:
            if pad:
                self.pad_size = padding_length(num_embeddings, world)
                self.num_embeddings = num_embeddings + self.pad_size
            if self.num_embeddings % world != 0:
                raise AssertionError(
                    f"ParallelEmbedding: the vocabulary size {self.num_embeddings} is not divisible by the "
                    f"tensor parallel size {world}; pad the vocabulary to a multiple of {world} (e.g. "
                    f"resize_token_embeddings(pad_to_multiple_of={world})) or pass pad=True (inference only)"
                )
            self.start_index, self.end_index = EmbeddingUtility.range_from_global_vocab_size(
                self.num_embeddings, rank, world
            )
            self.num_embeddings_per_partition = self.end_index - self.start_index
            self.embedding_dim_per_partition = self.embedding_dim
            in_range = (
                global_padding_idx is not None and self.start_index <= global_padding_idx < self.end_index
            )
            self.padding_idx = global_padding_idx - self.start_index if in_range else None
            self.per_partition_size = self.num_embeddings_per_partition
            self.weight_partition_dim = 0

        self.init_method = init_method
        self.dtype = dtype
        self.weight = Parameter(
            torch.empty(
                self.num_embeddings_per_partition,
                self.embedding_dim_per_partition,
                device=device,
                dtype=dtype,
            )
        )
        init_or_tag(self.weight, self.init_weight_cpu, self.weight_partition_dim, 1, world, rank_ordering)

    @property
    def vocab_start_index(self) -> int:
        return self.start_index

    @property
    def vocab_end_index(self) -> int:
        return self.end_index

    def init_weight_cpu(self) -> None:
        """Fill `weight` with its slice of the init method's float32 master; zero the padding row."""
        world = self.tensor_model_parallel_size
        initialize_parameter_cpu(
            self.weight, self.weight_partition_dim, world, self.init_method, param_dtype=self.dtype
        )
        if self.padding_idx is not None:
            with torch.no_grad():
                self.weight[self.padding_idx].zero_()

    def _lookup(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(
            ids.long(),
            self.weight,
            self.padding_idx,
            self.max_norm,
            self.norm_type,
            self.scale_grad_by_freq,
            self.sparse,
        )

    def _forward_shard_across_vocab(self, input_: torch.Tensor) -> torch.Tensor:
        group, world = self.tensor_model_parallel_group, self.tensor_model_parallel_size
        start: int | torch.Tensor = self.start_index
        end: int | torch.Tensor = self.end_index
        if self.rank_util is not None:
            start = self.num_embeddings_per_partition * self.rank_util.get_rank()
            end = start + self.num_embeddings_per_partition
        if world > 1:
            mask = (input_ >= start) & (input_ < end)
            output = self._lookup((input_ - start) * mask)
            output = output * mask.unsqueeze(-1).to(output.dtype)
            if output.dtype == torch.float16:
                note("NXD-05")  # NxD forces the masked output of a non-fp32 table to bf16
        else:
            output = self._lookup(input_)
        if not self.collect_output:
            return output
        if not self.sequence_parallel_enabled:
            return reduce_from_tensor_model_parallel_region(output, process_group=group)
        if self.sequence_dim:
            # NxD returns the un-reduced partial here (deviation NXD-06).
            return reduce_scatter_to_sequence_parallel_region(output, self.sequence_dim, process_group=group)
        sequence_first = output.transpose(0, 1).contiguous()
        return reduce_scatter_to_sequence_parallel_region(sequence_first, 0, process_group=group)

    def _forward_shard_across_embed(self, input_: torch.Tensor) -> torch.Tensor:
        output = self._lookup(input_)
        if not self.collect_output:
            return output
        return gather_from_tensor_model_parallel_region(
            output, process_group=self.tensor_model_parallel_group
        )

    def forward(self, input_: torch.Tensor) -> torch.Tensor:
        self._check_pad_false_for_training()
        if not self.shard_across_embedding:
            return self._forward_shard_across_vocab(input_)
        output = self._forward_shard_across_embed(input_)
        if self.pad and self.pad_size > 0:
            output = torch.narrow(output, -1, 0, self.embedding_dim - self.pad_size)
        return output

    def preshard_hook(self, model_state_dict: dict[str, Any], prefix: str) -> None:
        """Pad a full checkpoint table with zero rows (vocab sharding) or zero columns (embedding sharding)."""
        if not self.pad or self.pad_size == 0:
            return
        size = model_state_dict[prefix].shape[self.weight_partition_dim]
        if self.shard_across_embedding:
            expected, padding = self.embedding_dim, (0, self.pad_size)
        else:
            expected, padding = self.num_embeddings, (0, 0, 0, self.pad_size)
        if expected != size + self.pad_size:
            raise RuntimeError(f"State dict {prefix} has size {size}; expected {expected - self.pad_size}")
        model_state_dict[prefix] = F.pad(model_state_dict[prefix], padding)


def _checked_padding_idx(padding_idx: int | None, num_embeddings: int) -> int | None:
    """`padding_idx` as a non-negative row index, validated as nn.Embedding does."""
    if padding_idx is None:
        return None
    if not -num_embeddings <= padding_idx < num_embeddings:
        raise AssertionError(f"padding_idx {padding_idx} must be within num_embeddings ({num_embeddings})")
    return padding_idx % num_embeddings
