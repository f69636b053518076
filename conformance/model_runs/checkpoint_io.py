"""Checkpoints on the ranks and after them: the host's `save_pretrained` on every rank, its consolidation
into transformers names, and reading a transformers checkpoint folder back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from conformance.harness.protocol import size_label
from conformance.harness.rank_steps import rank_step

SHARDS_DIR = "shards"


def save_on_every_rank(model: torch.nn.Module, folder: Path, tp_size: int, ep_size: int = 1) -> None:
    """`save_pretrained(folder)` on every rank, as one step (`StepFailed` on every rank if any failed)."""
    rank_step(f"save_pretrained at {size_label(tp_size, ep_size)}", lambda: model.save_pretrained(folder))


def consolidate(saved_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The host's consolidation of a `save_pretrained` folder, and the metadata it was driven by."""
    from conformance.backends import active

    host = active()
    shards = Path(saved_dir) / SHARDS_DIR
    state_dict = host.host_module("checkpointing").consolidate_model_parallel_checkpoints(shards)
    metadata = json.loads((shards / "mp_metadata_pp_rank_0.json").read_text())
    return state_dict, metadata


def original_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a transformers checkpoint folder (safetensors or `.bin`, single file or indexed)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.is_file():
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            break
    else:
        files = [name for name in ("model.safetensors", "pytorch_model.bin") if (folder / name).is_file()]
    if not files:
        raise FileNotFoundError(f"no model weights in {folder}")
    weights: dict[str, torch.Tensor] = {}
    for name in files:
        path = folder / name
        weights.update(
            load_file(path) if name.endswith(".safetensors") else torch.load(path, weights_only=True)
        )
    return weights
