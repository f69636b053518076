"""Streaming a transformers checkpoint's files into this rank's shards of a tensor-parallel model.

Each file goes through the model's weight-transformation specs (`adapt_state_dict`), which turn full
transformers tensors into this rank's shards; tensors a spec needs from several files wait in
`upstanding` until the last one arrives. What no file covered is initialised afterwards.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn
from transformers.modeling_utils import load_state_dict

from ..deviation_record import note
from ._checkpoint_keys import ignored_unexpected, missing_keys, prefix_adapter, tied_groups, with_tied_names
from ._uncovered_modules import initialize_uncovered_modules
from .transformations_utils import (
    adapt_state_dict,
    check_no_upstanding_sharded_params,
    specialize_transformation_specs_for_model,
)

logger = logging.getLogger(__name__)

_TP_ATTRIBUTES = (
    "tensor_model_parallel",
    "partition_dim",
    "partition_stride",
    "num_partitions",
    "rank_ordering",
)

Mismatch = tuple[str, tuple[int, ...], tuple[int, ...]]
"""(key, shape in the checkpoint, shape in the model)."""


def load_checkpoint_files(
    cls: type,
    model: nn.Module,
    files: list[str],
    name_or_path: str,
    *,
    sharded_metadata: dict[str, Any] | None,
    ignore_mismatched_sizes: bool,
    weights_only: bool,
) -> dict[str, list]:
    """Stream each file through the specs into the model; initialise what no file covered.

    `cls` is the model class: it renames legacy keys (`_fix_state_dict_keys_on_load`) and lists the keys
    to ignore. Returns transformers' loading info (missing, unexpected and mismatched keys, error messages).
    """
    model.tie_weights()
    model_state = model.state_dict()
    stage = model.parameters_for_current_stage
    groups = tied_groups(model_state)

    first = None if sharded_metadata is not None else load_state_dict(files[0], weights_only=weights_only)
    checkpoint_keys = sharded_metadata["all_checkpoint_keys"] if sharded_metadata else list(first)
    rename = prefix_adapter(model, checkpoint_keys)

    specialize_transformation_specs_for_model(model)
    upstanding: dict[str, Any] = {}
    loaded: set[str] = set()
    unexpected: list[str] = []
    mismatched: list[Mismatch] = []
    error_msgs: list[str] = []
    for file in files:
        state_dict = first if first is not None else load_state_dict(file, weights_only=weights_only)
        first = None
        state_dict, dropped = rename(state_dict)
        unexpected += dropped
        for group in groups:
            for name in group[1:]:
                state_dict.pop(name, None)
        state_dict = adapt_state_dict(model, state_dict, upstanding_sharded_params=upstanding, inplace=True)
        state_dict = cls._fix_state_dict_keys_on_load(state_dict)
        for key in list(state_dict):
            if key not in stage:
                if key not in model_state and not ignored_unexpected(cls, key):
                    unexpected.append(key)
                del state_dict[key]
            elif state_dict[key].shape != model_state[key].shape and ignore_mismatched_sizes:
                mismatched.append((key, tuple(state_dict[key].shape), tuple(model_state[key].shape)))
                del state_dict[key]
        error_msgs += load_state_dict_into_model(model, state_dict)
        loaded.update(state_dict)
        del state_dict
    check_no_upstanding_sharded_params(upstanding)
    specialize_transformation_specs_for_model(model)
    _raise_load_errors(model, error_msgs)

    covered = with_tied_names(loaded, groups)
    missing = missing_keys(cls, model_state, stage, covered)
    if missing:
        note("ON-13")  # missing keys named and uncovered layers initialised unlike the released host
    initialize_uncovered_modules(model, covered)
    _log_loading_report(model, name_or_path, sorted(unexpected), missing, mismatched)
    return {
        "missing_keys": missing,
        "unexpected_keys": sorted(unexpected),
        "mismatched_keys": mismatched,
        "error_msgs": error_msgs,
    }


def _tp_attributes(param: torch.Tensor) -> dict[str, Any]:
    return {name: getattr(param, name) for name in _TP_ATTRIBUTES if hasattr(param, name)}


def load_state_dict_into_model(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> list[str]:
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


def _raise_load_errors(model: nn.Module, error_msgs: list[str]) -> None:
    """torch's copy errors (shape mismatches above all) as one RuntimeError, as transformers words it."""
    if not error_msgs:
        return
    message = "\n\t".join(error_msgs)
    if "size mismatch" in message:
        message += "\n\tYou may consider adding `ignore_mismatched_sizes=True` in the model `from_pretrained` method."
    raise RuntimeError(f"Error(s) in loading state_dict for {model.__class__.__name__}:\n\t{message}")


def _log_loading_report(
    model: nn.Module, name_or_path: str, unexpected: list[str], missing: list[str], mismatched: list[Mismatch]
) -> None:
    """transformers' warnings about unused, newly initialised and resized weights."""
    name = model.__class__.__name__
    if unexpected:
        logger.warning(
            f"Some weights of the model checkpoint at {name_or_path} were not used when initializing "
            f"{name}: {unexpected}"
        )
    if missing:
        logger.warning(
            f"Some weights of {name} were not initialized from the model checkpoint at "
            f"{name_or_path} and are newly initialized: {missing}\nYou should probably TRAIN this model on a "
            "down-stream task to be able to use it for predictions and inference."
        )
    if mismatched:
        lines = "\n".join(
            f"- {k}: found shape {a} in the checkpoint and {b} in the model" for k, a, b in mismatched
        )
        logger.warning(
            f"Some weights of {name} were newly initialized because the shapes did not match:\n{lines}"
        )
