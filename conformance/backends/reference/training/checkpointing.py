"""Consolidation: model-parallel shards back to one transformers (or PEFT) state dict (training semantics §3.4).

Reads what `NeuronModelMixin.save_pretrained` (and NxD on Trainium) writes: per-rank files
`<shards>/model/dp_rank_00_tp_rank_XX_pp_rank_XX.pt`, in the plain torch.save format or torch-xla's xser
format (a reference file plus `<file>.tensors/tensor_<id>.pt`), and `<shards>/mp_metadata_pp_rank_<p>.json`
(or `.pt`). The weight-transformation specs recorded in the metadata undo fusions and GQA permutations.
Only CPU tensors are involved: consolidating a Trainium checkpoint needs neither torch_xla nor a device.

Expert parallelism (deviation ON-17): files named `dp_rank_00_ep_rank_XX_tp_rank_XX_pp_rank_XX.pt` hold
one (EP, TP) rank each. A parameter the metadata marks `expert_model_parallel` reaches the specs as the
tensors of every file in (EP rank, TP rank) order; any other parameter as EP rank 0's tensors, in TP rank
order, since every EP rank saved the same copy. optimum-neuron 0.4.5 hands every parameter the tensors of
every file, so it concatenates non-expert parameters EP times over. In NxD's xser format only EP rank 0
writes the tensors of non-expert parameters; the other EP ranks' reference files point to them, and they
are read from EP rank 0's folder, as NxD's loader does.
"""

from __future__ import annotations

import io
import itertools
import json
import pickle
import re
import types
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch
from huggingface_hub import split_torch_state_dict_into_shards
from transformers.utils import SAFE_WEIGHTS_NAME, WEIGHTS_NAME

from .adapter_names import remove_adapter_name
from .modeling_utils import MODEL_PARALLEL_SHARDS_DIR_NAME
from .transformations_utils import ModelWeightTransformationSpecs, to_original_weights

ADAPTER_MODEL_PARALLEL_SHARDS_DIR_NAME = "adapter_shards"
# PEFT's file names (peft.utils.constants), written for adapters.
PEFT_SAFETENSORS_WEIGHTS_NAME = "adapter_model.safetensors"
PEFT_WEIGHTS_NAME = "adapter_model.bin"

_SHARD_NAME = re.compile(r"(?:ep_rank_(\d+)_)?tp_rank_(\d+)_pp_rank_(\d+)(?:\.pt)?$")
_EP_RANK = re.compile(r"ep_rank_\d+")
_XSER_REFERENCE = ("torch_xla.utils.serialization", "TensorReference")


class _TensorReference:
    """Stand-in for torch_xla's `TensorReference` when reading an xser reference file without torch_xla."""

    tid: int

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.tid = state


class _XserUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == _XSER_REFERENCE:
            return _TensorReference
        return super().find_class(module, name)


_xser_pickle = types.ModuleType("_xser_pickle")
_xser_pickle.Unpickler = _XserUnpickler  # type: ignore[attr-defined]
_xser_pickle.load = lambda f, **kw: _XserUnpickler(f, **kw).load()  # type: ignore[attr-defined]
_xser_pickle.loads = lambda b, **kw: _XserUnpickler(io.BytesIO(b), **kw).load()  # type: ignore[attr-defined]


def xser_load_on_cpu(path: str | Path) -> Any:
    """Load an xser shard: the reference file, each tensor reference replaced by its `.tensors` file."""
    path = Path(path)
    reference = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_xser_pickle)
    tensors_dir = Path(f"{path}.tensors")
    # NxD writes the tensors of non-expert parameters under EP rank 0 only (ON-17).
    ep_rank_0_dir = tensors_dir.with_name(_EP_RANK.sub("ep_rank_00", tensors_dir.name))

    def resolve(value: Any) -> Any:
        if isinstance(value, _TensorReference):
            name = f"tensor_{value.tid}.pt"
            found = tensors_dir / name if (tensors_dir / name).is_file() else ep_rank_0_dir / name
            return torch.load(found, map_location="cpu", weights_only=True)
        if isinstance(value, dict):
            return type(value)((k, resolve(v)) for k, v in value.items())
        if isinstance(value, (list, tuple)):
            return type(value)(resolve(v) for v in value)
        return value

    return resolve(reference)


def _rank_of(path: Path) -> tuple[int, int, int]:
    """(pp rank, ep rank, tp rank) from a shard file name; the EP rank is 0 when the name has none."""
    match = _SHARD_NAME.search(path.name)
    if match is None:
        raise ValueError(
            f"{path} is not a model-parallel shard (expected ..._[ep_rank_XX_]tp_rank_XX_pp_rank_XX.pt)"
        )
    return int(match.group(3)), int(match.group(1) or 0), int(match.group(2))


