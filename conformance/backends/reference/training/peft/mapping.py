"""`get_peft_model` for Neuron custom models (reference twin of `optimum.neuron.peft.mapping_func`)."""

from __future__ import annotations

from typing import Any

import peft
from torch import nn

from ..modeling_utils import NeuronModelMixin
from .peft_model import NeuronPeftModel, NeuronPeftModelForCausalLM

PEFT_MODEL_FOR_TASK: dict[str, type[NeuronPeftModel]] = {"CAUSAL_LM": NeuronPeftModelForCausalLM}
"""PEFT task type -> Neuron PEFT model class; other task types get `NeuronPeftModel`."""


def get_peft_model(
    model: nn.Module,
    peft_config: Any,
    adapter_name: str = "default",
    mixed: bool = False,
    autocast_adapter_dtype: bool = True,
    revision: str | None = None,
    low_cpu_mem_usage: bool = False,
) -> Any:
    """A Neuron PEFT model around a Neuron custom model; PEFT's `get_peft_model` for any other model.

    Only LoRA is supported on custom models, without mixed adapters or meta-device adapter weights.
    """
    if not isinstance(model, NeuronModelMixin):
        return peft.get_peft_model(
            model,
            peft_config,
            adapter_name=adapter_name,
            mixed=mixed,
            autocast_adapter_dtype=autocast_adapter_dtype,
            revision=revision,
            low_cpu_mem_usage=low_cpu_mem_usage,
        )
    if peft_config.peft_type != "LORA":
        raise ValueError(
            f"PEFT type {peft_config.peft_type} is not supported on Neuron custom models; supported: ['LORA']"
        )
    if mixed or low_cpu_mem_usage:
        raise NotImplementedError(
            "mixed adapters and low_cpu_mem_usage are not supported on Neuron custom models"
        )
    if revision is not None:
        peft_config.revision = revision
    peft_config.base_model_name_or_path = model.__dict__.get("name_or_path", None)
    cls = PEFT_MODEL_FOR_TASK.get(peft_config.task_type, NeuronPeftModel)
    return cls(model, peft_config, adapter_name=adapter_name, autocast_adapter_dtype=autocast_adapter_dtype)
