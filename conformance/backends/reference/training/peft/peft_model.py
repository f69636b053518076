"""PEFT models around Neuron custom models (reference twin of `optimum.neuron.peft.peft_model`).

`NeuronPeftModel` is PEFT's `PeftModel` with three differences, each dictated by the sharded model:

- target modules are renamed for fused layers (`gate_proj`, `up_proj` -> `gate_up_proj`) by the model's
  transformation specs before PEFT sees the config, and back when the config is saved;
- `load_adapter` turns a transformers-format adapter into this rank's tensors through the specs
  (`adapt_state_dict(..., adapter_name=...)`) before PEFT loads them;
- `save_pretrained` writes each rank's adapter tensors, not one file:
  `<dir>/adapter_<name>/adapter_shards/model/dp_rank_00_tp_rank_XX_pp_rank_00.pt` (PEFT's adapter-free
  names), `<dir>/adapter_<name>/adapter_shards/mp_metadata_pp_rank_0.json` (the whole PEFT model's
  parameter attributes and specs, written by TP rank 0) and `<dir>/adapter_<name>/adapter_config.json`
  (the config with the original target modules). The host's consolidation reads that layout.

Not supported: prompt-learning methods, X-LoRA, PiSSA/CorDA/OLoRA conversion on save
(`path_initial_model_for_weight_conversion`), and pipeline parallelism (the reference backend runs PP=1).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import peft.peft_model
from peft import PeftConfig, PeftModel
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING
from peft.utils import get_peft_model_state_dict, load_peft_weights, set_peft_model_state_dict
from torch import nn

from ...deviation_record import note
from ...neuronx_distributed.trainer import save_checkpoint
from .._parallel_checkpoint_writing import write_parameter_metadata
from ..pipeline_utils import get_pipeline_parameters_for_current_stage
from ..transformations_utils import (
    adapt_peft_config_for_model,
    adapt_state_dict,
    check_no_upstanding_sharded_params,
    specialize_transformation_specs_for_model,
    to_original_peft_config_for_model,
)
from .lora_model import NeuronLoraModel

ADAPTER_MODEL_PARALLEL_SHARDS_DIR_NAME = "adapter_shards"


@contextlib.contextmanager
def _neuron_lora_tuner() -> Iterator[None]:
    """PEFT builds its tuner from `peft.peft_model.PEFT_TYPE_TO_TUNER_MAPPING`: LoRA -> `NeuronLoraModel`."""
    original = peft.peft_model.PEFT_TYPE_TO_TUNER_MAPPING
    peft.peft_model.PEFT_TYPE_TO_TUNER_MAPPING = {**original, "LORA": NeuronLoraModel}
    try:
        yield
    finally:
        peft.peft_model.PEFT_TYPE_TO_TUNER_MAPPING = original


def _config_from(model_id: str | os.PathLike, **hub_kwargs: Any) -> PeftConfig:
    peft_type = PeftConfig._get_peft_type(model_id, **hub_kwargs)
    return PEFT_TYPE_TO_CONFIG_MAPPING[peft_type].from_pretrained(model_id, **hub_kwargs)


class NeuronPeftModel(PeftModel):
    """A PEFT (LoRA) model around a Neuron custom model; see the module docstring for what differs."""

    def __init__(
        self,
        model: nn.Module,
        peft_config: PeftConfig,
        adapter_name: str = "default",
        autocast_adapter_dtype: bool = True,
        **kwargs: Any,
    ) -> None:
        if peft_config.is_prompt_learning:
            raise NotImplementedError(
                "Prompt-learning PEFT methods are not supported on Neuron custom models."
            )
        peft_config = adapt_peft_config_for_model(model, peft_config, inplace=False)
        with _neuron_lora_tuner():
            super().__init__(
                model,
                peft_config,
                adapter_name=adapter_name,
                autocast_adapter_dtype=autocast_adapter_dtype,
                low_cpu_mem_usage=False,
            )
        specialize_transformation_specs_for_model(self)
        self.recompute_parameters_for_current_stage()

    def recompute_parameters_for_current_stage(self) -> None:
        """Refresh the stage's parameter names (they include adapter names, so change with adapters)."""
        self._parameter_names_for_current_pp_rank = get_pipeline_parameters_for_current_stage(self)

    @property
    def parameters_for_current_stage(self) -> set[str]:
        if getattr(self, "_parameter_names_for_current_pp_rank", None) is None:
            self.recompute_parameters_for_current_stage()
        return self._parameter_names_for_current_pp_rank

    def add_adapter(
        self, adapter_name: str, peft_config: PeftConfig, low_cpu_mem_usage: bool = False
    ) -> None:
        peft_config = adapt_peft_config_for_model(self, peft_config, inplace=False)
        with _neuron_lora_tuner():
            super().add_adapter(adapter_name, peft_config, low_cpu_mem_usage=False)
        specialize_transformation_specs_for_model(self)
        self.recompute_parameters_for_current_stage()

    # --- loading ---------------------------------------------------------------------------------------

    def load_adapter(
        self,
        model_id: str | os.PathLike,
        adapter_name: str,
        is_trainable: bool = False,
        torch_device: str | None = None,
        autocast_adapter_dtype: bool = True,
        **kwargs: Any,
    ) -> Any:
        """Load a transformers-format adapter (PEFT's files) into adapter `adapter_name`, sharded for this rank.

        Returns PEFT's load result; its `missing_keys` are restricted to this adapter's parameters, and its
        `unexpected_keys` are the adapter tensors that no parameter of this model took.
        """
        hub_kwargs, kwargs = self._split_kwargs(kwargs)
        if adapter_name not in self.peft_config:
            peft_config = _config_from(model_id, **hub_kwargs)
            self._check_new_adapter_config(peft_config, is_trainable=is_trainable)
            peft_config.inference_mode = not is_trainable
            self.add_adapter(adapter_name, peft_config)

        weights = load_peft_weights(model_id, device="cpu", **hub_kwargs)
        upstanding: dict[str, Any] = {}
        weights = adapt_state_dict(self, weights, upstanding, inplace=True, adapter_name=adapter_name)
        check_no_upstanding_sharded_params(upstanding)
        load_result = set_peft_model_state_dict(
            self,
            weights,
            adapter_name=adapter_name,
            ignore_mismatched_sizes=kwargs.get("ignore_mismatched_sizes", False),
        )
        prefix = "lora_"
        adapter_missing = [
            key
            for key in load_result.missing_keys
            if key in self.parameters_for_current_stage and prefix in key and adapter_name in key
        ]
        load_result.missing_keys.clear()
        load_result.missing_keys.extend(adapter_missing)
        if hasattr(self.base_model, "_cast_adapter_dtype"):
            self.base_model._cast_adapter_dtype(
                adapter_name=adapter_name, autocast_adapter_dtype=autocast_adapter_dtype
            )
        if not is_trainable:
            self.eval()
        return load_result

    @classmethod
    def from_pretrained(
        cls,
        model: nn.Module,
        model_id: str | os.PathLike,
        adapter_name: str = "default",
        is_trainable: bool = False,
        config: PeftConfig | None = None,
        autocast_adapter_dtype: bool = True,
        **kwargs: Any,
    ) -> NeuronPeftModel:
        """A PEFT model around `model` with the adapter saved in `model_id` loaded as `adapter_name`."""
        from .mapping import PEFT_MODEL_FOR_TASK

        if config is None:
            config = _config_from(model_id, **cls._split_kwargs(kwargs)[0])
        elif not isinstance(config, PeftConfig):
            raise ValueError(f"The input config must be a PeftConfig, got {config.__class__}")
        config.inference_mode = not is_trainable
        target_cls = PEFT_MODEL_FOR_TASK.get(config.task_type, cls)
        peft_model = target_cls(model, config, adapter_name, autocast_adapter_dtype=autocast_adapter_dtype)
        result = peft_model.load_adapter(
            model_id,
            adapter_name,
            is_trainable=is_trainable,
            autocast_adapter_dtype=autocast_adapter_dtype,
            **kwargs,
        )
        if result.missing_keys:
            warnings.warn(
                f"Found missing adapter keys while loading the checkpoint: {result.missing_keys}",
                stacklevel=2,
            )
        return peft_model

    # --- saving ----------------------------------------------------------------------------------------

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        safe_serialization: bool = False,
        selected_adapters: list[str] | None = None,
        save_embedding_layers: str | bool = "auto",
        is_main_process: bool = True,
        path_initial_model_for_weight_conversion: str | None = None,
        **kwargs: Any,
    ) -> None:
        """Every rank calls it: each adapter's shards, metadata and config (layout in the module docstring).

        `safe_serialization` is accepted and ignored: shards are torch.save files, as optimum-neuron's
        (deviation ON-11 for the xser format); consolidation writes safetensors.
        """
        save_directory = Path(save_directory)
        if save_directory.is_file():
            raise ValueError(f"Provided path ({save_directory}) should be a directory, not a file")
        if path_initial_model_for_weight_conversion is not None:
            raise NotImplementedError(
                "path_initial_model_for_weight_conversion (PiSSA/CorDA/OLoRA conversion) is not supported"
            )
        adapters = list(self.peft_config) if selected_adapters is None else list(selected_adapters)
        unknown = [name for name in adapters if name not in self.peft_config]
        if unknown:
            raise ValueError(
                f"You passed an invalid `selected_adapters` arguments, current supported adapter names are "
                f"{list(self.peft_config)} - got {adapters}."
            )
        if is_main_process:
            save_directory.mkdir(parents=True, exist_ok=True)
            self.create_or_update_model_card(str(save_directory))
        specialize_transformation_specs_for_model(self)
        for adapter_name in adapters:
            self._save_adapter(save_directory, adapter_name, save_embedding_layers, is_main_process, kwargs)

    def _save_adapter(
        self,
        save_directory: Path,
        adapter_name: str,
        save_embedding_layers: str | bool,
        is_main_process: bool,
        kwargs: dict[str, Any],
    ) -> None:
        state_dict = get_peft_model_state_dict(
            self,
            state_dict=kwargs.get("state_dict"),
            adapter_name=adapter_name,
            save_embedding_layers=save_embedding_layers,
        )
        output_dir = save_directory / f"adapter_{adapter_name}"
        write_parameter_metadata(self, output_dir, ADAPTER_MODEL_PARALLEL_SHARDS_DIR_NAME)
        note("ON-11")  # plain torch.save shards, written synchronously
        save_checkpoint(
            output_dir.as_posix(),
            ADAPTER_MODEL_PARALLEL_SHARDS_DIR_NAME,
            model=state_dict,
            optimizer=None,
            num_workers=self.trn_config.num_local_ranks_per_step,
        )
        if not is_main_process:
            return
        peft_config = to_original_peft_config_for_model(self.base_model, self.peft_config[adapter_name])
        if peft_config.base_model_name_or_path is None:
            peft_config.base_model_name_or_path = self.base_model.model.__dict__.get("name_or_path", None)
        auto_mapping = None
        if peft_config.task_type is None:
            base_class = self._get_base_model_class(is_prompt_tuning=False)
            auto_mapping = {"base_model_class": base_class.__name__, "parent_library": base_class.__module__}
        peft_config.inference_mode = True
        if isinstance(peft_config.target_modules, set):  # PEFT writes a set in hash order: sort it
            peft_config.target_modules = sorted(peft_config.target_modules)
        peft_config.save_pretrained(str(output_dir), auto_mapping_dict=auto_mapping)


class NeuronPeftModelForCausalLM(NeuronPeftModel):
    """The PEFT model for `task_type="CAUSAL_LM"`: the custom causal LM's forward, with adapters active."""
