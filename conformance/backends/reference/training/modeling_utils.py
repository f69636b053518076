"""`NeuronModelMixin`: loading a transformers checkpoint into a tensor-parallel training model, and saving it
as NxD model-parallel shards (`optimum.neuron.models.training.modeling_utils`; training semantics §3).

`from_pretrained` builds the model without initialising its weights, then streams each checkpoint file
through the model's weight-transformation specs (`adapt_state_dict`) into this rank's shards.
`save_pretrained` writes NxD's checkpoint layout plus the metadata that `checkpointing` needs to rebuild the
transformers state dict:

    <dir>/config.json, <dir>/trn_config.json (and generation_config.json if the model can generate)
    <dir>/shards/checkpoint, <dir>/shards/done                      marker files, content "1"
    <dir>/shards/mp_metadata_pp_rank_{p}.json                       create_parameter_metadata(model)
    <dir>/shards/model/dp_rank_00_tp_rank_{TT:02d}_pp_rank_{PP:02d}.pt   torch.save(rank state_dict)

Scope of the reference backend: local folders (or what `huggingface_hub.snapshot_download` resolves),
pipeline parallelism 1, and the plain (non-xser) shard format: `use_xser=True` writes the same plain
files, with a warning once, since torch-xla's serializer does not exist here; consolidation reads both.
`async_save` saves synchronously.

Differences from optimum-neuron that change no weight: missing and unexpected keys are reported under the
model's own parameter names (the real loader compares the checkpoint with a meta-device transformers
model); a module the checkpoint does not cover is initialised after the files are loaded rather than
before (loaded parameters are kept), and an uncovered `ParallelEmbedding` is initialised too; with no
`dtype`, `config.dtype` is the default torch dtype rather than None.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import functools
import inspect
import json
import logging
import math
import os
import re
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
import torch.utils.checkpoint
from safetensors import safe_open
from torch import nn
from transformers import AutoConfig, PretrainedConfig
from transformers.modeling_utils import _add_variant, get_parameter_dtype, load_state_dict, no_init_weights
from transformers.pytorch_utils import id_tensor_storage
from transformers.utils import (
    FLAX_WEIGHTS_NAME,
    SAFE_WEIGHTS_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
    TF2_WEIGHTS_NAME,
    TF_WEIGHTS_NAME,
    WEIGHTS_INDEX_NAME,
    WEIGHTS_NAME,
)

from ..neuronx_distributed.parallel_layers import parallel_state
from .config import TrainingNeuronConfig
from .pipeline_utils import get_pipeline_parameters_for_current_stage
from .transformations_utils import (
    adapt_state_dict,
    check_no_upstanding_sharded_params,
    create_parameter_metadata,
    specialize_transformation_specs_for_model,
)

logger = logging.getLogger(__name__)

MODEL_PARALLEL_SHARDS_DIR_NAME = "shards"
TRN_CONFIG_NAME = "trn_config.json"
_TP_ATTRIBUTES = (
    "tensor_model_parallel",
    "partition_dim",
    "partition_stride",
    "num_partitions",
    "rank_ordering",
)


def _nki_flash_attn_func(*args: Any, **kwargs: Any) -> Any:
    """Deferred `neuronx_distributed.kernels.flash_attn.nki_flash_attn_func` (imported on first call)."""
    from ..neuronx_distributed.kernels.flash_attn import nki_flash_attn_func

    return nki_flash_attn_func(*args, **kwargs)


try:
    from ..neuronx_distributed.kernels.flash_attn import nki_flash_attn_func as _flash_attention_2
except ImportError:  # the kernel module is optional for the host; resolve it when first used
    _flash_attention_2 = _nki_flash_attn_func

ALL_ATTENTION_FUNCTIONS: dict[str, Callable[..., Any]] = {"flash_attention_2": _flash_attention_2}

_WARNED: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        logger.warning(message)


# --- loading helpers -----------------------------------------------------------------------------------


def _tp_attributes(param: torch.Tensor) -> dict[str, Any]:
    return {name: getattr(param, name) for name in _TP_ATTRIBUTES if hasattr(param, name)}


def _load_state_dict_into_model(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> list[str]:
    """Copy `state_dict` into the model's parameters and buffers; return torch's strict-mode error messages.

    Keys missing from `state_dict` or unknown to the model are not errors here (the caller reports them);
    shape mismatches are. Tensor-parallel attributes of the parameters are kept.
    """
    error_msgs: list[str] = []

    def load(module: nn.Module, prefix: str) -> None:
        if any(key.startswith(prefix) for key in state_dict):
            attributes = {name: _tp_attributes(p) for name, p in module._parameters.items() if p is not None}
            module._load_from_state_dict(state_dict, prefix, {}, True, [], [], error_msgs)
            for name, param in module._parameters.items():
                for attribute, value in attributes.get(name, {}).items():
                    setattr(param, attribute, value)
        for name, child in module._modules.items():
            if child is not None:
                load(child, f"{prefix}{name}.")

    with torch.no_grad():
        load(model, "")
    return error_msgs


def _local_topology() -> tuple[int, int]:
    """(local rank, local world size) as torchrun exports them, else the global ones."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    return int(os.environ.get("LOCAL_RANK", rank)), int(os.environ.get("LOCAL_WORLD_SIZE", world))


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _by_rank_groups(ranks_per_step: int, fn: Callable[[], Any]) -> Any:
    """Run `fn` on the local ranks `ranks_per_step` at a time (all at once if <= 0), every rank meeting at a
    barrier after each step. An exception is re-raised after the last barrier, so other ranks never hang here.
    """
    local_rank, local_world = _local_topology()
    step = ranks_per_step if ranks_per_step > 0 else local_world
    result, error = None, None
    for worker in range(math.ceil(local_world / step)):
        if local_rank // step == worker:
            try:
                result = fn()
            except BaseException as exc:  # re-raised below, once every rank has passed the barriers
                error = exc
        _barrier()
    if error is not None:
        raise error
    return result


