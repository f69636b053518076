"""The weight spec of norm parameters laid out by attention head, next to NxD's GQA layer.

A q/k norm whose parameters run over the heads of its projection (olmo2's full-width `q_norm` weight of
`num_heads * head_dim` values, cohere's `(num_heads, head_dim)` rows) is sharded with those heads
(`tensor_parallel_norms`). With separate or fused projections a rank's heads are a contiguous block, which
the host's generic sharding along dim 0 gets right. Under NxD's GQA layer they are not:

- the rank's query heads are the ones `GQAQKVColumnParallelLinearSpec` gives it (the query heads of the K/V
  heads it holds), a permutation of the checkpoint's heads;
- the K/V heads are tiled `kv_size_multiplier` times before the split (trn1's layout), so each K head's
  parameters live on several ranks.

`HeadRowsSpec` maps such parameters on load (`adapt_state_dict`) and back on consolidation
(`to_original_weights`, the first tile of a K tensor), bit for bit, under optimum-neuron's released host
code. `HeadModulesSpec` does the same for a list of one norm per head (stablelm's `norms.<head>`), whose
entries the rank renumbers, with any projection variant. Neither takes a LoRA adapter: norms are not LoRA
targets, so adapter checkpoints pass by untouched.

optimum-neuron's `ModelWeightTransformationSpecs.from_metadata` looks spec classes up by name in its
`transformations_utils` module, so importing this module registers the class there; import the model
package before consolidating its checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from neuronx_distributed.parallel_layers.parallel_state import (
    get_tensor_model_parallel_rank,
    get_tensor_model_parallel_size,
)

from .. import transformations_utils
from ..transformations_utils import GQAQKVColumnParallelLinearSpec, ModelWeightTransformationSpec

QUERY = "query"
KEY = "key"
StateDict = dict[str, torch.Tensor]


class HeadLayoutSpec(ModelWeightTransformationSpec):
    """What the per-head norm specs share: a `projection` (query or key) whose head count sizes them, and no
    LoRA adapter (norms are not LoRA targets, so adapter checkpoints pass by untouched). Subclasses are
    dataclasses with the fields `projection`, `num_attention_heads` and `num_key_value_heads`."""

    projection: str
    num_attention_heads: int
    num_key_value_heads: int

    def __post_init__(self) -> None:
        if self.projection not in (QUERY, KEY):
            raise ValueError(f"projection must be {QUERY!r} or {KEY!r}, not {self.projection!r}")

    @property
    def heads(self) -> int:
        return self.num_attention_heads if self.projection == QUERY else self.num_key_value_heads

    def guess_peft_type(self, model: torch.nn.Module, module_fully_qualified_name: str) -> str | None:
        return None

    def adapt_peft_config(self, peft_config: Any, inplace: bool = False) -> Any:
        return peft_config

    def to_original_peft_config(self, peft_config: Any, inplace: bool = False) -> Any:
        return peft_config

    def _lora_adapt_state_dict(
        self,
        module_fully_qualified_name: str,
        named_parameters: dict[str, torch.nn.Parameter],
        orig_state_dict: StateDict,
        upstanding_sharded_params: StateDict,
        inplace: bool = False,
    ) -> StateDict:
        return orig_state_dict if inplace else dict(orig_state_dict)

    def _lora_to_original_weights(
        self,
        module_fully_qualified_name: str,
        sharded_state_dicts: dict[str, list[torch.Tensor]],
        parameters_metadata: dict[str, dict[str, Any]],
    ) -> tuple[StateDict, list[str]]:
        return {}, []


@dataclass
class HeadRowsSpec(HeadLayoutSpec):
    """Parameters (names relative to the attention module) whose first dimension runs over the heads of
    the query (`projection="query"`) or key projection (`"key"`) of NxD's GQA layer."""

    parameter_names: list[str]
    projection: str
    num_attention_heads: int
    num_key_value_heads: int
    kv_size_multiplier: int

    def _query_indices(self, tp_size: int, tp_rank: int) -> torch.Tensor:
        return GQAQKVColumnParallelLinearSpec.compute_query_indices_for_rank(
            tp_size, tp_rank, self.num_attention_heads, self.num_key_value_heads, self.kv_size_multiplier
        )

    def local(self, full: torch.Tensor, tp_size: int, tp_rank: int) -> torch.Tensor:
        """The rank's part of a checkpoint tensor."""
        rows = full.reshape(self.heads, -1)
        if self.projection == QUERY:
            rows = rows[self._query_indices(tp_size, tp_rank)]
        else:
            rows = rows.repeat(self.kv_size_multiplier, 1).chunk(tp_size)[tp_rank]
        return rows.reshape(-1, *full.shape[1:]).contiguous()

    def original(self, shards: list[torch.Tensor]) -> torch.Tensor:
        """The checkpoint tensor from the ranks' parts (rank order)."""
        tp_size = len(shards)
        tiles = 1 if self.projection == QUERY else self.kv_size_multiplier
        rows = torch.cat(shards, dim=0).reshape(self.heads * tiles, -1)
        if self.projection == QUERY:
            order = torch.cat([self._query_indices(tp_size, rank) for rank in range(tp_size)])
            rows = rows[torch.argsort(order)]
        else:
            rows = rows[: self.heads]
        return rows.reshape(-1, *shards[0].shape[1:]).contiguous()

    def get_relevant_parameter_names(self, module_fully_qualified_name: str) -> set[str]:
        return {f"{module_fully_qualified_name}.{name}" for name in self.parameter_names}

    def _adapt_state_dict(
        self,
        module_fully_qualified_name: str,
        named_parameters: dict[str, torch.nn.Parameter],
        orig_state_dict: StateDict,
        upstanding_sharded_params: StateDict,
        inplace: bool = False,
    ) -> StateDict:
        state_dict = orig_state_dict if inplace else dict(orig_state_dict)
        tp_size, tp_rank = get_tensor_model_parallel_size(), get_tensor_model_parallel_rank()
        for name in self.get_relevant_parameter_names(module_fully_qualified_name):
            if name in state_dict:
                state_dict[name] = self.local(state_dict.pop(name), tp_size, tp_rank)
        return state_dict

    def _to_original_weights(
        self,
        module_fully_qualified_name: str,
        sharded_state_dicts: dict[str, list[torch.Tensor]],
        parameters_metadata: dict[str, dict[str, Any]],
    ) -> tuple[StateDict, list[str]]:
        weights: StateDict = {}
        for name in sorted(self.get_relevant_parameter_names(module_fully_qualified_name)):
            if name not in parameters_metadata or name not in sharded_state_dicts:
                continue
            count = parameters_metadata[name]["num_partitions"]
            weights[name] = self.original(sharded_state_dicts[name][:count])
        return weights, []


