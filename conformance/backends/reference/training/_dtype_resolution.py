"""The dtype `from_pretrained` builds the model in, from transformers' `dtype` argument.

`dtype` is None (the caller keeps the default dtype), "auto" (the config's dtype, else the checkpoint
index's, else the first floating tensor of the first weight file), a dtype name, a torch.dtype, or a
dict per sub-config of a composite config (the "" entry is the main model's).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import PretrainedConfig
from transformers.modeling_utils import load_state_dict

from ..local_rank_turns import by_rank_groups


def to_torch_dtype(value: Any, what: str) -> torch.dtype:
    """`value` as a torch.dtype: a torch.dtype itself or its name ("bfloat16", "torch.bfloat16")."""
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


def resolve_dtype(
    dtype: Any,
    config: PretrainedConfig,
    files: list[str],
    sharded_metadata: dict[str, Any] | None,
    weights_only: bool,
    ranks_per_step: int,
) -> torch.dtype | None:
    """transformers' `dtype` argument: None, "auto", a dtype name, a torch.dtype, or a dict per sub-config.

    Sets the sub-configs' dtypes as transformers does; reading a weight file for "auto" takes turns by
    `ranks_per_step` local ranks.
    """
    if dtype is None:
        return None
    if isinstance(dtype, dict):
        for key, sub_dtype in dtype.items():
            if key and hasattr(config, key):
                getattr(config, key).dtype = sub_dtype
        main = dtype.get("")
        return torch.float32 if main is None else to_torch_dtype(main, "dtype['']")
    if isinstance(dtype, str) and dtype == "auto":
        if getattr(config, "dtype", None) is not None:
            return to_torch_dtype(config.dtype, "config.dtype")
        if sharded_metadata is not None and "dtype" in sharded_metadata:
            return to_torch_dtype(sharded_metadata["dtype"], "the checkpoint index dtype")
        return by_rank_groups(ranks_per_step, lambda: _first_floating_dtype(files[0], weights_only))
    if isinstance(dtype, (str, torch.dtype)):
        resolved = to_torch_dtype(dtype, "dtype")
        _set_sub_config_dtypes(config, resolved)
        return resolved
    raise ValueError(
        "`dtype` can be one of: `torch.dtype`, `'auto'`, a string of a valid `torch.dtype` or a `dict` with valid "
        f"`dtype` for each sub-config in composite configs, but received {dtype!r}"
    )