def _checkpoint_files(
    model_dir: Path, use_safetensors: bool | None, variant: str | None
) -> tuple[list[str], dict[str, Any] | None]:
    """The weight files of a transformers folder, in loading order, and the index metadata when sharded."""
    candidates = []
    if use_safetensors is not False:
        candidates += [(SAFE_WEIGHTS_NAME, False), (SAFE_WEIGHTS_INDEX_NAME, True)]
    if not use_safetensors:
        candidates += [(WEIGHTS_NAME, False), (WEIGHTS_INDEX_NAME, True)]
    for name, sharded in candidates:
        path = model_dir / _add_variant(name, variant)
        if not path.is_file():
            continue
        if not sharded:
            return [str(path)], None
        with open(path) as f:
            index = json.load(f)
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict):
            raise OSError(f"{path} is not a checkpoint index: it has no 'weight_map'.")
        files = [model_dir / name for name in sorted(set(weight_map.values()))]
        absent = [str(f) for f in files if not f.is_file()]
        if absent:
            raise OSError(f"The checkpoint index {path} names shard files that do not exist: {absent}")
        metadata = dict(index.get("metadata") or {})
        metadata["all_checkpoint_keys"] = list(weight_map)
        metadata["weight_map"] = dict(weight_map)
        return [str(f) for f in files], metadata
    for other in (TF_WEIGHTS_NAME + ".index", TF2_WEIGHTS_NAME, FLAX_WEIGHTS_NAME):
        if (model_dir / other).is_file():
            raise OSError(
                f"{model_dir} holds {other} (TensorFlow or Flax weights), which optimum-neuron cannot load. "
                "Convert the model to PyTorch weights (safetensors) first."
            )
    names = [_add_variant(name, variant) for name, _ in candidates]
    raise OSError(f"No model weights in {model_dir}: expected one of {', '.join(names)}.")


def _check_safetensors_format(files: Iterable[str]) -> None:
    for file in files:
        if not file.endswith(".safetensors"):
            continue
        with safe_open(file, framework="pt") as f:
            metadata = f.metadata()
        fmt = None if metadata is None else metadata.get("format")
        if fmt not in (None, "pt", "mlx"):
            raise ValueError(
                f"Incompatible safetensors file {file}: its metadata format is {fmt!r}, expected 'pt' (or 'mlx')."
            )


def _resolve_model_dir(
    name_or_path: str | os.PathLike,
    subfolder: str,
    *,
    cache_dir: str | os.PathLike | None,
    revision: str,
    token: str | bool | None,
    local_files_only: bool,
    force_download: bool,
) -> Path:
    """A local folder as is; otherwise a Hub repository id resolved with huggingface_hub's snapshot cache."""
    path = Path(name_or_path)
    if path.is_dir():
        return path / subfolder if subfolder else path
    if path.is_file():
        raise OSError(
            f"{path} is a file; pass the folder that holds the model's config.json and weights instead."
        )
    from huggingface_hub import snapshot_download

    try:
        snapshot = snapshot_download(
            str(name_or_path),
            revision=revision,
            cache_dir=cache_dir,
            token=token,
            local_files_only=local_files_only,
            force_download=force_download,
            allow_patterns=[f"{subfolder}/*" if subfolder else "*"],
        )
    except Exception as exc:
        raise OSError(
            f"{name_or_path} is not a local folder and could not be resolved as a Hugging Face Hub repository "
            f"({type(exc).__name__}: {exc}). Pass the path of a folder saved with save_pretrained."
        ) from exc
    return Path(snapshot) / subfolder if subfolder else Path(snapshot)


