"""Registration of training models (`optimum.neuron.models.training.auto_models`).

The real module imports the shipped Llama, Granite and Qwen3 models and registers them. The reference host
ships no model: a model package registers its classes when it is imported (a generated model's
`__init__.py`, or the registry edits `scaffold new-model` makes in a checkout), so importing the host never
imports a model package.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from .model_registry import register_neuron_model

_ModelClass = TypeVar("_ModelClass", bound=type)


def register_neuron_model_for_training(model_type: str, task: str) -> Callable[[_ModelClass], _ModelClass]:
    """Decorator factory registering a training model class for `(model_type, task)`.

    Tasks used by the auto classes: `"model"` (`NeuronModel`) and `"text-generation"`
    (`NeuronModelForCausalLM`).
    """
    return register_neuron_model(model_type, task, "training")
