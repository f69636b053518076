"""Checking `from_pretrained`'s arguments before anything is read.

The transformers arguments optimum-neuron refuses raise the error optimum-neuron raises
(NotImplementedError, ValueError or RuntimeError), so a caller sees the same failure on both backends;
ignored ones are dropped, with a log line where the caller may expect an effect. Deprecated aliases
(`torch_dtype`, `use_auth_token`) are folded into their current names.
"""

from __future__ import annotations

import inspect
import logging
import os
from typing import Any

from .config import TrainingNeuronConfig

logger = logging.getLogger(__name__)


def reject_unsupported_arguments(cls_name: str, kwargs: dict[str, Any]) -> None:
    """Pop every argument optimum-neuron refuses and raise its error; pop the ones it ignores."""
    if kwargs.pop("state_dict", None) is not None:
        raise NotImplementedError(
            "Providing a `state_dict` to `from_pretrained` is not supported in optimum-neuron."
        )
    if kwargs.pop("from_tf", False) or kwargs.pop("from_flax", False):
        raise NotImplementedError(
            "Loading from TensorFlow or Flax is not supported in optimum-neuron. Please use PyTorch weights."
        )
    if kwargs.pop("low_cpu_mem_usage", None) is not None:
        raise NotImplementedError("`low_cpu_mem_usage` is not supported in optimum-neuron.")
    if kwargs.pop("use_flash_attention_2", False):
        raise ValueError(
            '`use_flash_attention_2` is deprecated, use `attn_implementation="flash_attention_2"` instead.'
        )
    if kwargs.get("device_map") not in (None, "xla", "cpu"):
        raise RuntimeError('The only device map values supported are: `None`, "cpu" or "xla".')
    if kwargs.pop("offload_folder", None) is not None or kwargs.pop("offload_state_dict", False):
        raise NotImplementedError(
            "`offload_folder` and `offload_state_dict` are not supported in optimum-neuron."
        )
    quantized = kwargs.pop("load_in_8bit", False) | kwargs.pop("load_in_4bit", False)
    if quantized or kwargs.pop("quantization_config", None) is not None:
        raise NotImplementedError("Quantization is not supported in optimum-neuron.")
    if kwargs.pop("gguf_file", None) is not None:
        raise NotImplementedError("GGUF files are not supported in optimum-neuron.")
    if kwargs.pop("adapter_name", None) is not None or kwargs.pop("adapter_kwargs", None) is not None:
        raise NotImplementedError(
            f"Loading adapters directly from {cls_name}.from_pretrained is not supported. "
            "Please use the NeuronPeftModelForXXX classes to load adapters."
        )
    if kwargs.pop("tp_plan", None) is not None:
        logger.info("optimum-neuron handles tensor parallelism on its own. `tp_plan` is ignored.")
    if kwargs.pop("trust_remote_code", None):
        logger.warning(
            "`trust_remote_code` is to be used with Auto classes. It has no effect here and is ignored."
        )
    for ignored in (
        "resume_download",
        "proxies",
        "mirror",
        "_from_pipeline",
        "_from_auto",
        "_fast_init",
        "max_memory",
        "generation_config",
        "_commit_hash",
    ):
        kwargs.pop(ignored, None)


def check_required_arguments(
    name_or_path: str | os.PathLike | None, trn_config: TrainingNeuronConfig | None
) -> None:
    """A checkpoint path and a `trn_config` with pipeline parallelism 1 (all the reference backend loads)."""
    if trn_config is None:
        raise ValueError("`trn_config` is required to load a model in optimum-neuron.")
    if trn_config.pipeline_parallel_size > 1:
        raise NotImplementedError(
            "The reference backend loads models with pipeline_parallel_size=1 only (got "
            f"{trn_config.pipeline_parallel_size}); pipeline parallelism runs on the neuron backend."
        )
    if name_or_path is None:
        raise ValueError(
            "`pretrained_model_name_or_path` is required: the folder of a transformers checkpoint."
        )


def pop_dtype(kwargs: dict[str, Any]) -> Any:
    """`dtype`, else its deprecated alias `torch_dtype` (both are popped)."""
    dtype = kwargs.pop("dtype", None)
    torch_dtype = kwargs.pop("torch_dtype", None)
    return torch_dtype if dtype is None else dtype


def pop_token(kwargs: dict[str, Any], token: str | bool | None) -> str | bool | None:
    """`token`, else its deprecated alias `use_auth_token` (popped); giving both is an error."""
    use_auth_token = kwargs.pop("use_auth_token", None)
    if use_auth_token is None:
        return token
    if token is not None:
        raise ValueError(
            "`token` and `use_auth_token` are both specified. Please set only the argument `token`."
        )
    return use_auth_token


def check_constructor_kwargs(cls: type, model_kwargs: dict[str, Any]) -> None:
    """Leftover keyword arguments go to the constructor; refuse them clearly if it takes none."""
    if not model_kwargs:
        return
    parameters = inspect.signature(cls.__init__).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return
    accepted = {p.name for p in parameters}
    unknown = sorted(set(model_kwargs) - accepted)
    if unknown:
        raise TypeError(
            f"{cls.__name__}.from_pretrained got unexpected keyword arguments {unknown}: they are neither "
            f"attributes of the model config nor arguments of {cls.__name__}.__init__."
        )
