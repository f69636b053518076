"""The builder: deterministic, cached, concurrency-safe transformers checkpoints, loadable by transformers."""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file

from reference_models import build, cache_root, variant
from reference_models.__main__ import main
from reference_models.builder import MANIFEST, checkpoint_key, seeded_model


def _files(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


@pytest.mark.parametrize("key", ["llama/tied", "qwen3/features", "granite/gqa"])
def test_two_caches_hold_byte_identical_checkpoints(tmp_path: Path, key: str) -> None:
    first, second = build(key, tmp_path / "a"), build(key, tmp_path / "b")
    assert first.name == second.name
    assert set(_files(first)) == {"config.json", "generation_config.json", "model.safetensors", MANIFEST}
    assert _files(first) == _files(second)


def test_a_cached_checkpoint_is_reused_not_rewritten(tmp_path: Path) -> None:
    folder = build("mistral/gqa", tmp_path)
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert build(variant("mistral/gqa"), tmp_path) == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp


def test_the_key_follows_config_and_seed() -> None:
    keys = {checkpoint_key(variant(k)) for k in ("llama/gqa", "llama/mqa", "mistral/gqa")}
    assert len(keys) == 3
    assert checkpoint_key(variant("llama/gqa"), seed=1) != checkpoint_key(variant("llama/gqa"))


def test_cache_location_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NXD_SCAFFOLD_CACHE", str(tmp_path / "env"))
    assert cache_root() == tmp_path / "env" / "reference-models"
    assert build("qwen2/mha").parent == tmp_path / "env" / "reference-models"
    monkeypatch.delenv("NXD_SCAFFOLD_CACHE")
    assert cache_root() == Path.home() / ".cache" / "nxd-scaffold" / "reference-models"
    assert cache_root(tmp_path) == tmp_path


def test_concurrent_builds_agree_and_leave_no_partial_folder(tmp_path: Path) -> None:
    cache = tmp_path / "shared"
    with ThreadPoolExecutor(4) as pool:
        folders = list(pool.map(lambda _: build("granite/features", cache), range(4)))
    assert len(set(folders)) == 1
    assert [p.name for p in cache.iterdir()] == [folders[0].name]  # no staging folder left behind
    assert _files(folders[0]) == _files(build("granite/features", tmp_path / "alone"))


def test_transformers_loads_what_was_built(tmp_path: Path) -> None:
    entry = variant("llama/features")
    folder = build(entry, tmp_path)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager")
    assert type(loaded).__name__ == "LlamaForCausalLM"
    for name, value in entry.config_values().items():
        assert getattr(loaded.config, name) == value, name
    expected = seeded_model(entry).state_dict()
    actual = loaded.state_dict()
    assert sorted(actual) == sorted(expected)
    for name, tensor in expected.items():
        assert actual[name].dtype == torch.float32
        assert torch.equal(actual[name], tensor), name
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["variant"] == "llama/features" and manifest["key"] in folder.name


def test_constant_initialisations_are_perturbed(tmp_path: Path) -> None:
    weights = load_file(build("llama/features", tmp_path) / "model.safetensors")
    norms = [name for name in weights if name.endswith("norm.weight")]
    biases = [name for name in weights if name.endswith(".bias")]
    assert len(norms) == 5 and len(biases) == 2 * (4 + 3)  # q/k/v/o and gate/up/down per layer
    for name in norms + biases:
        assert weights[name].unique().numel() == weights[name].numel(), name
    for name in norms:
        assert 0.5 <= float(weights[name].min()) and float(weights[name].max()) <= 1.5


def test_tied_checkpoint_stores_the_embedding_once(tmp_path: Path) -> None:
    weights = load_file(build("qwen2/tied", tmp_path) / "model.safetensors")
    assert "lm_head.weight" not in weights and "model.embed_tokens.weight" in weights
    untied = load_file(build("qwen2/gqa", tmp_path) / "model.safetensors")
    assert "lm_head.weight" in untied


def test_cli_lists_and_builds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    listing = capsys.readouterr().out
    assert "llama/gqa" in listing and "granite/features" in listing
    assert "separate, separate, gqa" in listing  # gqa: T=1, 2, 4
    assert "separate|fused" in listing  # mha with fuse_qkv
    assert "rejected" in listing  # odd-vocab at T=4
    assert main(["list", "--arch", "gemma"]) == 0
    assert "gemma/head-dim" in capsys.readouterr().out
    assert main(["list", "--arch", "cohere2"]) == 0
    listing = capsys.readouterr().out
    assert "cohere2 (every variant):" in listing
    assert "logit_scale 0.0625 -> 2.0" in listing and "layer_norm_eps 1e-05 -> 3e-05" in listing
    assert "cohere2/features also: attention_bias False -> True" in listing
    assert "dropout fields, kept (compared runs set them to 0): attention_dropout" in listing
    assert main(["list", "--arch", "mamba"]) == 2
    assert "MambaConfig does not take" in capsys.readouterr().err

    assert main(["build", "qwen3/mha", "--cache", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    built = [p for p in tmp_path.iterdir() if p.name.startswith("qwen3-mha-")]
    assert len(built) == 1 and str(built[0]) in out

    assert main(["build", "qwen3/nope", "--cache", str(tmp_path)]) == 2
    assert "qwen3/gqa" in capsys.readouterr().err
    assert os.listdir(tmp_path) == [built[0].name]
