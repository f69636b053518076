"""Reference twin of `optimum.neuron.models.training`: the training host that Neuron training models use.

Generated models import its modules relatively (`from ..config import TrainingNeuronConfig`, ...). The
package exports the same names as the real one, resolved lazily so that importing it stays cheap and
never imports a model package; models register themselves (`auto_models.register_neuron_model_for_training`)
when their own package is imported. Unlike the real package it does not patch
`transformers.utils.logging.set_verbosity`.

Its modules import NxD by the public name `neuronx_distributed`, exactly as the real host does, so importing
this package activates the reference backend (which provides that name) in the process.
"""

from __future__ import annotations

import importlib
from typing import Any

from ... import activate

activate("reference")

_EXPORTS = {
    "consolidate_model_parallel_checkpoints_to_unified_checkpoint": "checkpointing",
    "TrainingNeuronConfig": "config",
    "NeuronModel": "modeling_auto",
    "NeuronModelForCausalLM": "modeling_auto",
    "ALL_ATTENTION_FUNCTIONS": "modeling_utils",
    "NeuronModelMixin": "modeling_utils",
    "get_pipeline_parameters_for_current_stage": "pipeline_utils",
    "CustomModule": "transformations_utils",
    "FusedLinearsSpec": "transformations_utils",
    "GQAQKVColumnParallelLinearSpec": "transformations_utils",
    "ModelWeightTransformationSpec": "transformations_utils",
    "ModelWeightTransformationSpecs": "transformations_utils",
    "adapt_peft_config_for_model": "transformations_utils",
    "adapt_state_dict": "transformations_utils",
    "create_parameter_metadata": "transformations_utils",
    "specialize_transformation_specs_for_model": "transformations_utils",
    "to_original_peft_config_for_model": "transformations_utils",
    "to_original_weights": "transformations_utils",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