@dataclass
class HeadModulesSpec(HeadLayoutSpec):
    """A list of one module per head of the query or key projection (`module_list`, e.g.
    `"q_layernorm.norms"`, relative to the attention module; `parameter_names` inside one entry): the rank
    keeps its heads' entries, in its own order, so checkpoint entry `<head>` is the rank's entry `<index>`.
    `gqa` says whether the attention runs on NxD's GQA layer (its head layout) or on contiguous heads."""

    module_list: str
    parameter_names: list[str]
    projection: str
    num_attention_heads: int
    num_key_value_heads: int
    kv_size_multiplier: int
    gqa: bool

    def rank_heads(self, tp_size: int, tp_rank: int) -> list[int]:
        """The checkpoint heads of the rank's entries, in order."""
        if self.gqa and self.projection == QUERY:
            return GQAQKVColumnParallelLinearSpec.compute_query_indices_for_rank(
                tp_size, tp_rank, self.num_attention_heads, self.num_key_value_heads, self.kv_size_multiplier
            ).tolist()
        tiles = self.kv_size_multiplier if self.gqa else 1
        return torch.arange(self.heads).repeat(tiles).chunk(tp_size)[tp_rank].tolist()

    def _name(self, fqn: str, entry: int, parameter: str) -> str:
        return f"{fqn}.{self.module_list}.{entry}.{parameter}"

    def get_relevant_parameter_names(self, module_fully_qualified_name: str) -> set[str]:
        # the rank's entries are numbered below `heads` too
        return {
            self._name(module_fully_qualified_name, head, parameter)
            for head in range(self.heads)
            for parameter in self.parameter_names
        }

    def _adapt_state_dict(
        self,
        module_fully_qualified_name: str,
        named_parameters: dict[str, torch.nn.Parameter],
        orig_state_dict: StateDict,
        upstanding_sharded_params: StateDict,
        inplace: bool = False,
    ) -> StateDict:
        state_dict = orig_state_dict if inplace else dict(orig_state_dict)
        fqn = module_fully_qualified_name
        full = {
            (head, parameter): state_dict.pop(self._name(fqn, head, parameter))
            for head in range(self.heads)
            for parameter in self.parameter_names
            if self._name(fqn, head, parameter) in state_dict
        }
        heads = self.rank_heads(get_tensor_model_parallel_size(), get_tensor_model_parallel_rank())
        for entry, head in enumerate(heads):
            for parameter in self.parameter_names:
                if (head, parameter) in full:
                    # a copy: the host tells the tensors a spec produced by their storage
                    state_dict[self._name(fqn, entry, parameter)] = full[head, parameter].clone()
        return state_dict

    def _to_original_weights(
        self,
        module_fully_qualified_name: str,
        sharded_state_dicts: dict[str, list[torch.Tensor]],
        parameters_metadata: dict[str, dict[str, Any]],
    ) -> tuple[StateDict, list[str]]:
        fqn = module_fully_qualified_name
        first = self._name(fqn, 0, self.parameter_names[0])
        if first not in parameters_metadata or first not in sharded_state_dicts:
            return {}, []
        tp_size = parameters_metadata[first]["num_partitions"]
        weights: StateDict = {}
        for rank in range(tp_size):
            for entry, head in enumerate(self.rank_heads(tp_size, rank)):
                for parameter in self.parameter_names:
                    name = self._name(fqn, head, parameter)
                    if name not in weights:  # a replicated head: its first copy
                        weights[name] = sharded_state_dicts[self._name(fqn, entry, parameter)][rank]
        return weights, []


for _spec_class in (HeadRowsSpec, HeadModulesSpec):
    # The first copy registered stays: every generated package inserts this same module.
    if not hasattr(transformations_utils, _spec_class.__name__):
        setattr(transformations_utils, _spec_class.__name__, _spec_class)
