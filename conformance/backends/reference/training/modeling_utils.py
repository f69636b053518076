"""`NeuronModelMixin`: loading a transformers checkpoint into a tensor-parallel training model, and saving it
as NxD model-parallel shards (`optimum.neuron.models.training.modeling_utils`; training semantics §3).

`from_pretrained` builds the model without initialising its weights, then streams each checkpoint file
through the model's weight-transformation specs (`adapt_state_dict`) into this rank's shards.
`save_pretrained` writes NxD's checkpoint layout plus the metadata that `checkpointing` needs to rebuild the
transformers state dict. This module holds the mixin and the names models import; each step lives in a
module of its own:

    _pretrained_arguments        from_pretrained arguments: refused, ignored, aliased, required
    _checkpoint_folder           the checkpoint folder (local or a Hub snapshot) and its weight files
    _dtype_resolution            the `dtype` argument
    _checkpoint_loading          streaming the files into this rank's shards (keys: _checkpoint_keys;
                                 what no file covered: _uncovered_modules)
    _parallel_checkpoint_writing the saved layout (config.json, trn_config.json, shards/...)
    ..local_rank_turns           local ranks taking turns at reading and writing files
    _token_resizing              resize_token_embeddings of a ParallelEmbedding model (ON-15, ON-16)

Scope of the reference backend: local folders (or what `huggingface_hub.snapshot_download` resolves),
pipeline parallelism 1, and the plain (non-xser) shard format: `use_xser=True` writes the same plain
files, with a warning once, since torch-xla's serializer does not exist here; consolidation reads both.
`async_save` saves synchronously (deviation ON-11).

Differences from optimum-neuron that change no weight (deviation ON-13): missing and unexpected keys are
reported under the model's own parameter names (the real loader compares the checkpoint with a meta-device
transformers model); a module the checkpoint does not cover is initialised after the files are loaded
rather than before (loaded parameters are kept), and an uncovered `ParallelEmbedding` is initialised too;
with no `dtype`, `config.dtype` is the default torch dtype rather than None.
"""

from __future__ import annotations

import copy
import logging
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import nn
from transformers import AutoConfig, PretrainedConfig
from transformers.modeling_utils import get_parameter_dtype, no_init_weights

from ..deviation_record import discarding_random_init, note
from ..local_rank_turns import barrier, by_rank_groups
from ..neuronx_distributed.parallel_layers import parallel_state
from ..neuronx_distributed.parallel_layers.layers import ParallelEmbedding
from ..neuronx_distributed.trainer import save_checkpoint
from ..torch_xla.utils.checkpoint import checkpoint as xla_checkpoint
from ._checkpoint_folder import check_safetensors_format, checkpoint_files, resolve_model_dir
from ._checkpoint_loading import load_checkpoint_files
from ._dtype_resolution import resolve_dtype
from ._parallel_checkpoint_writing import (
    MODEL_PARALLEL_SHARDS_DIR_NAME,
    write_configs,
    write_parameter_metadata,
)
from ._pretrained_arguments import (
    check_constructor_kwargs,
    check_required_arguments,
    pop_dtype,
    pop_token,
    reject_unsupported_arguments,
)
from ._token_resizing import resize_parallel_token_embeddings
from .config import TrainingNeuronConfig
from .pipeline_utils import get_pipeline_parameters_for_current_stage
from .transformations_utils import specialize_transformation_specs_for_model

logger = logging.getLogger(__name__)


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
        """transformers' switch, with torch_xla's checkpoint by default (the reference backend's)."""
        if gradient_checkpointing_func is None:
            gradient_checkpointing_func = xla_checkpoint
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
        reject_unsupported_arguments(cls.__name__, kwargs)
        output_loading_info = kwargs.pop("output_loading_info", False)
        device_map = kwargs.pop("device_map", None)
        subfolder = kwargs.pop("subfolder", "")
        variant = kwargs.pop("variant", None)
        dtype = pop_dtype(kwargs)
        token = pop_token(kwargs, token)
        attn_implementation = kwargs.pop("attn_implementation", None)
        check_required_arguments(pretrained_model_name_or_path, trn_config)

        model_dir = resolve_model_dir(
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
        check_constructor_kwargs(cls, model_kwargs)

        files, sharded_metadata = checkpoint_files(model_dir, use_safetensors, variant)
        check_safetensors_format(files)
        ranks_per_step = trn_config.num_local_ranks_per_step
        dtype = resolve_dtype(dtype, config, files, sharded_metadata, weights_only, ranks_per_step)

        config.name_or_path = str(pretrained_model_name_or_path)
        config.dtype = dtype if dtype is not None else torch.get_default_dtype()
        model = cls._build_without_init(config, trn_config, dtype, model_args, model_kwargs)

        info = by_rank_groups(
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
            with no_init_weights(), discarding_random_init():
                return cls(config, trn_config, *model_args, **model_kwargs)
        finally:
            torch.set_default_dtype(default_dtype)

    @classmethod
    def _load_pretrained_model(
        cls, model: nn.Module, files: list[str], name_or_path: str, **options: Any
    ) -> dict[str, list]:
        """Stream each file through the specs into the model; initialise what no file covered.

        `options` are `load_checkpoint_files`'s keywords: `sharded_metadata`, `ignore_mismatched_sizes` and
        `weights_only`.
        """
        return load_checkpoint_files(cls, model, files, name_or_path, **options)

    # --- vocabulary resizing --------------------------------------------------------------------------

    def resize_token_embeddings(
        self,
        new_num_tokens: int | None = None,
        pad_to_multiple_of: int | None = None,
        mean_resizing: bool = False,
    ) -> nn.Embedding | ParallelEmbedding:
        """Resize the vocabulary to a global `new_num_tokens` (rounded up to `pad_to_multiple_of`).

        A ParallelEmbedding model keeps every existing token's rows in the embedding and the lm_head, at
        any TP size; the size must divide by the TP size and `mean_resizing` is not supported
        (`_token_resizing`). Other models resize as in transformers.
        """
        if isinstance(self.get_input_embeddings(), ParallelEmbedding):
            return resize_parallel_token_embeddings(self, new_num_tokens, pad_to_multiple_of, mean_resizing)
        return super().resize_token_embeddings(new_num_tokens, pad_to_multiple_of, mean_resizing)

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

        note("ON-11")  # plain torch.save shards, written synchronously
        save_checkpoint(
            save_directory.as_posix(),
            MODEL_PARALLEL_SHARDS_DIR_NAME,
            model=self,
            optimizer=optimizer,
            num_workers=self.trn_config.num_local_ranks_per_step,
        )
        write_parameter_metadata(self, save_directory)
        if is_main_process:
            write_configs(self, save_directory)
        barrier()
