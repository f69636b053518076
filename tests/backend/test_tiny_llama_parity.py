"""Smoke parity of the tiny parallel Llama loaded by the host: gathered logits, loss and embedding gradients
equal transformers' `LlamaForCausalLM` (eager, fp32, same weights) at TP=2 with sequence parallelism, for
each attention variant, and with a padded attention mask when the causal mask is not recomputed.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conformance.tensor_parallel_run import run_tensor_parallel

from .host_fixtures import mount_tiny_llama, reference_model, tiny_llama_config, write_checkpoint

TP = 2
CLOSE = {"rtol": 1e-5, "atol": 1e-5}
CASES = {
    # name: (config overrides, trn_config overrides, expected attention variant at TP=2)
    "separate-sp": ({"num_key_value_heads": 2}, {"sequence_parallel_enabled": True}, "separate"),
    "gqa-fused-sp": (
        {"num_key_value_heads": 1},
        {"sequence_parallel_enabled": True, "fuse_qkv": True},
        "gqa",
    ),
    "fused-tied-sp": (
        {"num_key_value_heads": 4, "tie_word_embeddings": True},
        {"sequence_parallel_enabled": True, "fuse_qkv": True},
        "fused",
    ),
    "separate-padded-mask": ({"num_key_value_heads": 2}, {"recompute_causal_mask": False}, "separate"),
    "gqa-sp-checkpointing": (
        {"num_key_value_heads": 1},
        {"sequence_parallel_enabled": True, "gradient_checkpointing": True},
        "gqa",
    ),
}


def _batch() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    input_ids = torch.randint(0, 64, (2, 8), generator=generator)
    attention_mask = torch.ones(2, 8, dtype=torch.long)
    attention_mask[1, 5:] = 0  # right padding: every query still sees at least one key
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def _run(folders: dict[str, str], batch: dict[str, torch.Tensor]) -> dict:
    from neuronx_distributed.parallel_layers.mappings import gather_from_tensor_model_parallel_region

    from conformance.backends.reference.training.config import TrainingNeuronConfig

    model_cls = mount_tiny_llama().LlamaForCausalLM
    results = {}
    for name, (_, trn_overrides, _) in CASES.items():
        trn_config = TrainingNeuronConfig(tensor_parallel_size=TP, use_xser=False, **trn_overrides)
        model = model_cls.from_pretrained(folders[name], trn_config)
        if trn_config.gradient_checkpointing:
            model.train()  # layers are checkpointed in training mode only (dropout is 0 in these configs)
        attention = model.model.layers[0].self_attn
        variant = "gqa" if attention.qkv_linear else "fused" if attention.fused_qkv else "separate"
        inputs = (
            dict(batch) if name.endswith("padded-mask") else {k: batch[k] for k in ("input_ids", "labels")}
        )
        out = model(**inputs)
        out.loss.backward()
        logits = gather_from_tensor_model_parallel_region(out.logits.detach())
        results[name] = (variant, logits, out.loss.detach(), model.model.embed_tokens.weight.grad.clone())
    return results


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("parity")
    paths = {}
    for name, (overrides, _, _) in CASES.items():
        paths[name] = root / name
        write_checkpoint(paths[name], tiny_llama_config(**overrides), seed=1)
    return paths


def test_logits_loss_and_embedding_gradients_match_transformers(folders: dict[str, Path]) -> None:
    batch = _batch()
    results = run_tensor_parallel(_run, TP, {k: str(v) for k, v in folders.items()}, batch)
    for name, (overrides, _, expected_variant) in CASES.items():
        reference = reference_model(tiny_llama_config(**overrides), seed=1)
        inputs = (
            dict(batch) if name.endswith("padded-mask") else {k: batch[k] for k in ("input_ids", "labels")}
        )
        expected = reference(**inputs)
        expected.loss.backward()
        embed_grad = reference.model.embed_tokens.weight.grad
        for rank, result in enumerate(results):
            variant, logits, loss, grad = result[name]
            assert variant == expected_variant, name
            torch.testing.assert_close(
                logits, expected.logits.detach(), **CLOSE, msg=lambda m, n=name: f"{n}: {m}"
            )
            torch.testing.assert_close(
                loss, expected.loss.detach(), **CLOSE, msg=lambda m, n=name: f"{n}: {m}"
            )
            torch.testing.assert_close(
                grad, embed_grad.chunk(TP)[rank], **CLOSE, msg=lambda m, n=name: f"{n} embed grad: {m}"
            )