def _to_torch_dtype(value: Any, what: str) -> torch.dtype:
    if isinstance(value, torch.dtype):
        return value
    if isinstance(value, str):
        candidate = getattr(torch, value.removeprefix("torch."), None)
        if isinstance(candidate, torch.dtype):
            return candidate
    raise ValueError(f"{what} must be a torch.dtype or the name of one, got {value!r}")


def _set_sub_config_dtypes(config: PretrainedConfig, dtype: torch.dtype) -> None:
    for key in getattr(config, "sub_configs", {}):
        sub_config = getattr(config, key, None)
        if sub_config is not None:
            sub_config.dtype = dtype


def _first_floating_dtype(file: str, weights_only: bool) -> torch.dtype:
    state_dict = load_state_dict(file, weights_only=weights_only)
    for tensor in state_dict.values():
        if tensor.is_floating_point():
            return tensor.dtype
    return next(iter(state_dict.values())).dtype


def _resolve_dtype(
    dtype: Any,
    config: PretrainedConfig,
    files: list[str],
    sharded_metadata: dict[str, Any] | None,
    weights_only: bool,
    ranks_per_step: int,
) -> torch.dtype | None:
    """transformers' `dtype` argument: None, "auto", a dtype name, a torch.dtype, or a dict per sub-config."""
    if dtype is None:
        return None
    if isinstance(dtype, dict):
        for key, sub_dtype in dtype.items():
            if key and hasattr(config, key):
                getattr(config, key).dtype = sub_dtype
        main = dtype.get("")
        return torch.float32 if main is None else _to_torch_dtype(main, "dtype['']")
    if isinstance(dtype, str) and dtype == "auto":
        if getattr(config, "dtype", None) is not None:
            return _to_torch_dtype(config.dtype, "config.dtype")
        if sharded_metadata is not None and "dtype" in sharded_metadata:
            return _to_torch_dtype(sharded_metadata["dtype"], "the checkpoint index dtype")
        return _by_rank_groups(ranks_per_step, lambda: _first_floating_dtype(files[0], weights_only))
    if isinstance(dtype, (str, torch.dtype)):
        resolved = _to_torch_dtype(dtype, "dtype")
        _set_sub_config_dtypes(config, resolved)
        return resolved
    raise ValueError(
        "`dtype` can be one of: `torch.dtype`, `'auto'`, a string of a valid `torch.dtype` or a `dict` with valid "
        f"`dtype` for each sub-config in composite configs, but received {dtype!r}"
    )


def _reject_unsupported_arguments(cls_name: str, kwargs: dict[str, Any]) -> None:
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


# --- the mixin -----------------------------------------------------------------------------------------


