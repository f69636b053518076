"""What `save_pretrained` writes beside NxD's model-parallel shards, for `checkpointing` to consolidate them:

    <dir>/config.json, <dir>/trn_config.json (and generation_config.json if the model can generate)
    <dir>/shards/mp_metadata_pp_rank_{p}.json                       create_parameter_metadata(model)

The shards themselves (`<dir>/shards/model/...`) are written by NxD's `trainer.save_checkpoint`, as the
real host does: plain torch.save files, synchronously (deviations ON-11, NXD-19). With expert parallelism
(EP > 1) their names carry the EP rank and the metadata marks expert-parallel parameters (deviation ON-17).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from torch import nn

from ..neuronx_distributed.parallel_layers import parallel_state
from .transformations_utils import create_parameter_metadata

MODEL_PARALLEL_SHARDS_DIR_NAME = "shards"
TRN_CONFIG_NAME = "trn_config.json"


def write_parameter_metadata(
    model: nn.Module, save_directory: Path, tag: str = MODEL_PARALLEL_SHARDS_DIR_NAME
) -> None:
    """`<tag>/mp_metadata_pp_rank_{p}.json`, written by DP rank 0 and TP rank 0 of each pipeline stage."""
    if parallel_state.get_data_parallel_rank() != 0 or parallel_state.get_tensor_model_parallel_rank() != 0:
        return
    pp_rank = parallel_state.get_pipeline_model_parallel_rank()
    metadata_path = save_directory / tag / f"mp_metadata_pp_rank_{pp_rank}.json"
    metadata_path.parent.mkdir(parents=True, exist_ok=True)
    metadata_path.write_text(json.dumps(create_parameter_metadata(model), indent=4))


def write_configs(model: nn.Module, save_directory: Path) -> None:
    """config.json, trn_config.json and, for a model that can generate, generation_config.json.

    Generation parameters set on the model config move to the generation config, as transformers does.
    """
    generation_config = getattr(model, "generation_config", None)
    can_generate = model.can_generate() and generation_config is not None
    misplaced = model.config._get_non_default_generation_parameters()
    if can_generate and misplaced:
        for name, value in misplaced.items():
            setattr(generation_config, name, value)
            setattr(model.config, name, None)
    model.config.save_pretrained(save_directory)
    if can_generate:
        generation_config.save_pretrained(save_directory)
    trn_config_data = dataclasses.asdict(model.trn_config)
    if isinstance(trn_config_data["checkpoint_dir"], Path):
        trn_config_data["checkpoint_dir"] = trn_config_data["checkpoint_dir"].as_posix()
    (save_directory / TRN_CONFIG_NAME).write_text(json.dumps(trn_config_data, indent=4))
