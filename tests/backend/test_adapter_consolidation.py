"""Consolidating sharded LoRA adapter checkpoints into PEFT's files (training semantics §3.3, §3.4).

Checkpoints are written here in `NeuronPeftModel.save_pretrained`'s layout, two adapters at once:
`<dir>/adapter_<name>/adapter_shards/model/dp_rank_00_tp_rank_XX_pp_rank_00.pt` (each rank's adapter
state dict from the host's load path, keys without the adapter name), `.../mp_metadata_pp_rank_0.json`
(`create_parameter_metadata` of the whole PEFT model: names with the adapter name, both adapters) and
`<dir>/adapter_<name>/adapter_config.json`. The tree has a fused gate/up MLP and the GQA attention layer.

Oracle: the original PEFT adapter, with the load path's documented loss (§2.5(d), §2.6(d), §8.6): the
lora_A of a fused group (gate/up, q/k/v) comes back as the mean of the group's originals; every lora_B,
every unfused lora_A and o_proj's lora_A (permuted on the ranks, checked against the closed form of
§2.6) come back exactly. Differential: optimum-neuron 0.4.5's own `to_original_weights` on the same files.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from peft import LoraConfig
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, WEIGHTS_INDEX_NAME, WEIGHTS_NAME

from conformance.backends import activate

activate("reference")  # the host imports `neuronx_distributed` by its public name

from conformance.backends.reference.training import transformations_utils as tu  # noqa: E402
from conformance.backends.reference.training.checkpointing import (  # noqa: E402
    consolidate_model_parallel_checkpoints_to_unified_checkpoint,
)

from .oracle_optimum_neuron import load_oracle  # noqa: E402
from .transformation_trees import (  # noqa: E402
    LoraWrapper,
    Shape,
    build_model,
    expected_consolidated_adapter,
    full_adapter_state_dict,
    load_ranks,
    saved_names,
)

ADAPTERS = {"default": 1, "other": 2}  # adapter name -> seed of its original weights
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
FILE = {"safetensors": "adapter_model.safetensors", "pytorch": "adapter_model.bin"}
# GQA layouts whose query permutation is not the identity, so that o_proj's lora_A is really un-permuted.
# tag_weight_qkv=False: NxD leaves the fused GQA weight untagged (NXD-10).
SHAPES = {
    "T2-m2": Shape(tp=2, heads=8, kv_heads=2, head_dim=1, hidden=3, intermediate=4, vocab=4, attention="gqa",
                   kv_size_multiplier=2, lora_rank=3, tag_weight_qkv=False),
    "T4-m2": Shape(tp=4, heads=8, kv_heads=2, head_dim=2, hidden=3, intermediate=8, vocab=4, attention="gqa",
                   kv_size_multiplier=2, tag_weight_qkv=False),
    "T4-m4": Shape(tp=4, heads=8, kv_heads=2, head_dim=1, hidden=2, intermediate=4, vocab=4, attention="gqa",
                   kv_size_multiplier=4, lora_rank=3, tag_weight_qkv=False),
}  # fmt: skip
CASES = [(shape, fuse_qkv) for shape in SHAPES for fuse_qkv in (False, True)]


def _shape(key: str, fuse_qkv: bool) -> Shape:
    return dataclasses.replace(SHAPES[key], fuse_qkv=fuse_qkv)


def _peft_model(module, s: Shape) -> nn.Module:
    """The PEFT-wrapped tree with a second adapter, `other`, beside `default` on every LoRA layer."""
    model, twin = build_model(module, s, lora=True), build_model(module, s, lora=True)
    # Taken from a twin tree: deep copies of meta parameters lose their tensor-parallel attributes.
    for wrapper, source in zip(list(model.modules()), list(twin.modules()), strict=True):
        if isinstance(wrapper, LoraWrapper):
            wrapper.lora_A["other"] = source.lora_A["default"]
            wrapper.lora_B["other"] = source.lora_B["default"]
    model.parameters_for_current_stage = set(model.state_dict())
    return model


def _shards_dir(checkpoint: Path, adapter: str) -> Path:
    return checkpoint / f"adapter_{adapter}" / "adapter_shards"


def _shard_file(checkpoint: Path, adapter: str, rank: int) -> Path:
    return _shards_dir(checkpoint, adapter) / "model" / f"dp_rank_00_tp_rank_{rank:02d}_pp_rank_00.pt"


def write_adapter_checkpoint(
    checkpoint: Path, s: Shape, module=tu
) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, list[dict[str, torch.Tensor]]]]:
    """Save both adapters as `NeuronPeftModel.save_pretrained` does, each rank's tensors from `module`'s load.

    Returns the original adapters and the per-rank state dicts written, by adapter name.
    """
    model = _peft_model(module, s)
    metadata = json.dumps(module.create_parameter_metadata(model), indent=4)
    originals, written = {}, {}
    for adapter, seed in ADAPTERS.items():
        originals[adapter] = full_adapter_state_dict(s, seed=seed)
        written[adapter] = load_ranks(module, model, [originals[adapter]], s.tp, adapter_name=adapter)
        shards = _shards_dir(checkpoint, adapter)
        (shards / "model").mkdir(parents=True)
        for rank, local in enumerate(written[adapter]):
            torch.save(local, _shard_file(checkpoint, adapter, rank))
        (shards / "mp_metadata_pp_rank_0.json").write_text(metadata)
        for marker in ("checkpoint", "done"):  # NxD's marker files
            (shards / marker).write_text("1")
        LoraConfig(r=s.lora_rank, target_modules=TARGETS).save_pretrained(checkpoint / f"adapter_{adapter}")
    (checkpoint / "README.md").write_text("model card\n")
    return originals, written


def _read(path: Path, save_format: str) -> dict[str, torch.Tensor]:
    if save_format == "safetensors":
        with safe_open(path, framework="pt") as f:
            assert f.metadata() == {"format": "pt"}
        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)


def _assert_same(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert set(got) == set(expected), sorted(set(got) ^ set(expected))
    for name, tensor in expected.items():
        assert got[name].dtype == tensor.dtype and torch.equal(got[name], tensor), name


def _query_heads(s: Shape, rank: int) -> list[int]:
    """Original query heads of `rank`'s slots: the closed form of §2.6, written independently."""
    T, H, KV, m = s.tp, s.heads, s.kv_heads, s.kv_size_multiplier
    Hr, G = H // T, H // KV
    Gr = Hr // (KV * m // T)
    return [g % Gr + ((g // Gr) % KV) * G + (g // (H // m)) * Gr for g in range(rank * Hr, (rank + 1) * Hr)]


def _assert_rank_layout(s: Shape, original: dict[str, torch.Tensor], per_rank: list[dict]) -> None:
    """What the load path wrote is permuted (o_proj's lora_A) and averaged (fused lora_A) as documented."""
    order = [h for r in range(s.tp) for h in _query_heads(s, r)]
    assert sorted(order) == list(range(s.heads)) and order != sorted(order)  # a real permutation
    for i in range(s.layers):
        p = f"base_model.model.model.layers.{i}"
        heads = torch.chunk(original[f"{p}.self_attn.o_proj.lora_A.weight"], s.heads, dim=1)
        gate_up = torch.stack([original[f"{p}.mlp.{n}_proj.lora_A.weight"] for n in ("gate", "up")]).mean(0)
        qkv = torch.stack([original[f"{p}.self_attn.{n}_proj.lora_A.weight"] for n in "qkv"]).mean(0)
        for r, local in enumerate(per_rank):
            o_local = torch.cat([heads[h] for h in _query_heads(s, r)], dim=1)
            assert torch.equal(local[f"{p}.self_attn.o_proj.lora_A.weight"], o_local), (i, r)
            assert torch.equal(local[f"{p}.mlp.gate_up_proj.lora_A.weight"], gate_up), (i, r)
            assert torch.equal(local[f"{p}.self_attn.qkv_proj.lora_A.weight"], qkv), (i, r)


@pytest.mark.parametrize("save_format", ["safetensors", "pytorch"])
@pytest.mark.parametrize(("shape", "fuse_qkv"), CASES)
def test_each_adapter_is_consolidated_to_its_peft_file(tmp_path, shape, fuse_qkv, save_format):
    s = _shape(shape, fuse_qkv)
    checkpoint, out = tmp_path / "checkpoint", tmp_path / "out"
    originals, written = write_adapter_checkpoint(checkpoint, s)
    adapter_keys = saved_names(_peft_model(tu, s), tu, adapter_only=True)
    for adapter in ADAPTERS:
        assert all(set(local) == adapter_keys for local in written[adapter])
        _assert_rank_layout(s, originals[adapter], written[adapter])

    consolidate_model_parallel_checkpoints_to_unified_checkpoint(checkpoint, out, save_format=save_format)

    file = FILE[save_format]
    # `default` at the root, others in a folder of their name; no index (one file each), no config copied.
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == [file, "other", f"other/{file}"]
    for adapter, directory in (("default", out), ("other", out / "other")):
        got = _read(directory / file, save_format)
        assert set(got) == set(originals[adapter])  # exactly PEFT's adapter-free key set
        # lora_B and o_proj's lora_A exact, the lora_A of gate/up and of q/k/v the mean of the group.
        _assert_same(got, expected_consolidated_adapter(s, originals[adapter]))


@pytest.mark.parametrize("save_format", ["safetensors", "pytorch"])
def test_large_adapters_are_numbered_shards_with_an_index_named_after_the_file_ON_04(tmp_path, save_format):
    s = _shape("T4-m2", True)
    checkpoint, whole, split = tmp_path / "checkpoint", tmp_path / "whole", tmp_path / "split"
    write_adapter_checkpoint(checkpoint, s)
    consolidate_model_parallel_checkpoints_to_unified_checkpoint(checkpoint, whole, save_format=save_format)
    consolidate_model_parallel_checkpoints_to_unified_checkpoint(
        checkpoint, split, save_format=save_format, max_shard_size=400
    )
    # The base model's index names follow the same rule (transformers' constants).
    assert {f"{n}.index.json" for n in (SAFE_WEIGHTS_NAME, WEIGHTS_NAME)} == {
        SAFE_WEIGHTS_INDEX_NAME,
        WEIGHTS_INDEX_NAME,
    }
    file = FILE[save_format]
    stem, extension = file.split(".")
    for directory in (Path("."), Path("other")):
        names = sorted(p.name for p in (split / directory).iterdir() if p.is_file())
        index_name = f"{file}.index.json"
        assert index_name in names
        index = json.loads((split / directory / index_name).read_text())
        shards = sorted(set(index["weight_map"].values()))
        assert len(shards) > 1 and sorted(names) == sorted([index_name, *shards])
        assert shards == [
            f"{stem}-{i:05d}-of-{len(shards):05d}.{extension}" for i in range(1, len(shards) + 1)
        ]
        merged = {}
        for shard in shards:
            part = _read(split / directory / shard, save_format)
            assert all(index["weight_map"][name] == shard for name in part)
            merged |= part
        _assert_same(merged, _read(whole / directory / file, save_format))


@pytest.mark.parametrize(("shape", "fuse_qkv"), CASES)
def test_the_released_to_original_weights_gives_the_same_tensors(tmp_path, shape, fuse_qkv):
    """optimum-neuron 0.4.5's consolidation of the same files (metadata and shards) agrees bit for bit."""
    on = load_oracle()
    s = _shape(shape, fuse_qkv)
    checkpoint, out = tmp_path / "checkpoint", tmp_path / "out"
    write_adapter_checkpoint(checkpoint, s)
    consolidate_model_parallel_checkpoints_to_unified_checkpoint(checkpoint, out)
    for adapter, directory in (("default", out), ("other", out / "other")):
        metadata = json.loads((_shards_dir(checkpoint, adapter) / "mp_metadata_pp_rank_0.json").read_text())
        entries = metadata["model_weight_transformation_specs"]
        specs = [on.ModelWeightTransformationSpecs.from_metadata(entry) for entry in entries]
        per_rank = [torch.load(_shard_file(checkpoint, adapter, r), weights_only=True) for r in range(s.tp)]
        sharded = {name: [local[name] for local in per_rank] for name in per_rank[0]}
        theirs = on.to_original_weights(specs, sharded, metadata["parameters"], adapter_name=adapter)
        _assert_same(_read(directory / FILE["safetensors"], "safetensors"), theirs)


@pytest.mark.parametrize("shape", list(SHAPES))
def test_the_released_load_path_names_fused_gqa_lora_b_after_no_parameter_ON_02(tmp_path, shape):
    """The released load's per-rank dicts, saved as if the model had taken them whole.

    Without fuse_qkv their keys are the parameters' and they consolidate to the same adapter. With it,
    the GQA lora_B comes as `qkv_proj.lora_B.weight` while the parameter (and consolidation) is
    `qkv_proj.lora_B.<adapter>.weight_qkv` (ON-02): on Trainium that lora_B is not loaded; here the
    checkpoint lacks the name consolidation needs.
    """
    on = load_oracle()
    for fuse_qkv in (False, True):
        s = _shape(shape, fuse_qkv)
        checkpoint, out = tmp_path / f"released-{fuse_qkv}", tmp_path / f"out-{fuse_qkv}"
        originals, written = write_adapter_checkpoint(checkpoint, s, module=on)
        parameters = saved_names(_peft_model(on, s), on, adapter_only=True)
        attention = [f"base_model.model.model.layers.{i}.self_attn.qkv_proj.lora_B" for i in range(s.layers)]
        misnamed = {f"{p}.weight" for p in attention} | {f"{p}.weight_qkv" for p in attention}
        for adapter in ADAPTERS:
            for local in written[adapter]:
                assert set(local) ^ parameters == (misnamed if fuse_qkv else set())
        if fuse_qkv:
            with pytest.raises(KeyError, match=r"qkv_proj\.lora_B\.weight_qkv"):
                consolidate_model_parallel_checkpoints_to_unified_checkpoint(checkpoint, out)
            continue
        consolidate_model_parallel_checkpoints_to_unified_checkpoint(checkpoint, out)
        for adapter, directory in (("default", out), ("other", out / "other")):
            got = load_file(directory / FILE["safetensors"])
            _assert_same(got, expected_consolidated_adapter(s, originals[adapter]))


def test_a_folder_without_adapter_or_model_shards_is_refused(tmp_path):
    (tmp_path / "checkpoint" / "adapters").mkdir(parents=True)
    with pytest.raises(ValueError, match="Could not find the tensor parallel shards"):
        consolidate_model_parallel_checkpoints_to_unified_checkpoint(
            tmp_path / "checkpoint", tmp_path / "out"
        )