class NeuronModelMixin:
    """Mixed into every Neuron training model: `class LlamaForCausalLM(NeuronModelMixin, LlamaPreTrainedModel)`.

    Models take `(config, trn_config)`, mix `CustomModule` into the modules that hold weight transformation
    specs, and declare `_tied_weights_keys` and the `PIPELINE_*` attributes.
    """

    SUPPORTS_PIPELINE_PARALLELISM: bool = False
    PIPELINE_TRANSFORMER_LAYER_CLS: type | None = None
    PIPELINE_INPUT_NAMES: list[str] | None = None
    PIPELINE_LEAF_MODULE_CLASSE_NAMES: list[str] | None = None

    @classmethod
    def supports_pipeline_parallelism(cls) -> bool:
        """Whether the class declares pipeline support (and the attributes it needs)."""
        if cls.SUPPORTS_PIPELINE_PARALLELISM:
            if cls.PIPELINE_TRANSFORMER_LAYER_CLS is None or cls.PIPELINE_INPUT_NAMES is None:
                raise ValueError(
                    f"{cls.__name__} supports pipeline parallelism but does not have the required attributes "
                    "`PIPELINE_TRANSFORMER_LAYER_CLS` and `PIPELINE_INPUT_NAMES` set."
                )
            return True
        return False

    @property
    def parameters_for_current_stage(self) -> set[str]:
        """State-dict names held by this pipeline stage: every name, since the reference backend runs PP=1."""
        if getattr(self, "_parameter_names_for_current_pp_rank", None) is None:
            self._parameter_names_for_current_pp_rank = get_pipeline_parameters_for_current_stage(self)
        return self._parameter_names_for_current_pp_rank

    # --- attention implementation: eager by default, NKI flash attention when the model supports it ---

    def _check_and_adjust_attn_implementation(
        self, attn_implementation: str | None, is_init_check: bool = False
    ) -> str:
        return self.get_correct_attn_implementation(attn_implementation or "eager", is_init_check)

    def _flash_attn_2_can_dispatch(self, is_init_check: bool = False) -> bool:
        if not self._supports_flash_attn:
            raise ValueError(
                f"{self.__class__.__name__} does not support Flash Attention 2.0 yet. Please request to add support "
                "here: https://github.com/huggingface/optimum-neuron/issues"
            )
        if self.config.dtype is None:
            _warn_once(
                "flash-dtype",
                "You are attempting to use Flash Attention 2 without specifying a dtype. This might lead to "
                "unexpected behaviour",
            )
        return True

    def _flash_attn_3_can_dispatch(self, is_init_check: bool = False) -> bool:
        raise ValueError("Flash Attention 3.0 is not supported in optimum-neuron.")

    def _sdpa_can_dispatch(self, is_init_check: bool = False) -> bool:
        raise ValueError("SDPA is not supported in optimum-neuron.")

    def _flex_attn_can_dispatch(self, is_init_check: bool = False) -> bool:
        raise ValueError("Flex Attention is not supported in optimum-neuron.")

    def _set_gradient_checkpointing(
        self, enable: bool = True, gradient_checkpointing_func: Callable | None = None
    ) -> None:
        """transformers' switch, with torch's non-reentrant checkpoint standing in for torch_xla's."""
        if gradient_checkpointing_func is None:
            gradient_checkpointing_func = functools.partial(
                torch.utils.checkpoint.checkpoint, use_reentrant=False
            )
        return super()._set_gradient_checkpointing(
            enable=enable, gradient_checkpointing_func=gradient_checkpointing_func
        )

    @staticmethod
    def _fix_state_dict_key_on_load(key: str) -> tuple[str, bool]:
        """transformers 4.49's legacy renames (LayerNorm gamma/beta, weight norm), sparing the GQA `weight_v`."""
        if key.endswith("LayerNorm.beta"):
            return key.replace("LayerNorm.beta", "LayerNorm.bias"), True
        if key.endswith("LayerNorm.gamma"):
            return key.replace("LayerNorm.gamma", "LayerNorm.weight"), True
        if hasattr(nn.utils.parametrizations, "weight_norm"):
            if key.endswith("weight_g"):
                return key.replace("weight_g", "parametrizations.weight.original0"), True
            if key.endswith("weight_v") and "qkv_proj" not in key:
                return key.replace("weight_v", "parametrizations.weight.original1"), True
        return key, False

    @classmethod
    def _fix_state_dict_keys_on_load(cls, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        for key in list(state_dict):
            new_key, changed = cls._fix_state_dict_key_on_load(key)
            if changed:
                state_dict[new_key] = state_dict.pop(key)
        return state_dict

    # --- from_pretrained -------------------------------------------------------------------------------

    @classmethod
    def _config_class(cls) -> type[PretrainedConfig] | None:
        for attribute in ("config_class", "config"):
            candidate = getattr(cls, attribute, None)
            if isinstance(candidate, type) and issubclass(candidate, PretrainedConfig):
                return candidate
        return None

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        trn_config: TrainingNeuronConfig,
        *model_args: Any,
        config: PretrainedConfig | str | os.PathLike | None = None,
        cache_dir: str | os.PathLike | None = None,
        ignore_mismatched_sizes: bool = False,
        force_download: bool = False,
        local_files_only: bool = False,
        token: str | bool | None = None,
        revision: str = "main",
        use_safetensors: bool | None = None,
        weights_only: bool = True,
        **kwargs: Any,
    ):
        """Build `cls(config, trn_config)` and load a transformers checkpoint into this rank's shards.

        The folder holds `model.safetensors`, `model.safetensors.index.json` (sharded), `pytorch_model.bin` or
        `pytorch_model.bin.index.json`, tried in that order. `dtype`/`torch_dtype` accept None (the default
        dtype), "auto", a dtype name or a torch.dtype. `attn_implementation` defaults to "eager"; only
        "flash_attention_2" is accepted besides, for models with `_supports_flash_attn`. Unsupported
        transformers options raise (NotImplementedError, ValueError or RuntimeError, as optimum-neuron does).
        Modules the checkpoint does not cover are initialised; missing and unexpected keys are logged
        (`output_loading_info=True` also returns them). The model is returned in eval mode.
        """
        _reject_unsupported_arguments(cls.__name__, kwargs)
        output_loading_info = kwargs.pop("output_loading_info", False)
        device_map = kwargs.pop("device_map", None)
        subfolder = kwargs.pop("subfolder", "")
        variant = kwargs.pop("variant", None)
        dtype = kwargs.pop("dtype", None)
        torch_dtype = kwargs.pop("torch_dtype", None)
        if dtype is None:
            dtype = torch_dtype
        use_auth_token = kwargs.pop("use_auth_token", None)
        if use_auth_token is not None:
            if token is not None:
                raise ValueError(
                    "`token` and `use_auth_token` are both specified. Please set only the argument `token`."
                )
            token = use_auth_token
        attn_implementation = kwargs.pop("attn_implementation", None)
        if trn_config is None:
            raise ValueError("`trn_config` is required to load a model in optimum-neuron.")
        if trn_config.pipeline_parallel_size > 1:
            raise NotImplementedError(
                "The reference backend loads models with pipeline_parallel_size=1 only (got "
                f"{trn_config.pipeline_parallel_size}); pipeline parallelism runs on the neuron backend."
            )
        if pretrained_model_name_or_path is None:
            raise ValueError(
                "`pretrained_model_name_or_path` is required: the folder of a transformers checkpoint."
            )

        model_dir = _resolve_model_dir(
            pretrained_model_name_or_path,
            subfolder,
            cache_dir=cache_dir,
            revision=revision,
            token=token,
            local_files_only=local_files_only,
            force_download=force_download,
        )
        if (model_dir / "adapter_config.json").is_file():
            raise NotImplementedError(
                f"Loading adapters directly from {cls.__name__}.from_pretrained is not supported. "
                "Please use the NeuronPeftModelForXXX classes to load adapters."
            )

        if isinstance(config, PretrainedConfig):
            config = copy.deepcopy(config)
            model_kwargs = kwargs
        else:
            config_source = config if config is not None else model_dir
            config_class = cls._config_class() or AutoConfig
            config, model_kwargs = config_class.from_pretrained(
                config_source, return_unused_kwargs=True, **kwargs
            )
        if attn_implementation is not None:
            config._attn_implementation = attn_implementation
        if getattr(config, "quantization_config", None) is not None:
            raise NotImplementedError("Quantization is not supported in optimum-neuron.")
        cls._check_model_kwargs(model_kwargs)

        files, sharded_metadata = _checkpoint_files(model_dir, use_safetensors, variant)
        _check_safetensors_format(files)
        ranks_per_step = trn_config.num_local_ranks_per_step
        dtype = _resolve_dtype(dtype, config, files, sharded_metadata, weights_only, ranks_per_step)

        config = copy.deepcopy(config)
        config.name_or_path = str(pretrained_model_name_or_path)
        config.dtype = dtype if dtype is not None else torch.get_default_dtype()
        model = cls._build_without_init(config, trn_config, dtype, model_args, model_kwargs)

        info = _by_rank_groups(
            ranks_per_step,
            lambda: cls._load_pretrained_model(
                model,
                files,
                str(pretrained_model_name_or_path),
                sharded_metadata=sharded_metadata,
                ignore_mismatched_sizes=ignore_mismatched_sizes,
                weights_only=weights_only,
            ),
        )
        model.tie_weights()
        model.eval()
        if device_map == "xla":
            model.to(parallel_state.get_device())
        if output_loading_info:
            return model, info
        return model

    @classmethod
    def _check_model_kwargs(cls, model_kwargs: dict[str, Any]) -> None:
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

    @classmethod
    def _build_without_init(
        cls,
        config: PretrainedConfig,
        trn_config: TrainingNeuronConfig,
        dtype: torch.dtype | None,
        model_args: tuple[Any, ...],
        model_kwargs: dict[str, Any],
    ) -> nn.Module:
        """`cls(config, trn_config)` with weight initialisation skipped and the default dtype set to `dtype`."""
        default_dtype = torch.get_default_dtype()
        try:
            if dtype is not None and dtype.is_floating_point:
                torch.set_default_dtype(dtype)
            with no_init_weights():
                return cls(config, trn_config, *model_args, **model_kwargs)
        finally:
            torch.set_default_dtype(default_dtype)

    @classmethod
    def _load_pretrained_model(
        cls,
        model: nn.Module,
        files: list[str],
        name_or_path: str,
        *,
        sharded_metadata: dict[str, Any] | None,
        ignore_mismatched_sizes: bool,
        weights_only: bool,
    ) -> dict[str, list]:
        """Stream each file through the specs into the model; initialise what no file covered."""
        model.tie_weights()
        model_state = model.state_dict()
        stage = model.parameters_for_current_stage
        tied_groups = _tied_groups(model_state)

        first = None if sharded_metadata is not None else load_state_dict(files[0], weights_only=weights_only)
        checkpoint_keys = sharded_metadata["all_checkpoint_keys"] if sharded_metadata else list(first)
        rename = _prefix_adapter(model, checkpoint_keys)

        specialize_transformation_specs_for_model(model)
        upstanding: dict[str, Any] = {}
        loaded: set[str] = set()
        unexpected: list[str] = []
        mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = []
        error_msgs: list[str] = []
        for file in files:
            state_dict = first if first is not None else load_state_dict(file, weights_only=weights_only)
            first = None
            state_dict, dropped = rename(state_dict)
            unexpected += dropped
            for group in tied_groups:
                for name in group[1:]:
                    state_dict.pop(name, None)
            state_dict = adapt_state_dict(
                model, state_dict, upstanding_sharded_params=upstanding, inplace=True
            )
            state_dict = cls._fix_state_dict_keys_on_load(state_dict)
            for key in list(state_dict):
                if key not in stage:
                    if key not in model_state and not _ignored_unexpected(cls, key):
                        unexpected.append(key)
                    del state_dict[key]
                elif state_dict[key].shape != model_state[key].shape and ignore_mismatched_sizes:
                    mismatched.append((key, tuple(state_dict[key].shape), tuple(model_state[key].shape)))
                    del state_dict[key]
            error_msgs += _load_state_dict_into_model(model, state_dict)
            loaded.update(state_dict)
            del state_dict
        check_no_upstanding_sharded_params(upstanding)
        specialize_transformation_specs_for_model(model)

        if error_msgs:
            message = "\n\t".join(error_msgs)
            if "size mismatch" in message:
                message += "\n\tYou may consider adding `ignore_mismatched_sizes=True` in the model `from_pretrained` method."
            raise RuntimeError(f"Error(s) in loading state_dict for {model.__class__.__name__}:\n\t{message}")

        for group in tied_groups:
            if loaded.intersection(group):
                loaded.update(group)
        missing = sorted(key for key in model_state if key in stage and key not in loaded)
        missing = [
            k for k in missing if not any(re.search(p, k) for p in cls._keys_to_ignore_on_load_missing or ())
        ]
        _initialize_uncovered_modules(model, loaded)

        if unexpected:
            logger.warning(
                f"Some weights of the model checkpoint at {name_or_path} were not used when initializing "
                f"{model.__class__.__name__}: {sorted(unexpected)}"
            )
        if missing:
            logger.warning(
                f"Some weights of {model.__class__.__name__} were not initialized from the model checkpoint at "
                f"{name_or_path} and are newly initialized: {missing}\nYou should probably TRAIN this model on a "
                "down-stream task to be able to use it for predictions and inference."
            )
        if mismatched:
            lines = "\n".join(
                f"- {k}: found shape {a} in the checkpoint and {b} in the model" for k, a, b in mismatched
            )
            logger.warning(
                f"Some weights of {model.__class__.__name__} were newly initialized because the shapes did not "
                f"match:\n{lines}"
            )
        return {
            "missing_keys": missing,
            "unexpected_keys": sorted(unexpected),
            "mismatched_keys": mismatched,
            "error_msgs": error_msgs,
        }

    # --- save_pretrained -------------------------------------------------------------------------------

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        is_main_process: bool | Literal["auto"] = "auto",
        state_dict: dict | None = None,
        save_function: Callable = torch.save,
        push_to_hub: bool = False,
        max_shard_size: int | str = "5GB",
        safe_serialization: bool = False,
        variant: str | None = None,
        token: str | bool | None = None,
        save_peft_format: bool = True,
        optimizer: torch.optim.Optimizer | None = None,
        **kwargs: Any,
    ) -> None:
        """Write the model-parallel checkpoint layout described in the module docstring. Every rank calls it.

        `state_dict`, `max_shard_size`, `variant` and `save_function` are accepted and ignored, as in
        optimum-neuron (each rank saves its own `state_dict()`). `safe_serialization=True` and `push_to_hub`
        raise: consolidate first (`checkpointing`), then save or push the result.
        """
        if os.environ.get("NEURON_EXTRACT_GRAPHS_ONLY") == "1":
            return
        if is_main_process == "auto":
            is_main_process = not dist.is_initialized() or dist.get_rank() == 0
        if "save_config" in kwargs:
            warnings.warn(
                "`save_config` is deprecated; use `is_main_process` instead.", FutureWarning, stacklevel=2
            )
            is_main_process = kwargs.pop("save_config")
        if safe_serialization:
            raise NotImplementedError(
                "`safe_serialization` is not supported when saving the sharded checkpoints. It is possible to "
                "consolidate the model weights into `safetensors` format."
            )
        if os.path.isfile(save_directory):
            logger.error(f"Provided path ({save_directory}) should be a directory, not a file")
            return
        if push_to_hub:
            raise RuntimeError(
                "`push_to_hub` is not supported because checkpoints are sharded. Consolidate them then push to hub."
            )
        if state_dict is not None:
            _warn_once(
                "save-state-dict", "save_pretrained ignores `state_dict`: each rank saves its own shards."
            )
        if self.trn_config.use_xser:
            _warn_once(
                "xser",
                "use_xser=True: the reference backend has no torch-xla serializer and writes the plain torch.save "
                "shard format instead (consolidation reads both formats).",
            )
        save_directory = Path(save_directory)
        save_directory.mkdir(parents=True, exist_ok=True)

        specialize_transformation_specs_for_model(self)
        self.config.dtype = str(get_parameter_dtype(self)).split(".")[1]
        self.config.architectures = [self.__class__.__name__]
        self.config._attn_implementation_autoset = False

        _save_model_parallel_checkpoint(
            save_directory,
            MODEL_PARALLEL_SHARDS_DIR_NAME,
            model=self,
            optimizer=optimizer,
            num_workers=self.trn_config.num_local_ranks_per_step,
        )
        if (
            parallel_state.get_data_parallel_rank() == 0
            and parallel_state.get_tensor_model_parallel_rank() == 0
        ):
            pp_rank = parallel_state.get_pipeline_model_parallel_rank()
            metadata_path = (
                save_directory / MODEL_PARALLEL_SHARDS_DIR_NAME / f"mp_metadata_pp_rank_{pp_rank}.json"
            )
            metadata_path.parent.mkdir(parents=True, exist_ok=True)
            metadata_path.write_text(json.dumps(create_parameter_metadata(self), indent=4))

        if is_main_process:
            generation_config = getattr(self, "generation_config", None)
            can_generate = self.can_generate() and generation_config is not None
            misplaced = self.config._get_non_default_generation_parameters()
            if can_generate and misplaced:
                for name, value in misplaced.items():
                    setattr(generation_config, name, value)
                    setattr(self.config, name, None)
            self.config.save_pretrained(save_directory)
            if can_generate:
                generation_config.save_pretrained(save_directory)
            trn_config_data = dataclasses.asdict(self.trn_config)
            if isinstance(trn_config_data["checkpoint_dir"], Path):
                trn_config_data["checkpoint_dir"] = trn_config_data["checkpoint_dir"].as_posix()
            (save_directory / TRN_CONFIG_NAME).write_text(json.dumps(trn_config_data, indent=4))
        _barrier()


