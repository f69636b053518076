"""Reference twin of `optimum.neuron.peft`: LoRA adapters on Neuron custom training models.

- `get_peft_model(model, LoraConfig(...))` wraps a custom model's NxD parallel linears with the LoRA
  layers of `lora_layers` (target modules renamed for fused layers by the model's transformation specs).
- `NeuronPeftModel.load_adapter` / `from_pretrained` load a transformers-format PEFT adapter through the
  specs (the lora_A of a fused group is the mean of the originals, training semantics §2.5(c)).
- `NeuronPeftModel.save_pretrained` writes each adapter's per-rank shards and the consolidation metadata
  (`<dir>/adapter_<name>/adapter_shards/...`, `adapter_config.json`); the host's
  `consolidate_model_parallel_checkpoints_to_unified_checkpoint` turns them into PEFT's files.
"""

from __future__ import annotations

from .lora_layers import NEURON_LORA_MODULES, GQAQKVColumnParallelLinear, ParallelLinear
from .lora_model import NeuronLoraModel
from .mapping import get_peft_model
from .peft_model import ADAPTER_MODEL_PARALLEL_SHARDS_DIR_NAME, NeuronPeftModel, NeuronPeftModelForCausalLM

__all__ = [
    "ADAPTER_MODEL_PARALLEL_SHARDS_DIR_NAME",
    "NEURON_LORA_MODULES",
    "GQAQKVColumnParallelLinear",
    "NeuronLoraModel",
    "NeuronPeftModel",
    "NeuronPeftModelForCausalLM",
    "ParallelLinear",
    "get_peft_model",
]
