"""Shared helpers of the training-host tests: tiny transformers Llama checkpoints and the tiny parallel Llama.

Checkpoints are written locally by transformers' own `LlamaForCausalLM.save_pretrained` (no Hub access);
they are the independent oracle the host must reproduce.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import torch
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM

TINY_LLAMA_DIR = Path(__file__).parent / "tiny_parallel_llama"


def tiny_llama_config(**overrides) -> LlamaConfig:
    """A 2-layer Llama small enough for CPU ranks: 4 heads of 8, vocab 64 (divisible by T = 1, 2, 4)."""
    values = {
        "vocab_size": 64,
        "hidden_size": 32,
        "intermediate_size": 48,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 64,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": False,
        "attn_implementation": "eager",
    }
    values.update(overrides)
    return LlamaConfig(**values)


def reference_model(config: LlamaConfig, seed: int = 0) -> LlamaForCausalLM:
    """transformers' Llama, seeded, fp32, eager, with norm weights moved off 1 so they are checked too."""
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.uniform_(0.5, 1.5)
    return model


def write_checkpoint(
    directory: Path,
    config: LlamaConfig,
    *,
    seed: int = 0,
    safe: bool = True,
    max_shard_size: str = "5GB",
    dtype: torch.dtype | None = None,
) -> LlamaForCausalLM:
    """Save a seeded reference model with transformers (sharded with an index when over `max_shard_size`)."""
    model = reference_model(config, seed)
    if dtype is not None:
        model = model.to(dtype)
    model.save_pretrained(directory, safe_serialization=safe, max_shard_size=max_shard_size)
    return model


def load_weights(directory: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the transformers-format weight files in `directory` (single file or indexed shards)."""
    directory = Path(directory)
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = directory / index_name
        if index.is_file():
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            break
    else:
        files = [name for name in ("model.safetensors", "pytorch_model.bin") if (directory / name).is_file()]
    if not files:
        raise FileNotFoundError(f"no weights in {directory}")
    weights: dict[str, torch.Tensor] = {}
    for name in files:
        path = directory / name
        part = load_file(path) if name.endswith(".safetensors") else torch.load(path, weights_only=True)
        assert not set(part) & set(weights), f"{name} repeats tensors"
        weights.update(part)
    return weights


def mount_tiny_llama() -> ModuleType:
    """Activate the reference backend and mount the tiny parallel Llama package (call it on a rank)."""
    from conformance.backends import activate

    return activate("reference").load_model_package(TINY_LLAMA_DIR)


def assert_same_state_dict(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    """Same keys, dtypes, shapes and values, bit for bit."""
    assert sorted(actual) == sorted(expected), (
        f"missing {sorted(set(expected) - set(actual))}, extra {sorted(set(actual) - set(expected))}"
    )
    for key, value in expected.items():
        assert actual[key].dtype == value.dtype, f"{key}: {actual[key].dtype} != {value.dtype}"
        assert actual[key].shape == value.shape, f"{key}: {tuple(actual[key].shape)} != {tuple(value.shape)}"
        assert torch.equal(actual[key], value), f"{key}: max |diff| {(actual[key] - value).abs().max()}"