# --- helpers of the loading path --------------------------------------------------------------------------


def _tied_groups(model_state: dict[str, torch.Tensor]) -> list[list[str]]:
    """Names sharing one storage in the model's state dict, in state-dict order (the first one is kept)."""
    by_storage: dict[Any, list[str]] = collections.defaultdict(list)
    for name, tensor in model_state.items():
        by_storage[id_tensor_storage(tensor)].append(name)
    return [names for names in by_storage.values() if len(names) > 1]


def _ignored_unexpected(cls: type, key: str) -> bool:
    if key.endswith("rotary_emb.inv_freq"):
        return True
    return any(re.search(pattern, key) for pattern in cls._keys_to_ignore_on_load_unexpected or ())


def _prefix_adapter(
    model: nn.Module, checkpoint_keys: list[str]
) -> Callable[[dict[str, torch.Tensor]], tuple[dict[str, torch.Tensor], list[str]]]:
    """Rename checkpoint keys between a base model and a model with a head (`base_model_prefix`).

    A base model loading a with-head checkpoint drops the prefix (keys outside it are unexpected); a
    with-head model loading a base checkpoint adds it.
    """
    prefix = getattr(model, "base_model_prefix", "")
    if not prefix:
        return lambda sd: (sd, [])
    has_prefix = any(key.startswith(prefix + ".") for key in checkpoint_keys)
    expects_prefix = hasattr(model, prefix) and isinstance(getattr(model, prefix), nn.Module)
    if has_prefix and not expects_prefix:

        def strip(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
            dropped = [k for k in sd if not k.startswith(prefix + ".")]
            return {k[len(prefix) + 1 :]: v for k, v in sd.items() if k.startswith(prefix + ".")}, dropped

        return strip
    if expects_prefix and not has_prefix:
        return lambda sd: ({f"{prefix}.{k}": v for k, v in sd.items()}, [])
    return lambda sd: (sd, [])


def _initialize_uncovered_modules(model: nn.Module, loaded: set[str]) -> None:
    """Initialise every module with a parameter no checkpoint file provided, keeping the loaded ones.

    Parallel linears use their own `initialize_weight_and_bias` (NxD's master-then-split init, which
    re-creates the parameters), then every such module goes through the model's `_init_weights`, as
    optimum-neuron's fast init does. A `ParallelEmbedding` is re-drawn with its `init_weight_cpu` (the
    real fast init leaves it uninitialised). A module none of these can initialise (the GQA layer, which
    optimum-neuron skips too) is reported, since its weights are then arbitrary.
    """
    for module_name, module in list(model.named_modules()):
        own = dict(module.named_parameters(recurse=False))
        full = {name: f"{module_name}.{name}" if module_name else name for name in own}
        uncovered = [full[name] for name in own if full[name] not in loaded]
        if not uncovered:
            continue
        keep = {name: p.detach().clone() for name, p in own.items() if full[name] in loaded}
        handled = (
            isinstance(module, (nn.Linear, nn.Embedding, nn.LayerNorm)) or "Norm" in type(module).__name__
        )
        with torch.no_grad():
            if callable(getattr(module, "initialize_weight_and_bias", None)):
                module.initialize_weight_and_bias()
                handled = True
            elif callable(getattr(module, "init_weight_cpu", None)):
                module.init_weight_cpu()
                handled = True
            if hasattr(model, "_init_weights"):
                model._init_weights(module)
            for name, value in keep.items():
                getattr(module, name).copy_(value)
        if not handled:
            logger.warning(
                f"{uncovered} are not in the checkpoint and {type(module).__name__} has no initialisation the "
                "loader can run: their values are arbitrary."
            )


def _cpu_copy(value: Any) -> Any:
    """Tensors of a (nested) state dict on CPU; views are copied so a file holds only its own data."""
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu()
        if tensor.untyped_storage().nbytes() > tensor.nbytes:
            tensor = tensor.clone()
        return tensor
    if isinstance(value, dict):
        return type(value)((k, _cpu_copy(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(_cpu_copy(v) for v in value)
    return value


def _shard_file_name(kind: str) -> str:
    tp = parallel_state.get_tensor_model_parallel_rank()
    pp = parallel_state.get_pipeline_model_parallel_rank()
    return f"{kind}/dp_rank_00_tp_rank_{tp:02d}_pp_rank_{pp:02d}.pt"


def _save_model_parallel_checkpoint(
    checkpoint_dir: Path,
    tag: str,
    *,
    model: nn.Module | dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer | None,
    num_workers: int,
) -> None:
    """NxD's `trainer.save_checkpoint` for the plain format: DP rank 0 of each (TP, PP) writes its shard.

    `model` is a module (its `state_dict()` is saved) or, as for PEFT adapters, a state dict itself.

    Global rank 0 writes `<tag>/checkpoint` first and `<tag>/done` once every rank has written.
    """
    tag_dir = checkpoint_dir / tag
    if dist.get_rank() == 0:
        tag_dir.mkdir(parents=True, exist_ok=True)
        (tag_dir / "checkpoint").write_text("1")
    items: list[tuple[Any, str]] = []
    if parallel_state.get_data_parallel_rank() == 0:
        state = model if isinstance(model, dict) else model.state_dict()
        items.append((state, _shard_file_name("model")))
        if optimizer is not None:
            items.append((optimizer.state_dict(), _shard_file_name("optim")))

    def write() -> None:
        for obj, relative in items:
            path = tag_dir / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(_cpu_copy(obj), path)

    _by_rank_groups(num_workers, write)
    if dist.get_rank() == 0:
        (tag_dir / "done").write_text("1")
    _barrier()
