"""The model-level entry points: specialize the specs, adapt PEFT configs, load and consolidate weights."""

from __future__ import annotations

import copy
import logging
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..adapter_names import get_adapter_name, is_base_layer, remove_adapter_name
from .model_walk import adapter_free, all_specs, custom_modules, parameters_for_current_stage
from .peft_targets import expand_all_linear
from .sharding import create_local_weight_with_padding
from .spec_base import ModelWeightTransformationSpecs

if TYPE_CHECKING:
    from peft import PeftConfig

# The records keep the package's logger name, as when the specs lived in one module.
logger = logging.getLogger(__package__)


def specialize_transformation_specs_for_model(model: nn.Module) -> None:
    """Name every custom module's specs after its path in `model` and guess their PEFT type.

    Names are relative to the object passed in (`model.layers.0.mlp`, or
    `base_model.model.model.layers.0.mlp` for a PEFT model); call it again after wrapping.
    """
    for name, module in custom_modules(model):
        module.specs.module_fully_qualified_name = name
        for spec in module.specs:
            spec.peft_type = spec.guess_peft_type(model, name)


def _each_config(peft_config: PeftConfig | dict[str, PeftConfig]) -> list[PeftConfig]:
    return list(peft_config.values()) if isinstance(peft_config, dict) else [peft_config]


def adapt_peft_config_for_model(
    model: nn.Module, peft_config: PeftConfig | dict[str, PeftConfig], inplace: bool = False
) -> PeftConfig | dict[str, PeftConfig]:
    """The config(s) with target modules renamed for the custom model (one deep copy unless `inplace`).

    `target_modules="all-linear"` is first expanded to the custom model's linear layer names (ON-06).
    """
    adapted = peft_config if inplace else copy.deepcopy(peft_config)
    for config in _each_config(adapted):
        expand_all_linear(model, config)
    for spec in all_specs(model):
        for config in _each_config(adapted):
            spec.adapt_peft_config(config, inplace=True)
    return adapted


def to_original_peft_config_for_model(
    model: nn.Module, peft_config: PeftConfig | dict[str, PeftConfig], inplace: bool = False
) -> PeftConfig | dict[str, PeftConfig]:
    """The inverse of `adapt_peft_config_for_model`: target modules named as in the Transformers model."""
    restored = peft_config if inplace else copy.deepcopy(peft_config)
    for spec in all_specs(model):
        for config in _each_config(restored):
            spec.to_original_peft_config(config, inplace=True)
    return restored


def adapt_state_dict(
    model: nn.Module,
    state_dict: dict[str, torch.Tensor],
    upstanding_sharded_params: dict[str, torch.Tensor],
    inplace: bool = False,
    **peft_kwargs: Any,
) -> dict[str, torch.Tensor]:
    """This TP rank's custom state dict from one file of a Transformers (or PEFT adapter) checkpoint.

    The specs of every custom module convert their tensors; then every other tensor-parallel parameter is
    sharded along its `partition_dim` (with its stride), and non-parallel ones stay full. Keys of
    parameters outside the current stage and of PEFT base layers are dropped. With `adapter_name=...`,
    only that adapter's parameters are sharded.

    Call it once per checkpoint file with the same `upstanding_sharded_params` dict, then
    `check_no_upstanding_sharded_params(upstanding_sharded_params)` after the last one (ON-03).
    """
    stage = parameters_for_current_stage(model)
    named_parameters = {name: p for name, p in model.named_parameters() if name in stage}
    incoming = dict(state_dict)
    stage_without_adapter = adapter_free(stage)
    for _, module in custom_modules(model):
        state_dict = module.specs.adapt_state_dict(
            named_parameters,
            state_dict,
            upstanding_sharded_params=upstanding_sharded_params,
            parameters_for_current_stage=stage_without_adapter,
            inplace=inplace,
        )
    # A spec produced these entries (new keys, or a new tensor under an incoming key): already local.
    converted = {key for key, tensor in state_dict.items() if incoming.get(key) is not tensor}

    adapter_name = peft_kwargs.pop("adapter_name", None)
    for name, param in model.named_parameters():
        key = remove_adapter_name(name)
        if name not in stage or is_base_layer(key):
            state_dict.pop(key, None)
            continue
        if adapter_name is not None and adapter_name not in name:
            continue
        if key in converted or not getattr(param, "tensor_model_parallel", False):
            continue
        if param.partition_dim not in (0, 1):
            raise ValueError(f"{name}: partition_dim {param.partition_dim}; only 0 and 1 are supported")
        if key not in state_dict:
            continue
        try:
            state_dict[key] = create_local_weight_with_padding(
                state_dict.pop(key), param.partition_dim, param.partition_stride
            )
        except ValueError as error:
            raise ValueError(f"{key}: {error}") from error
    return state_dict


def to_original_weights(
    transformations_specs: list[ModelWeightTransformationSpecs],
    sharded_state_dicts: dict[str, list[torch.Tensor]],
    parameters_metadata: dict[str, dict[str, Any]],
    **peft_kwargs: Any,
) -> dict[str, torch.Tensor]:
    """One Transformers-named state dict from the per-rank tensors of a checkpoint (consolidation).

    `sharded_state_dicts` maps saved (adapter-free) names to per-TP-rank tensors in rank order and
    `parameters_metadata` is the metadata's "parameters" section. With `adapter_name=...`, only base-layer
    entries and that adapter's entries of the metadata are considered. Tensors no spec covers are
    concatenated along their `partition_dim` when tensor-parallel, else rank 0's copy is taken; their
    `partition_stride` is ignored, as in optimum-neuron (every strided parameter has a spec).
    """
    adapter_name = peft_kwargs.pop("adapter_name", None)
    if adapter_name is not None:
        parameters_metadata = {
            name: meta
            for name, meta in parameters_metadata.items()
            if is_base_layer(name) or get_adapter_name(name) == adapter_name
        }
    consolidated: dict[str, torch.Tensor] = {}
    to_remove: set[str] = set()
    for specs in transformations_specs:
        weights, keys = specs.to_original_weights(sharded_state_dicts, parameters_metadata)
        consolidated.update(weights)
        to_remove.update(keys)
    for name, meta in parameters_metadata.items():
        key = remove_adapter_name(name)
        if key in consolidated or name in to_remove or key not in sharded_state_dicts:
            continue
        shards = sharded_state_dicts[key]
        if meta["tensor_model_parallel"]:
            if meta.get("partition_stride", 1) != 1 and len(shards) > 1:
                logger.warning(
                    "%s has partition_stride %s but no transformation spec: concatenated as if stride 1, "
                    "as optimum-neuron does",
                    key,
                    meta["partition_stride"],
                )
            consolidated[key] = torch.cat(shards, dim=meta["partition_dim"])
        else:
            consolidated[key] = shards[0]
    return consolidated
