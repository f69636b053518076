"""The LoRA tuner for Neuron custom models (reference twin of `optimum.neuron.peft.tuners.lora.model`).

PEFT's own `LoraModel`, with the LoRA layers of `lora_layers` registered as PEFT custom modules, so that
PEFT wraps NxD's parallel linears with them (and plain `nn.Linear` layers with its own `lora.Linear`).
"""

from __future__ import annotations

from typing import Any

from peft.tuners.lora import LoraModel

from .lora_layers import NEURON_LORA_MODULES


class NeuronLoraModel(LoraModel):
    """`LoraModel` that knows NxD's `ColumnParallelLinear`, `RowParallelLinear` and GQA QKV layer."""

    def __init__(self, model: Any, config: Any, adapter_name: str, low_cpu_mem_usage: bool = False) -> None:
        config[adapter_name]._register_custom_module(NEURON_LORA_MODULES)
        super().__init__(model, config, adapter_name, low_cpu_mem_usage=low_cpu_mem_usage)

    @staticmethod
    def _create_new_module(lora_config: Any, adapter_name: str, target: Any, **kwargs: Any) -> Any:
        # Adapters added later (`add_adapter`, `load_adapter`) bring their own config: register again.
        lora_config._register_custom_module(NEURON_LORA_MODULES)
        return LoraModel._create_new_module(lora_config, adapter_name, target, **kwargs)