def rank_ordered_shards(
    state_dicts: dict[tuple[int, int], dict[str, torch.Tensor]], parameters_metadata: dict[str, Any]
) -> dict[str, list[torch.Tensor]]:
    """The per-rank tensors of each saved name, as the specs read them, from `{(ep rank, tp rank): state dict}`.

    Without expert parallelism: TP rank order. With it (ON-17): every (EP, TP) rank's tensor for the names
    the metadata marks `expert_model_parallel`, EP rank 0's TP ranks for the others.
    """
    ep_size = 1 + max(ep for ep, _ in state_dicts)
    tp_size = 1 + max(tp for _, tp in state_dicts)
    missing = sorted(set(itertools.product(range(ep_size), range(tp_size))) - set(state_dicts))
    if missing:
        raise ValueError(f"shard files are missing for these (ep rank, tp rank) pairs: {missing}")
    first = [state_dicts[0, tp] for tp in range(tp_size)]
    sharded = {name: [sd[name] for sd in first] for name in first[0]}
    if ep_size == 1:
        return sharded
    experts = {
        remove_adapter_name(name)
        for name, meta in parameters_metadata.items()
        if meta.get("expert_model_parallel")
    }
    if not experts:
        raise ValueError(
            f"the checkpoint has {ep_size} expert-parallel ranks, but its metadata marks no parameter "
            "`expert_model_parallel`, so the experts cannot be told apart from the copies every EP rank saves "
            "of the other parameters (optimum-neuron 0.4.5 does not record it; deviation ON-17). Save it "
            "with the reference host's save_pretrained."
        )
    for name in experts & set(sharded):
        sharded[name] = [state_dicts[ep, tp][name] for ep in range(ep_size) for tp in range(tp_size)]
    return sharded


def consolidate_tensor_parallel_checkpoints(
    sharded_checkpoints: list[Path],
    load_function: Callable[[str], dict[str, Any]],
    metadata: dict[str, Any],
    adapter_name: str | None = None,
) -> dict[str, torch.Tensor]:
    """The original state dict of one pipeline stage from its per-rank shard files (per TP and EP rank)."""
    paths = [Path(p) for p in sharded_checkpoints if Path(p).is_file()]
    if not paths:
        raise ValueError(f"None of the shard files exist: {[str(p) for p in sharded_checkpoints]}")
    state_dicts = {_rank_of(p)[1:]: load_function(p.as_posix()) for p in paths}
    specs = [
        ModelWeightTransformationSpecs.from_metadata(entry)
        for entry in metadata["model_weight_transformation_specs"]
    ]
    sharded = rank_ordered_shards(state_dicts, metadata["parameters"])
    return to_original_weights(specs, sharded, metadata["parameters"], adapter_name=adapter_name)


def _read_metadata(checkpoint_dir: Path, pp_rank: int) -> dict[str, Any]:
    pt_file = checkpoint_dir / f"mp_metadata_pp_rank_{pp_rank}.pt"
    if pt_file.is_file():
        return torch.load(pt_file, weights_only=True)
    json_file = checkpoint_dir / f"mp_metadata_pp_rank_{pp_rank}.json"
    if not json_file.is_file():
        raise FileNotFoundError(
            f"No consolidation metadata for pipeline rank {pp_rank} in {checkpoint_dir} "
            f"(expected {json_file.name}); was the checkpoint written by save_pretrained?"
        )
    return json.loads(json_file.read_text())


def consolidate_model_parallel_checkpoints(
    checkpoint_dir: str | Path, adapter_name: str | None = None
) -> dict[str, torch.Tensor]:
    """The original state dict from a shards folder (`<dir>/shards` or `<dir>/adapter_<x>/adapter_shards`)."""
    checkpoint_dir = Path(checkpoint_dir)
    model_dir = checkpoint_dir / "model"
    if any(model_dir.glob("dp_rank*.tensors")):
        files = [p for p in model_dir.glob("dp_rank_*") if not p.name.endswith(("info.pt", "tensors"))]
        load_function: Callable[[str], dict[str, Any]] = xser_load_on_cpu
    else:
        files = list(model_dir.glob("dp_rank_*.pt"))
        load_function = partial(torch.load, map_location="cpu", weights_only=True)
    if not files:
        raise ValueError(f"Could not find any sharded checkpoint in {model_dir.as_posix()}")

    by_pp: dict[int, list[Path]] = {}
    for path in files:
        pp_rank = _rank_of(path)[0]
        by_pp.setdefault(pp_rank, []).append(path)
    consolidated: dict[str, torch.Tensor] = {}
    for pp_rank in range(max(by_pp) + 1):
        if pp_rank not in by_pp:
            raise ValueError(f"No shard files for pipeline rank {pp_rank} in {model_dir}")
        consolidated.update(
            consolidate_tensor_parallel_checkpoints(
                by_pp[pp_rank],
                load_function,
                _read_metadata(checkpoint_dir, pp_rank),
                adapter_name=adapter_name,
            )
        )
    return consolidated


