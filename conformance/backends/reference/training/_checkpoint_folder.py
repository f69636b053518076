"""Finding a transformers checkpoint: its folder (local or a Hub snapshot) and the weight files in it.

A folder holds `model.safetensors`, `model.safetensors.index.json` (sharded), `pytorch_model.bin` or
`pytorch_model.bin.index.json`, tried in that order (`use_safetensors` narrows the choice, `variant`
renames them as transformers does). TensorFlow and Flax weights are refused with what to do instead.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from safetensors import safe_open
from transformers.modeling_utils import _add_variant
from transformers.utils import (
    FLAX_WEIGHTS_NAME,
    SAFE_WEIGHTS_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
    TF2_WEIGHTS_NAME,
    TF_WEIGHTS_NAME,
    WEIGHTS_INDEX_NAME,
    WEIGHTS_NAME,
)


def resolve_model_dir(
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


def checkpoint_files(
    model_dir: Path, use_safetensors: bool | None, variant: str | None
) -> tuple[list[str], dict[str, Any] | None]:
    """The weight files of a transformers folder, in loading order, and the index metadata when sharded.

    The metadata is the index's own `metadata` plus `all_checkpoint_keys` and `weight_map`.
    """
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
        return _indexed_files(model_dir, path)
    for other in (TF_WEIGHTS_NAME + ".index", TF2_WEIGHTS_NAME, FLAX_WEIGHTS_NAME):
        if (model_dir / other).is_file():
            raise OSError(
                f"{model_dir} holds {other} (TensorFlow or Flax weights), which optimum-neuron cannot load. "
                "Convert the model to PyTorch weights (safetensors) first."
            )
    names = [_add_variant(name, variant) for name, _ in candidates]
    raise OSError(f"No model weights in {model_dir}: expected one of {', '.join(names)}.")


def _indexed_files(model_dir: Path, index_path: Path) -> tuple[list[str], dict[str, Any]]:
    """The shard files a checkpoint index names (sorted, each once) and its metadata."""
    with open(index_path) as f:
        index = json.load(f)
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict):
        raise OSError(f"{index_path} is not a checkpoint index: it has no 'weight_map'.")
    files = [model_dir / name for name in sorted(set(weight_map.values()))]
    absent = [str(f) for f in files if not f.is_file()]
    if absent:
        raise OSError(f"The checkpoint index {index_path} names shard files that do not exist: {absent}")
    metadata = dict(index.get("metadata") or {})
    metadata["all_checkpoint_keys"] = list(weight_map)
    metadata["weight_map"] = dict(weight_map)
    return [str(f) for f in files], metadata


def check_safetensors_format(files: Iterable[str]) -> None:
    """Refuse a safetensors file whose metadata says it was written by another framework (not pt or mlx)."""
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
