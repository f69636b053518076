"""Key bookkeeping of a checkpoint load: tied weights, the base-model prefix, ignored and missing keys.

Keys are compared under the model's own parameter names (deviation ON-13: optimum-neuron compares the
checkpoint with a meta-device transformers model instead); weights are the same either way.
"""

from __future__ import annotations

import collections
import re
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from transformers.pytorch_utils import id_tensor_storage

StateDictRename = Callable[[dict[str, torch.Tensor]], tuple[dict[str, torch.Tensor], list[str]]]
"""Renames a checkpoint file's keys for the model; returns the renamed dict and the keys it dropped."""


def tied_groups(model_state: dict[str, torch.Tensor]) -> list[list[str]]:
    """Names sharing one storage in the model's state dict, in state-dict order (the first one is kept)."""
    by_storage: dict[Any, list[str]] = collections.defaultdict(list)
    for name, tensor in model_state.items():
        by_storage[id_tensor_storage(tensor)].append(name)
    return [names for names in by_storage.values() if len(names) > 1]


def ignored_unexpected(cls: type, key: str) -> bool:
    """Whether an unexpected checkpoint key goes unreported: rotary buffers and the class's own patterns."""
    if key.endswith("rotary_emb.inv_freq"):
        return True
    return any(re.search(pattern, key) for pattern in cls._keys_to_ignore_on_load_unexpected or ())


def with_tied_names(loaded: set[str], groups: list[list[str]]) -> set[str]:
    """`loaded` plus every tied name whose group had one of its names loaded."""
    covered = set(loaded)
    for group in groups:
        if covered.intersection(group):
            covered.update(group)
    return covered


def missing_keys(cls: type, model_state: Iterable[str], stage: set[str], covered: set[str]) -> list[str]:
    """This stage's state-dict names not in `covered`, sorted, less the class's
    `_keys_to_ignore_on_load_missing` patterns."""
    missing = sorted(key for key in model_state if key in stage and key not in covered)
    return [k for k in missing if not any(re.search(p, k) for p in cls._keys_to_ignore_on_load_missing or ())]


def prefix_adapter(model: nn.Module, checkpoint_keys: list[str]) -> StateDictRename:
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
