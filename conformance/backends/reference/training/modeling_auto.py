"""Auto classes picking the registered training model for a config (`optimum.neuron.models.training.modeling_auto`)."""

from __future__ import annotations

import os
from typing import Any

from transformers import AutoConfig, PretrainedConfig

from .config import TrainingNeuronConfig
from .model_registry import get_neuron_model_class


class _BaseNeuronModelClass:
    """Looks the model class up by `(config.model_type, _task_name, "training")` and delegates to it."""

    _task_name: str

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        trn_config: TrainingNeuronConfig,
        *model_args: Any,
        **kwargs: Any,
    ):
        """`AutoConfig` of the folder -> registered class -> `cls.from_pretrained(path, trn_config, ...)`."""
        config = AutoConfig.from_pretrained(pretrained_model_name_or_path, **kwargs)
        model_class = get_neuron_model_class(config.model_type, cls._task_name, "training")
        return model_class.from_pretrained(pretrained_model_name_or_path, trn_config, *model_args, **kwargs)

    @classmethod
    def from_config(cls, config: PretrainedConfig, trn_config: TrainingNeuronConfig):
        """A randomly initialised model of the registered class: `model_class(config, trn_config)`."""
        model_class = get_neuron_model_class(config.model_type, cls._task_name, "training")
        return model_class(config, trn_config)


class NeuronModel(_BaseNeuronModelClass):
    """The base model (no head), task `"model"`."""

    _task_name = "model"


class NeuronModelForCausalLM(_BaseNeuronModelClass):
    """The causal-LM model, task `"text-generation"`."""

    _task_name = "text-generation"