def _directories_to_consolidate(checkpoint_dir: Path) -> list[Path]:
    if checkpoint_dir.name == MODEL_PARALLEL_SHARDS_DIR_NAME:
        return [checkpoint_dir]
    if (checkpoint_dir / MODEL_PARALLEL_SHARDS_DIR_NAME).is_dir():
        return [checkpoint_dir / MODEL_PARALLEL_SHARDS_DIR_NAME]
    found = sorted(
        d / ADAPTER_MODEL_PARALLEL_SHARDS_DIR_NAME
        for d in (checkpoint_dir.iterdir() if checkpoint_dir.is_dir() else [])
        if d.is_dir() and d.name.startswith("adapter_")
    )
    if not found:
        raise ValueError(
            f"Could not find the tensor parallel shards from {checkpoint_dir}: expected a '{MODEL_PARALLEL_SHARDS_DIR_NAME}' "
            f"folder or 'adapter_<name>/{ADAPTER_MODEL_PARALLEL_SHARDS_DIR_NAME}' folders."
        )
    return found


def consolidate_model_parallel_checkpoints_to_unified_checkpoint(
    checkpoint_dir: str | Path,
    output_dir: str | Path,
    save_format: Literal["pytorch", "safetensors"] = "safetensors",
    max_shard_size: int | str = "5GB",
) -> None:
    """Write the consolidated weights of `checkpoint_dir` to `output_dir` in transformers' (or PEFT's) format.

    `checkpoint_dir` is a save_pretrained folder, its `shards` folder, or a folder of `adapter_<name>`
    adapters (adapter `default` goes to `output_dir`, others to `output_dir/<name>`). Files are
    `model.safetensors` / `pytorch_model.bin` (`adapter_model.*` for adapters); above `max_shard_size`
    they are numbered `model-00001-of-0000N.safetensors` with an index file, as transformers writes them
    (deviation ON-04: the real function names every shard alike and loses all but the last one). Config
    files are not copied.
    """
    if save_format not in ("pytorch", "safetensors"):
        raise ValueError(f"save_format must be 'pytorch' or 'safetensors', got {save_format!r}")
    from safetensors.torch import save_file

    checkpoint_dir, output_dir = Path(checkpoint_dir), Path(output_dir)
    directories = _directories_to_consolidate(checkpoint_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    for shards_dir in directories:
        parent = shards_dir.parent
        target = output_dir
        adapter_name = None
        if parent.name.startswith("adapter_"):
            adapter_name = parent.name.split("_", maxsplit=1)[1]
            if adapter_name != "default":
                target = output_dir / adapter_name
            file_name = PEFT_SAFETENSORS_WEIGHTS_NAME if save_format == "safetensors" else PEFT_WEIGHTS_NAME
        else:
            file_name = SAFE_WEIGHTS_NAME if save_format == "safetensors" else WEIGHTS_NAME
        # Named after the files it indexes, as transformers does (`model.safetensors.index.json`,
        # `pytorch_model.bin.index.json`): `adapter_model.bin.index.json`, not `pytorch_adapter_model...`.
        index_name = f"{file_name}.index.json"
        target.mkdir(parents=True, exist_ok=True)

        state_dict = consolidate_model_parallel_checkpoints(shards_dir, adapter_name=adapter_name)
        stem, extension = file_name.split(".", 1)
        split = split_torch_state_dict_into_shards(
            state_dict, filename_pattern=f"{stem}{{suffix}}.{extension}", max_shard_size=max_shard_size
        )
        if split.is_sharded:
            index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
            (target / index_name).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        for shard_file, names in split.filename_to_tensors.items():
            shard = {name: state_dict.pop(name).contiguous() for name in names}
            if save_format == "safetensors":
                save_file(shard, target / shard_file, metadata={"format": "pt"})
            else:
                torch.save(shard, target / shard_file)
