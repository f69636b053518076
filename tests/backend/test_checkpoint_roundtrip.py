"""transformers checkpoint -> `from_pretrained` at TP=T -> `save_pretrained` -> consolidation == the original.

The oracle is the state dict transformers itself wrote (`LlamaForCausalLM.save_pretrained`): consolidation
must give back the same keys, dtypes and values, bit for bit, for each attention variant of the tiny
parallel Llama (separate q/k/v, fused `qkv_proj`, the GQA layer with fused or separate weights), tied and
untied embeddings, and single-file, sharded-safetensors and sharded-`.bin` inputs. TP=1 runs on two ranks
(DP=2) so that only data-parallel rank 0 writes.
"""

from __future__ import annotations

import json
import shutil
import sys
import types
from pathlib import Path

import pytest
import torch
from transformers import LlamaForCausalLM

from conformance.backends import activate
from conformance.tensor_parallel_run import run_tensor_parallel

from .host_fixtures import (
    assert_same_state_dict,
    load_weights,
    mount_tiny_llama,
    tiny_llama_config,
    write_checkpoint,
)

CASES = {
    # name: (config overrides, fuse_qkv, save kwargs, {T: (expected attention variant, kv size multiplier)})
    "kv2-untied-safetensors": (
        {"num_key_value_heads": 2},
        False,
        {},
        {1: ("separate", 1), 2: ("separate", 1), 4: ("gqa", 2)},
    ),
    "kv4-tied-fused-sharded-safetensors": (
        {"num_key_value_heads": 4, "tie_word_embeddings": True},
        True,
        {"max_shard_size": "20KB"},
        {1: ("fused", 1), 2: ("fused", 1), 4: ("fused", 1)},
    ),
    "kv1-gqa-fused-sharded-bin": (
        {"num_key_value_heads": 1},
        True,
        {"safe": False, "max_shard_size": "20KB"},
        {2: ("gqa", 2), 4: ("gqa", 4)},
    ),
}


