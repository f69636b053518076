"""Weight transformation specs: Transformers weights to a custom Neuron model's sharded weights, and back.

Reference twin of `optimum.neuron.models.training.transformations_utils` (training semantics §2), with the
same names, signatures, parameter names, sharding layouts and metadata JSON. A module whose parameters do
not map one-to-one onto the Transformers ones (a fused `gate_up_proj`, NxD's GQA `qkv_proj`) mixes in
`CustomModule` and lists `ModelWeightTransformationSpec`s; loading (`adapt_state_dict`) turns a full
Transformers state dict into this TP rank's custom one, and consolidation (`to_original_weights`) turns the
per-rank custom tensors back into Transformers tensors. Parameters no spec covers are sharded along their
`partition_dim` on load and concatenated on consolidation.

LoRA adapters follow optimum-neuron's documented lossy rule: the lora_A of a fusion is the mean of the
original lora_A tensors, and consolidation duplicates that mean back to every original linear.

Deliberate differences from the released code (ids in `conformance.backends.reference.deviations`):
ON-01 (row fusions handle LoRA), ON-02 (fused GQA lora_B is loaded under `lora_B.weight_qkv`), ON-03
(incomplete groups wait across checkpoint files, any number at a time; call
`check_no_upstanding_sharded_params` after the last file), ON-05 (uneven shards are errors) and ON-06
(`target_modules="all-linear"` is expanded to module names). Beyond those, GQA biases are supported
(q/k/v biases follow their weight rows, the replicated o_proj bias is left alone), where the released
spec fails on any bias.

PP=1 only: `model.parameters_for_current_stage` is read when the model has it, otherwise every name of
`model.state_dict()` is taken, which is what optimum-neuron returns without pipeline parallelism.

One module per job: `sharding` (a rank's shard of full tensors), `pending_groups` (groups split across
checkpoint files), `saved_shards` (per-rank tensors and metadata names on consolidation), `lora_mean_rule`,
`spec_base` (the spec contract, its container, `CustomModule`), `peft_targets` (LoRA target module names,
and `FusedModulesSpec`, the PEFT side shared by the two specs), `fused_linears` and `gqa_qkv` (the two
specs), `model_walk`, `whole_model` (the model-level entry points) and `parameter_metadata`. This package
re-exports the public names at the path optimum-neuron uses.
"""

from __future__ import annotations

from ..adapter_names import LORA_PATTERN, get_adapter_name, is_base_layer, remove_adapter_name
from .fused_linears import FusedLinearsSpec
from .gqa_qkv import GQAQKVColumnParallelLinearSpec
from .parameter_metadata import create_parameter_metadata, get_tensor_model_parallel_attributes
from .pending_groups import check_no_upstanding_sharded_params
from .sharding import create_local_fused_weight, create_local_weight_with_padding
from .spec_base import CustomModule, ModelWeightTransformationSpec, ModelWeightTransformationSpecs
from .whole_model import (
    adapt_peft_config_for_model,
    adapt_state_dict,
    specialize_transformation_specs_for_model,
    to_original_peft_config_for_model,
    to_original_weights,
)

__all__ = [
    "LORA_PATTERN",
    "CustomModule",
    "FusedLinearsSpec",
    "GQAQKVColumnParallelLinearSpec",
    "ModelWeightTransformationSpec",
    "ModelWeightTransformationSpecs",
    "adapt_peft_config_for_model",
    "adapt_state_dict",
    "check_no_upstanding_sharded_params",
    "create_local_fused_weight",
    "create_local_weight_with_padding",
    "create_parameter_metadata",
    "get_adapter_name",
    "get_tensor_model_parallel_attributes",
    "is_base_layer",
    "remove_adapter_name",
    "specialize_transformation_specs_for_model",
    "to_original_peft_config_for_model",
    "to_original_weights",
]
