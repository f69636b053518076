"""The parameter metadata saved next to the shards, which consolidation reads back."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .model_walk import adapter_free, custom_modules, parameters_for_current_stage


def get_tensor_model_parallel_attributes(tensor: torch.Tensor) -> dict[str, Any]:
    """The four tensor-parallel attributes checkpoints record, or {} for an untagged tensor."""
    if not hasattr(tensor, "tensor_model_parallel"):
        return {}
    return {
        "tensor_model_parallel": tensor.tensor_model_parallel,
        "partition_dim": tensor.partition_dim,
        "partition_stride": tensor.partition_stride,
        "num_partitions": tensor.num_partitions,
    }


def create_parameter_metadata(model: nn.Module) -> dict[str, Any]:
    """The metadata saved next to the shards (`mp_metadata_pp_rank_{p}.json`), which consolidation needs.

    `{"parameters": {in-memory name: tensor-parallel attributes or {"tensor_model_parallel": False}},
    "model_weight_transformation_specs": [specs.to_metadata(...) for every custom module]}`; call
    `specialize_transformation_specs_for_model(model)` first so the specs are named.

    A parameter tagged `expert_model_parallel` (NxD's expert weights with EP > 1) also gets
    `"expert_model_parallel": true`, which consolidation needs to tell the experts apart from the copies
    every EP rank saves of the other parameters (deviation ON-17: optimum-neuron 0.4.5 records no such key).
    """
    stage = parameters_for_current_stage(model)
    parameters: dict[str, dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if name not in stage:
            continue
        if getattr(param, "tensor_model_parallel", False):
            parameters[name] = get_tensor_model_parallel_attributes(param)
        else:
            parameters[name] = {"tensor_model_parallel": False}
        if getattr(param, "expert_model_parallel", False):
            parameters[name]["expert_model_parallel"] = True
    stage_without_adapter = adapter_free(stage)
    specs = [
        module.specs.to_metadata(parameters_for_current_stage=stage_without_adapter)
        for _, module in custom_modules(model)
    ]
    return {"parameters": parameters, "model_weight_transformation_specs": specs}