def _load_and_save(src: str, dst: str, fuse_qkv: bool) -> tuple[str, int, list[str]]:
    """On a rank: load the transformers checkpoint at this TP size and save the model-parallel checkpoint."""
    from neuronx_distributed.parallel_layers import parallel_state

    from conformance.backends.reference.training.config import TrainingNeuronConfig

    package = mount_tiny_llama()
    # One local rank loads and saves at a time; use_xser keeps its default (True): the reference backend
    # then writes the plain format, which the test checks.
    trn_config = TrainingNeuronConfig(
        tensor_parallel_size=parallel_state.get_tensor_model_parallel_size(),
        fuse_qkv=fuse_qkv,
        num_local_ranks_per_step=1,
    )
    model, info = package.LlamaForCausalLM.from_pretrained(src, trn_config, output_loading_info=True)
    attention = model.model.layers[0].self_attn
    variant = "gqa" if attention.qkv_linear else "fused" if attention.fused_qkv else "separate"
    model.save_pretrained(dst)
    return variant, attention.kv_size_multiplier, info["missing_keys"] + info["unexpected_keys"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    folders = {}
    for name, (overrides, _, save_kwargs, _) in CASES.items():
        folders[name] = root / name
        write_checkpoint(folders[name], tiny_llama_config(**overrides), **save_kwargs)
    return folders


@pytest.mark.parametrize(
    ("case", "tp_size"), [(case, tp) for case, (_, _, _, expected) in CASES.items() for tp in expected]
)
def test_roundtrip_is_bit_exact(
    case: str, tp_size: int, checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    _, fuse_qkv, save_kwargs, expected = CASES[case]
    saved = tmp_path / "saved"
    results = run_tensor_parallel(
        _load_and_save, tp_size, str(checkpoints[case]), str(saved), fuse_qkv, world_size=max(tp_size, 2)
    )
    assert {r[:2] for r in results} == {expected[tp_size]}
    assert all(not r[2] for r in results), f"missing/unexpected keys: {results[0][2]}"

    model_files = sorted(p.name for p in (saved / "shards" / "model").iterdir())
    assert model_files == [f"dp_rank_00_tp_rank_{r:02d}_pp_rank_00.pt" for r in range(tp_size)]
    assert (saved / "shards" / "checkpoint").read_text() == "1"
    assert (saved / "shards" / "done").read_text() == "1"
    assert (saved / "shards" / "mp_metadata_pp_rank_0.json").is_file()
    config = json.loads((saved / "config.json").read_text())
    assert config["dtype"] == "float32" and config["architectures"] == ["LlamaForCausalLM"]

    save_format = "pytorch" if save_kwargs.get("safe") is False else "safetensors"
    out = tmp_path / "consolidated"
    activate("reference")
    from conformance.backends.reference.training import (
        consolidate_model_parallel_checkpoints_to_unified_checkpoint,
    )

    consolidate_model_parallel_checkpoints_to_unified_checkpoint(saved, out, save_format=save_format)
    single = "model.safetensors" if save_format == "safetensors" else "pytorch_model.bin"
    assert sorted(p.name for p in out.iterdir()) == [single]
    assert_same_state_dict(load_weights(out), load_weights(checkpoints[case]))


def test_consolidation_shards_large_outputs_with_an_index(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    """Over `max_shard_size` the output is numbered shards plus an index (ON-04), which transformers loads."""
    case = "kv2-untied-safetensors"
    saved = tmp_path / "saved"
    run_tensor_parallel(_load_and_save, 2, str(checkpoints[case]), str(saved), False)
    activate("reference")
    from conformance.backends.reference.training.checkpointing import (
        consolidate_model_parallel_checkpoints_to_unified_checkpoint,
    )

    out = tmp_path / "consolidated"
    consolidate_model_parallel_checkpoints_to_unified_checkpoint(saved / "shards", out, max_shard_size="10KB")
    names = sorted(p.name for p in out.iterdir())
    shards = [n for n in names if n.endswith(".safetensors")]
    assert len(shards) > 2 and shards == [
        f"model-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)
    ]
    assert "model.safetensors.index.json" in names
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(shards)
    expected = load_weights(checkpoints[case])
    assert_same_state_dict(load_weights(out), expected)

    shutil.copy(saved / "config.json", out / "config.json")
    reloaded = LlamaForCausalLM.from_pretrained(out)
    assert_same_state_dict({k: v for k, v in reloaded.state_dict().items()}, expected)


class _FakeTensorReference:
    """Pickles as torch_xla's `TensorReference` (an object holding `tid`), as NxD's xser format stores."""

    def __init__(self, tid: int) -> None:
        self.tid = tid


def _rewrite_as_xser(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Turn plain shard files into torch-xla's xser layout: reference file + `<file>.tensors/tensor_<i>.pt`."""
    serialization = types.ModuleType("torch_xla.utils.serialization")
    _FakeTensorReference.__module__ = serialization.__name__
    _FakeTensorReference.__qualname__ = _FakeTensorReference.__name__ = "TensorReference"
    serialization.TensorReference = _FakeTensorReference
    torch_xla, utils = types.ModuleType("torch_xla"), types.ModuleType("torch_xla.utils")
    torch_xla.utils, utils.serialization = utils, serialization
    for module in (torch_xla, utils, serialization):
        monkeypatch.setitem(sys.modules, module.__name__, module)
    for path in sorted(model_dir.glob("dp_rank_*.pt")):
        state_dict = torch.load(path, weights_only=True)
        tensors_dir = Path(f"{path}.tensors")
        tensors_dir.mkdir()
        references = {}
        for tid, (name, tensor) in enumerate(state_dict.items()):
            torch.save(tensor.clone(), tensors_dir / f"tensor_{tid}.pt")
            references[name] = _FakeTensorReference(tid)
        torch.save(references, path)


def test_consolidation_reads_the_xser_format(
    checkpoints: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checkpoints written on Trainium with use_xser=True consolidate on CPU without torch_xla."""
    case = "kv1-gqa-fused-sharded-bin"
    saved = tmp_path / "saved"
    run_tensor_parallel(_load_and_save, 2, str(checkpoints[case]), str(saved), True)
    with monkeypatch.context() as patch:
        _rewrite_as_xser(saved / "shards" / "model", patch)
    assert "torch_xla.utils.serialization" not in sys.modules
    activate("reference")
    from conformance.backends.reference.training.checkpointing import consolidate_model_parallel_checkpoints

    consolidated = consolidate_model_parallel_checkpoints(saved / "shards")
    assert_same_state_dict(consolidated, load_weights(checkpoints[case]))


def test_consolidation_without_shards_is_a_clear_error(tmp_path: Path) -> None:
    activate("reference")
    from conformance.backends.reference.training.checkpointing import (
        consolidate_model_parallel_checkpoints_to_unified_checkpoint,
    )

    with pytest.raises(ValueError, match="Could not find the tensor parallel shards"):
        consolidate_model_parallel_checkpoints_to_unified_checkpoint(tmp_path, tmp_path / "out")
