"""Registry of Neuron model classes by (model type, task, mode).

The real package keeps this table in `optimum/neuron/models/auto_model.py`, one level above the training
host, shared by inference and training. The reference backend has no inference side, so the table lives
here; `auto_models.register_neuron_model_for_training` and the auto classes of `modeling_auto` use it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, TypeVar

Mode = Literal["inference", "training"]
_ModelClass = TypeVar("_ModelClass", bound=type)

_REGISTERED_NEURON_MODELS: dict[tuple[str, str, str], type] = {}


def register_neuron_model(model_type: str, task: str, mode: Mode) -> Callable[[_ModelClass], _ModelClass]:
    """Decorator factory: `register_neuron_model("llama", "text-generation", "training")(LlamaForCausalLM)`.

    A later registration of the same key replaces the earlier one, as in the real table.
    """

    def wrapper(cls: _ModelClass) -> _ModelClass:
        _REGISTERED_NEURON_MODELS[(model_type, task, mode)] = cls
        return cls

    return wrapper


def has_neuron_model_class(model_type: str, task: str, mode: Mode) -> bool:
    """Whether a class is registered for this key."""
    return (model_type, task, mode) in _REGISTERED_NEURON_MODELS


def get_neuron_model_class(model_type: str, task: str, mode: Mode) -> type:
    """The class registered for this key; a ValueError with the real package's wording otherwise."""
    if not has_neuron_model_class(model_type, task, mode):
        supported = [mt for mt, tsk, md in _REGISTERED_NEURON_MODELS if tsk == task and md == mode]
        raise ValueError(
            f"Model type {model_type} is not supported for task {task} in neuron in {mode} mode. "
            f"Supported types are: {supported}."
        )
    return _REGISTERED_NEURON_MODELS[(model_type, task, mode)]
