"""`FusedLinearsSpec`: several Transformers linears held as one fused (column or row) parallel linear."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from neuronx_distributed.parallel_layers.parallel_state import (
    get_tensor_model_parallel_rank,
    get_tensor_model_parallel_size,
)
from torch import nn

from .lora_mean_rule import average_lora_parts, duplicate_lora_mean
from .peft_targets import FusedModulesSpec
from .pending_groups import take_group
from .saved_shards import find_metadata_name, rank_shards, rank_shards_of_metadata_name
from .sharding import create_local_fused_weight
from .spec_base import (
    ParametersMetadata,
    ShardedStateDicts,
    StateDict,
    base_and_lora_names,
    param_names,
)


@dataclass
class FusedLinearsSpec(FusedModulesSpec):
    """Several linears fused into one along `fuse_axis` ("column"/0: outputs stacked; "row"/1: inputs).

    `original_dims` are the sizes of the linears along the fuse axis. Each rank holds
    `cat_i(shard_r(W_i))`, so the fused local output splits back into the per-linear local outputs.
    """

    fused_linear_name: str
    linear_names: list[str]
    bias: bool
    fuse_axis: Literal[0, 1, "column", "row"]
    original_dims: list[int]
    tp_size: int = field(default_factory=get_tensor_model_parallel_size)

    def __post_init__(self) -> None:
        if self.fuse_axis == "column":
            self.fuse_axis = 0
        elif self.fuse_axis == "row":
            self.fuse_axis = 1
        if self.fuse_axis not in (0, 1):
            raise ValueError(f"fuse_axis must be 0, 1, 'column' or 'row', not {self.fuse_axis!r}")
        if len(self.original_dims) != len(self.linear_names):
            raise ValueError(
                f"{len(self.linear_names)} linear names but {len(self.original_dims)} original dims"
            )

    def _local_sizes(self) -> list[int]:
        for name, dim in zip(self.linear_names, self.original_dims):
            if dim % self.tp_size:
                raise ValueError(
                    f"{name}: size {dim} does not split into {self.tp_size} equal shards (ON-05)"
                )
        return [dim // self.tp_size for dim in self.original_dims]

    def get_relevant_parameter_names(self, module_fully_qualified_name: str) -> set[str]:
        modules = [self.fused_linear_name, *self.linear_names]
        names: set[str] = set()
        for pn in param_names(self.bias):
            names |= base_and_lora_names(module_fully_qualified_name, modules, pn)
        return names

    def _fused_module_name(self) -> str:
        return self.fused_linear_name

    def _original_module_names(self) -> list[str]:
        return list(self.linear_names)

    def _partition_dim(self, named_parameters: dict[str, nn.Parameter], name: str) -> int:
        """The fused parameter's partition dim; the fuse axis (what column/row layers use) if it is absent."""
        return getattr(named_parameters.get(name), "partition_dim", self.fuse_axis)

    def _check_row_bias(self, pn: str) -> None:
        if pn == "bias" and self.fuse_axis == 1:
            raise NotImplementedError(
                f"{self.fused_linear_name}: a row fusion adds the outputs of {self.linear_names}, so one "
                "bias cannot hold their separate biases"
            )

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
        tp_size, tp_rank = get_tensor_model_parallel_size(), get_tensor_model_parallel_rank()
        for pn in param_names(self.bias):
            names = [f"{fqn}.{linear}.{pn}" for linear in self.linear_names]
            weights = take_group(state_dict, upstanding_sharded_params, names)
            if weights is None:
                continue
            self._check_row_bias(pn)
            fused_name = f"{fqn}.{self.fused_linear_name}.{pn}"
            partition_dim = self._partition_dim(named_parameters, fused_name)
            state_dict[fused_name] = create_local_fused_weight(
                tp_rank, tp_size, weights, partition_dim, self.fuse_axis
            )
        return state_dict

    def _lora_sides(self) -> tuple[str, str]:
        """(sharded side, averaged side): column fusions shard lora_B, row fusions lora_A (ON-01)."""
        return ("lora_B", "lora_A") if self.fuse_axis == 0 else ("lora_A", "lora_B")

    def _lora_adapt_state_dict(
        self,
        module_fully_qualified_name: str,
        named_parameters: dict[str, nn.Parameter],
        orig_state_dict: StateDict,
        upstanding_sharded_params: StateDict,
        inplace: bool = False,
    ) -> StateDict:
        """Column fusion: lora_A = mean of the lora_A (replicated), lora_B fused and sharded like the base.

        Row fusion (deviation ON-01, the mirror image): lora_A is fused along the inputs and sharded like
        the base weight (it is a row-parallel layer), lora_B = mean of the lora_B (replicated).
        """
        fqn = module_fully_qualified_name
        state_dict = orig_state_dict if inplace else dict(orig_state_dict)
        tp_size, tp_rank = get_tensor_model_parallel_size(), get_tensor_model_parallel_rank()
        fused = f"{fqn}.{self.fused_linear_name}"
        sharded_side, averaged_side = self._lora_sides()
        for pn in param_names(self.bias):
            parts = {
                side: take_group(
                    state_dict,
                    upstanding_sharded_params,
                    [f"{fqn}.{lin}.{side}.{pn}" for lin in self.linear_names],
                )
                for side in ("lora_A", "lora_B")
            }
            if parts[averaged_side] is not None:
                state_dict[f"{fused}.{averaged_side}.{pn}"] = average_lora_parts(parts[averaged_side])
            if parts[sharded_side] is not None:
                state_dict[f"{fused}.{sharded_side}.{pn}"] = create_local_fused_weight(
                    tp_rank, tp_size, parts[sharded_side], self.fuse_axis, self.fuse_axis
                )
        return state_dict

    def _unfuse(
        self,
        module_fully_qualified_name: str,
        shards: list[torch.Tensor],
        partition_dim: int,
        suffix: str,
    ) -> StateDict:
        """Per-linear full tensors, as `{fqn}.{linear}.{suffix}`.

        Each rank's tensor is split along the fuse axis; each linear's pieces are concatenated over ranks.
        """
        per_rank = [torch.split(shard, self._local_sizes(), dim=self.fuse_axis) for shard in shards]
        return {
            f"{module_fully_qualified_name}.{linear}.{suffix}": torch.cat(
                [pieces[index] for pieces in per_rank], dim=partition_dim
            )
            for index, linear in enumerate(self.linear_names)
        }

    def _to_original_weights(
        self,
        module_fully_qualified_name: str,
        sharded_state_dicts: ShardedStateDicts,
        parameters_metadata: ParametersMetadata,
    ) -> tuple[StateDict, list[str]]:
        fqn = module_fully_qualified_name
        weights: StateDict = {}
        keys_to_remove: list[str] = []
        for pn in param_names(self.bias):
            fused_name = f"{fqn}.{self.fused_linear_name}.{pn}"
            shards = rank_shards(sharded_state_dicts, fused_name, self.tp_size)
            partition_dim = parameters_metadata[fused_name].get("partition_dim", self.fuse_axis)
            weights.update(self._unfuse(fqn, shards, partition_dim, pn))
            keys_to_remove.append(fused_name)
        return weights, keys_to_remove

    def _lora_to_original_weights(
        self,
        module_fully_qualified_name: str,
        sharded_state_dicts: ShardedStateDicts,
        parameters_metadata: ParametersMetadata,
    ) -> tuple[StateDict, list[str]]:
        """The sharded side is unfused exactly; the averaged side (rank 0's copy) goes to every linear.

        Column fusions shard lora_B and average lora_A; row fusions the reverse (deviation ON-01).
        """
        fqn = module_fully_qualified_name
        fused = f"{fqn}.{self.fused_linear_name}"
        weights: StateDict = {}
        keys_to_remove: list[str] = []
        sharded_side, averaged_side = self._lora_sides()
        for pn in param_names(self.bias):
            sharded_meta = find_metadata_name(parameters_metadata, f"{fused}.{sharded_side}.{pn}")
            averaged_meta = find_metadata_name(parameters_metadata, f"{fused}.{averaged_side}.{pn}")
            if sharded_meta is None or averaged_meta is None:
                raise ValueError(f"Could not find LoRA weights for {fqn} with param name {pn}.")
            shards = rank_shards_of_metadata_name(sharded_state_dicts, sharded_meta, self.tp_size)
            partition_dim = parameters_metadata[sharded_meta].get("partition_dim", self.fuse_axis)
            weights.update(self._unfuse(fqn, shards, partition_dim, f"{sharded_side}.{pn}"))
            averaged = rank_shards_of_metadata_name(sharded_state_dicts, averaged_meta, self.tp_size)[0]
            averaged_names = [f"{fqn}.{linear}.{averaged_side}.{pn}" for linear in self.linear_names]
            weights.update(duplicate_lora_mean(averaged, averaged_names))
            keys_to_remove += [sharded_meta, averaged_meta]
        return weights, keys_to_remove
