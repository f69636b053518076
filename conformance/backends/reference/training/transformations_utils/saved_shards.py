"""Consolidation-side lookups: the per-rank tensors of a saved name, and metadata names with adapters.

`sharded_state_dicts` maps adapter-free saved names to per-TP-rank tensors in rank order; the metadata's
"parameters" section uses in-memory names, which carry the adapter name of LoRA parameters.
"""

from __future__ import annotations

from typing import Any

import torch

from ..adapter_names import get_adapter_name, remove_adapter_name


def rank_shards(
    sharded_state_dicts: dict[str, list[torch.Tensor]], name: str, tp_size: int
) -> list[torch.Tensor]:
    """The `tp_size` per-rank tensors saved under the adapter-free `name`; a KeyError if it was not saved."""
    if name not in sharded_state_dicts:
        raise KeyError(
            f"the sharded checkpoint has no {name!r}, which a transformation spec needs. An adapter "
            "checkpoint must adapt every custom layer whose spec its metadata carries (optimum-neuron "
            "0.4.5 fails the same way)."
        )
    shards = sharded_state_dicts[name]
    if len(shards) != tp_size:
        raise ValueError(f"{name}: {len(shards)} shards for a spec saved with tp_size={tp_size}")
    return shards


def rank_shards_of_metadata_name(
    sharded_state_dicts: dict[str, list[torch.Tensor]], metadata_name: str, tp_size: int
) -> list[torch.Tensor]:
    """`rank_shards` for an in-memory (metadata) name, whose adapter name the saved name lacks."""
    return rank_shards(sharded_state_dicts, remove_adapter_name(metadata_name), tp_size)


def find_metadata_name(parameters_metadata: dict[str, Any], adapter_free_name: str) -> str | None:
    """The metadata name (with its adapter name) that is `adapter_free_name` once the adapter is removed."""
    for name in parameters_metadata:
        if name == adapter_free_name or (
            get_adapter_name(name) is not None and remove_adapter_name(name) == adapter_free_name
        ):
            return name
    return None
