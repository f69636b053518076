"""`GQAQKVColumnParallelLinearSpec`: q/k/v projections held by NxD's GQA layer, and the matching o_proj."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from neuronx_distributed.parallel_layers.parallel_state import (
    get_tensor_model_parallel_rank,
    get_tensor_model_parallel_size,
)
from torch import nn

from ...deviation_record import note
from ..gqa_layout import GQAHeadLayout, gather_heads
from .lora_mean_rule import average_lora_parts, duplicate_lora_mean
from .peft_targets import FusedModulesSpec
from .pending_groups import take_group
from .saved_shards import find_metadata_name, rank_shards, rank_shards_of_metadata_name
from .spec_base import (
    ParametersMetadata,
    ShardedStateDicts,
    StateDict,
    base_and_lora_names,
    param_names,
)

_QKV = ("q", "k", "v")
_FoundShards = dict[str, tuple[list[torch.Tensor], int]]
"""`{"q"|"k"|"v": (per-rank shards, partition dim)}`."""


def _reject_parameter(weight: torch.Tensor) -> None:
    if isinstance(weight, nn.Parameter):
        raise TypeError("pass the parameter's data (a plain tensor), not an nn.Parameter")


def _head_axis(query_or_output: str, argument: str) -> int:
    """The axis that holds the heads: rows of the query projection, columns of the output projection."""
    if query_or_output not in ("query", "output"):
        raise ValueError(f"{argument} must be 'query' or 'output', not {query_or_output!r}")
    return 0 if query_or_output == "query" else 1


@dataclass
class GQAQKVColumnParallelLinearSpec(FusedModulesSpec):
    """Separate q/k/v projections loaded into NxD's `GQAQKVColumnParallelLinear`, plus the matching o_proj.

    Rank r holds the query heads `compute_query_indices_for_rank(...)` (rows of q, columns of o in that
    order) and rows `[r*kv_pp, (r+1)*kv_pp)` of K and V tiled `kv_size_multiplier` times; see
    `gqa_layout`. Consolidation inverts the permutation and keeps K/V replica 0.
    """

    gqa_qkv_projection_name: str
    query_projection_name: str
    key_projection_name: str
    value_projection_name: str
    output_projection_name: str
    num_attention_heads: int
    num_key_value_heads: int
    kv_size_multiplier: int
    q_output_size_per_partition: int
    kv_output_size_per_partition: int
    fuse_qkv: bool
    bias: bool
    tp_size: int = field(default_factory=get_tensor_model_parallel_size)

    def _qkv_names(self) -> list[str]:
        return [self.query_projection_name, self.key_projection_name, self.value_projection_name]

    def get_relevant_parameter_names(self, module_fully_qualified_name: str) -> set[str]:
        fqn, gqa = module_fully_qualified_name, self.gqa_qkv_projection_name
        names = set()
        for pn in param_names(self.bias):
            names |= base_and_lora_names(fqn, [*self._qkv_names(), self.output_projection_name], pn)
            names.add(f"{fqn}.{gqa}.lora_A.{pn}")
            if self.fuse_qkv:
                names.add(f"{fqn}.{gqa}.{pn}_qkv")
                # optimum-neuron's name for the fused lora_B, and the parameter's real one (ON-02).
                names |= {f"{fqn}.{gqa}.lora_B.{pn}", f"{fqn}.{gqa}.lora_B.{pn}_qkv"}
            else:
                for suffix in _QKV:
                    names |= {f"{fqn}.{gqa}.{pn}_{suffix}", f"{fqn}.{gqa}.lora_B.{pn}_{suffix}"}
        return names

    @staticmethod
    def compute_query_indices_for_rank(
        tp_size: int,
        tp_rank: int,
        num_attention_heads: int,
        num_key_value_heads: int,
        kv_size_multiplier: int,
    ) -> torch.Tensor:
        """The original query head held by each local query slot of `tp_rank` (see `gqa_layout`)."""
        layout = GQAHeadLayout(tp_size, num_attention_heads, num_key_value_heads, kv_size_multiplier)
        return layout.query_indices_for_rank(tp_rank)

    @staticmethod
    def create_kv_proj_local_weight_from_regular_weight(
        weight_data: torch.Tensor, kv_size_multiplier: int, output_size_per_partition: int
    ) -> torch.Tensor:
        """Rows `[r*L, (r+1)*L)` (`L = output_size_per_partition`) of K or V tiled `kv_size_multiplier`x."""
        _reject_parameter(weight_data)
        tp_size, tp_rank = get_tensor_model_parallel_size(), get_tensor_model_parallel_rank()
        tiled = weight_data.repeat(kv_size_multiplier, *([1] * (weight_data.dim() - 1)))
        if tiled.shape[0] != tp_size * output_size_per_partition:
            raise ValueError(
                f"K/V of {weight_data.shape[0]} rows tiled {kv_size_multiplier} times has {tiled.shape[0]} "
                f"rows, not tp_size {tp_size} x {output_size_per_partition} per partition"
            )
        return tiled.narrow(0, tp_rank * output_size_per_partition, output_size_per_partition).clone()

    @staticmethod
    def create_query_or_output_projection_local_weight_from_regular_weight(
        weight_data: torch.Tensor,
        num_attention_heads: int,
        num_key_value_heads: int,
        kv_size_multiplier: int,
        query_or_output_proj: Literal["query", "output"],
    ) -> torch.Tensor:
        """This rank's query rows (`(H*d, D) -> (H/T*d, D)`) or output columns (`(D, H*d) -> (D, H/T*d)`)."""
        axis = _head_axis(query_or_output_proj, "query_or_output_proj")
        _reject_parameter(weight_data)
        tp_size, tp_rank = get_tensor_model_parallel_size(), get_tensor_model_parallel_rank()
        layout = GQAHeadLayout(tp_size, num_attention_heads, num_key_value_heads, kv_size_multiplier)
        return gather_heads(weight_data, num_attention_heads, layout.query_indices_for_rank(tp_rank), axis)

    @staticmethod
    def create_gqa_query_or_output_projection_weight_from_full_weight(
        full_weight: torch.Tensor,
        tp_size: int,
        num_attention_heads: int,
        num_key_value_heads: int,
        kv_size_multiplier: int,
        query_or_output: Literal["query", "output"],
    ) -> torch.Tensor:
        """Undo the query permutation on the rank-ordered concatenation of local query (or output) tensors."""
        axis = _head_axis(query_or_output, "query_or_output")
        layout = GQAHeadLayout(tp_size, num_attention_heads, num_key_value_heads, kv_size_multiplier)
        return gather_heads(full_weight, num_attention_heads, layout.inverse_query_indices(), axis)

    def _fused_module_name(self) -> str:
        return self.gqa_qkv_projection_name

    def _original_module_names(self) -> list[str]:
        return self._qkv_names()

    # Local (rank) tensors from original ones.

    def _local_heads(self, weight: torch.Tensor, query_or_output: Literal["query", "output"]) -> torch.Tensor:
        return self.create_query_or_output_projection_local_weight_from_regular_weight(
            weight,
            self.num_attention_heads,
            self.num_key_value_heads,
            self.kv_size_multiplier,
            query_or_output,
        )

    def _local_qkv_part(self, key: str, weight: torch.Tensor) -> torch.Tensor:
        """This rank's part of the q (`key="q"`), k or v tensor `weight`."""
        if key == "q":
            return self._local_heads(weight, "query")
        return self.create_kv_proj_local_weight_from_regular_weight(
            weight, self.kv_size_multiplier, self.kv_output_size_per_partition
        )

    def _load_qkv(
        self,
        state_dict: StateDict,
        upstanding: StateDict,
        sources: list[str],
        target_prefix: str,
    ) -> None:
        """q/k/v `sources` -> `{target_prefix}_qkv` (fused, once all three are seen) or `_q`, `_k`, `_v`."""
        if self.fuse_qkv:
            parts = take_group(state_dict, upstanding, sources)
            if parts is not None:
                local = [self._local_qkv_part(key, tensor) for key, tensor in zip(_QKV, parts)]
                state_dict[f"{target_prefix}_qkv"] = torch.cat(local, dim=0)
            return
        for source, key in zip(sources, _QKV):
            if source in state_dict:
                state_dict[f"{target_prefix}_{key}"] = self._local_qkv_part(key, state_dict.pop(source))

    def _load_output(self, state_dict: StateDict, name: str) -> None:
        if name in state_dict:
            state_dict[name] = self._local_heads(state_dict[name], "output")

    def _adapt_state_dict(
        self,
        module_fully_qualified_name: str,
        named_parameters: dict[str, nn.Parameter],
        orig_state_dict: StateDict,
        upstanding_sharded_params: StateDict,
        inplace: bool = False,
    ) -> StateDict:
        fqn = module_fully_qualified_name
        state_dict = orig_state_dict if inplace else dict(orig_state_dict)
        if self.bias:
            note("ON-10")  # the released spec cannot load q/k/v biases
        for pn in param_names(self.bias):
            sources = [f"{fqn}.{proj}.{pn}" for proj in self._qkv_names()]
            self._load_qkv(
                state_dict, upstanding_sharded_params, sources, f"{fqn}.{self.gqa_qkv_projection_name}.{pn}"
            )
            # The o_proj bias lives on the output features: replicated, not permuted.
            if pn == "weight":
                self._load_output(state_dict, f"{fqn}.{self.output_projection_name}.{pn}")
        return state_dict

    def _lora_adapt_state_dict(
        self,
        module_fully_qualified_name: str,
        named_parameters: dict[str, nn.Parameter],
        orig_state_dict: StateDict,
        upstanding_sharded_params: StateDict,
        inplace: bool = False,
    ) -> StateDict:
        """lora_A = mean of the q/k/v lora_A; lora_B follows the base layout; o_proj's lora_A is permuted.

        The fused lora_B goes to `qkv_proj.lora_B.{pn}_qkv`, the parameter's own name (deviation ON-02).
        """
        fqn, gqa = module_fully_qualified_name, self.gqa_qkv_projection_name
        state_dict = orig_state_dict if inplace else dict(orig_state_dict)
        if self.fuse_qkv:
            note("ON-02")  # the released spec writes the fused lora_B under another name
        for pn in param_names(self.bias):
            lora_a = take_group(
                state_dict,
                upstanding_sharded_params,
                [f"{fqn}.{proj}.lora_A.{pn}" for proj in self._qkv_names()],
            )
            if lora_a is not None:
                state_dict[f"{fqn}.{gqa}.lora_A.{pn}"] = average_lora_parts(lora_a)
            sources = [f"{fqn}.{proj}.lora_B.{pn}" for proj in self._qkv_names()]
            self._load_qkv(state_dict, upstanding_sharded_params, sources, f"{fqn}.{gqa}.lora_B.{pn}")
            self._load_output(state_dict, f"{fqn}.{self.output_projection_name}.lora_A.{pn}")
        return state_dict

    # Original tensors from per-rank ones.

    def _split_fused_qkv(self, shards: list[torch.Tensor]) -> tuple[list[torch.Tensor], ...]:
        q_pp, kv_pp = self.q_output_size_per_partition, self.kv_output_size_per_partition
        for shard in shards:
            if shard.shape[0] != q_pp + 2 * kv_pp:
                raise ValueError(f"fused qkv shard of {shard.shape[0]} rows, expected {q_pp} + 2 x {kv_pp}")
        return (
            [s[:q_pp] for s in shards],
            [s[q_pp : q_pp + kv_pp] for s in shards],
            [s[q_pp + kv_pp :] for s in shards],
        )

    def _full_heads(
        self, shards: list[torch.Tensor], partition_dim: int, query_or_output: Literal["query", "output"]
    ) -> torch.Tensor:
        full = torch.cat(shards, dim=partition_dim)
        return self.create_gqa_query_or_output_projection_weight_from_full_weight(
            full,
            self.tp_size,
            self.num_attention_heads,
            self.num_key_value_heads,
            self.kv_size_multiplier,
            query_or_output,
        )

    def _full_qkv_part(self, key: str, shards: list[torch.Tensor], partition_dim: int) -> torch.Tensor:
        """The original q (`key="q"`), k or v tensor from its per-rank shards.

        Of the tiled K or V, replica 0 is kept; the other replicas are dropped, as optimum-neuron does.
        """
        if key == "q":
            return self._full_heads(shards, partition_dim, "query")
        tiled = torch.cat(shards, dim=partition_dim)
        return torch.chunk(tiled, self.kv_size_multiplier, dim=0)[0].clone()

    def _qkv_shards(
        self,
        sharded_state_dicts: ShardedStateDicts,
        parameters_metadata: ParametersMetadata,
        prefix: str,
        metadata_name: Callable[[str], str | None],
    ) -> tuple[_FoundShards, list[str]]:
        """`{"q"|"k"|"v": (per-rank shards, partition dim)}` for `{prefix}_qkv` or `{prefix}_q/_k/_v`.

        `metadata_name(adapter_free_name)` gives the metadata name to read and remove, or None when the
        tensor was not saved (then it is skipped).
        """
        found: _FoundShards = {}
        to_remove: list[str] = []
        if self.fuse_qkv:
            meta = metadata_name(f"{prefix}_qkv")
            if meta is not None:
                # NxD rebuilds `weight_qkv` without tensor-parallel attributes: it is column-parallel, dim 0.
                shards = rank_shards_of_metadata_name(sharded_state_dicts, meta, self.tp_size)
                for key, part in zip(_QKV, self._split_fused_qkv(shards)):
                    found[key] = (part, 0)
                to_remove.append(meta)
            return found, to_remove
        for key in _QKV:
            meta = metadata_name(f"{prefix}_{key}")
            if meta is not None:
                shards = rank_shards_of_metadata_name(sharded_state_dicts, meta, self.tp_size)
                found[key] = (shards, parameters_metadata[meta].get("partition_dim", 0))
                to_remove.append(meta)
        return found, to_remove

    def _rebuild_qkv(self, found: _FoundShards, module_fully_qualified_name: str, suffix: str) -> StateDict:
        """The original tensors of `found`, named `{fqn}.{q|k|v projection}.{suffix}`."""
        original_names = dict(
            zip(_QKV, (f"{module_fully_qualified_name}.{proj}.{suffix}" for proj in self._qkv_names()))
        )
        return {
            original_names[key]: self._full_qkv_part(key, shards, dim) for key, (shards, dim) in found.items()
        }

    def _full_output(
        self,
        sharded_state_dicts: ShardedStateDicts,
        parameters_metadata: ParametersMetadata,
        name: str,
        metadata_name: str,
    ) -> torch.Tensor:
        """The original o_proj tensor saved under the adapter-free `name`, columns back in head order."""
        shards = rank_shards(sharded_state_dicts, name, self.tp_size)
        return self._full_heads(shards, parameters_metadata[metadata_name]["partition_dim"], "output")

    def _to_original_weights(
        self,
        module_fully_qualified_name: str,
        sharded_state_dicts: ShardedStateDicts,
        parameters_metadata: ParametersMetadata,
    ) -> tuple[StateDict, list[str]]:
        fqn, gqa = module_fully_qualified_name, self.gqa_qkv_projection_name
        weights: StateDict = {}
        keys_to_remove: list[str] = []
        for pn in param_names(self.bias):
            found, to_remove = self._qkv_shards(
                sharded_state_dicts, parameters_metadata, f"{fqn}.{gqa}.{pn}", lambda name: name
            )
            weights.update(self._rebuild_qkv(found, fqn, pn))
            keys_to_remove += to_remove
            if pn == "weight":
                output_name = f"{fqn}.{self.output_projection_name}.{pn}"
                weights[output_name] = self._full_output(
                    sharded_state_dicts, parameters_metadata, output_name, output_name
                )
        return weights, keys_to_remove

    def _lora_to_original_weights(
        self,
        module_fully_qualified_name: str,
        sharded_state_dicts: ShardedStateDicts,
        parameters_metadata: ParametersMetadata,
    ) -> tuple[StateDict, list[str]]:
        fqn, gqa = module_fully_qualified_name, self.gqa_qkv_projection_name
        weights: StateDict = {}
        keys_to_remove: list[str] = []

        def metadata_name(adapter_free_name: str) -> str | None:
            return find_metadata_name(parameters_metadata, adapter_free_name)

        for pn in param_names(self.bias):
            found, to_remove = self._qkv_shards(
                sharded_state_dicts, parameters_metadata, f"{fqn}.{gqa}.lora_B.{pn}", metadata_name
            )
            keys_to_remove += to_remove
            lora_a_meta = metadata_name(f"{fqn}.{gqa}.lora_A.{pn}")
            if lora_a_meta is not None:
                lora_a = rank_shards_of_metadata_name(sharded_state_dicts, lora_a_meta, self.tp_size)[0]
                originals = [f"{fqn}.{proj}.lora_A.{pn}" for proj in self._qkv_names()]
                weights.update(duplicate_lora_mean(lora_a, originals))
                keys_to_remove.append(lora_a_meta)
            weights.update(self._rebuild_qkv(found, fqn, f"lora_B.{pn}"))
            output_lora_a = f"{fqn}.{self.output_projection_name}.lora_A.{pn}"
            output_meta = metadata_name(output_lora_a)
            if output_meta is not None:
                weights[output_lora_a] = self._full_output(
                    sharded_state_dicts, parameters_metadata, output_lora_a, output_meta
                )
                keys_to_remove.append(output_meta)
        return weights, keys_to_remove
