"""Writing NxD's model-parallel checkpoint layout, with what `checkpointing` needs to consolidate it:

    <dir>/config.json, <dir>/trn_config.json (and generation_config.json if the model can generate)
    <dir>/shards/checkpoint, <dir>/shards/done                      marker files, content "1"
    <dir>/shards/mp_metadata_pp_rank_{p}.json                       create_parameter_metadata(model)
    <dir>/shards/model/dp_rank_00_tp_rank_{TT:02d}_pp_rank_{PP:02d}.pt   torch.save(rank state_dict)

Shards are plain torch.save files, written synchronously (deviation ON-11: the real host writes
torch-xla's serialized format when `use_xser=True` and can save asynchronously).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..deviation_record import note
from ..neuronx_distributed.parallel_layers import parallel_state
from ._rank_steps import barrier, by_rank_groups
from .transformations_utils import create_parameter_metadata

MODEL_PARALLEL_SHARDS_DIR_NAME = "shards"
TRN_CONFIG_NAME = "trn_config.json"


def save_model_parallel_checkpoint(
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
    note("ON-11")  # plain torch.save shards, written synchronously
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

    by_rank_groups(num_workers, write)
    if dist.get_rank() == 0:
        (tag_dir / "done").write_text("1")
    barrier()


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
