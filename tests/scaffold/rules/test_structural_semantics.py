"""The structural rules (NXS001-NXS013) keep what the model computes: transformers' own model is the oracle.

- After NXS001-NXS003 (pruning, no KV cache, absolute imports) the file is plain transformers code: it is
  executed on its own and must give transformers' logits and loss bit for bit, padding mask included.
- After NXS013 (trn_config threaded, Neuron classes, ParallelEmbedding, SP norms, the base model's
  forward, the vocabulary-parallel head) the file is mounted on the reference host and loaded with
  `from_pretrained` from a transformers checkpoint at TP=1, with the host's causal mask (the attention
  rewrites that recompute a mask come later, in NXS020+), with and without gradient checkpointing. Mistral
  runs with a 3-token sliding window, shorter than the sequence, so the window matters.
"""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from conformance.tensor_parallel_run import run_tensor_parallel

from ..conftest import TARGETS, blueprint_of
from .pipeline_states import module_after

TINY = {
    "vocab_size": 64,
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 64,
    "tie_word_embeddings": False,
}
# What each model brings that the rules must keep (all values away from their neutral defaults).
FEATURES = {
    "llama": {"attention_bias": True, "mlp_bias": True},
    "mistral": {"sliding_window": 3},
    "qwen2": {},  # q/k/v biases by construction
    "qwen3": {"head_dim": 16},  # head_dim != hidden / heads, per-head q/k norms
    "granite": {
        "embedding_multiplier": 2.0,
        "residual_multiplier": 0.5,
        "logits_scaling": 4.0,
        "attention_multiplier": 0.3,
        "tie_word_embeddings": True,
    },
}


def _reference(model_type: str) -> AutoModelForCausalLM:
    config = AutoConfig.for_model(model_type, **{**TINY, **FEATURES[model_type]})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    with torch.no_grad():  # move norms and biases off their initial values so they are checked too
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.uniform_(0.5, 1.5)
            elif name.endswith(".bias"):
                param.normal_(0.0, 0.1)
    return model


def _batch() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    input_ids = torch.randint(0, TINY["vocab_size"], (2, 8), generator=generator)
    attention_mask = torch.ones(2, 8, dtype=torch.long)
    attention_mask[1, 6:] = 0  # right padding
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


@pytest.mark.parametrize("model_type", TARGETS)
def test_pruned_cache_free_file_computes_what_transformers_computes(model_type: str):
    code = module_after(model_type, "NXS003").code
    namespace = types.ModuleType(f"scaffolded_{model_type}_pruned")
    sys.modules[namespace.__name__] = namespace  # transformers resolves class annotations through it
    try:
        exec(compile(code, f"<{model_type} after NXS003>", "exec"), namespace.__dict__)
    finally:
        del sys.modules[namespace.__name__]
    reference = _reference(model_type)
    blueprint = blueprint_of(model_type)
    model = getattr(namespace, blueprint.causal_lm_class)(reference.config).eval()
    assert type(model).__module__ == namespace.__name__  # the file's own classes, not transformers'
    model.load_state_dict(reference.state_dict())
    batch = _batch()
    with torch.no_grad():
        expected = reference(**batch)
        actual = model(**batch)
    torch.testing.assert_close(actual.logits, expected.logits, rtol=0, atol=0)
    torch.testing.assert_close(actual.loss, expected.loss, rtol=0, atol=0)


def _on_rank(cases: dict, folders: dict) -> dict:
    """Load each case's checkpoint into the mounted generated model (TP=1) and run forward and backward."""
    from conformance.backends import activate
    from conformance.backends.reference.training.config import TrainingNeuronConfig

    backend = activate("reference")
    results = {}
    for (model_type, name), (checkpoint, trn_overrides, batch) in cases.items():
        package = backend.load_model_package(Path(folders[model_type]))
        cls = package.CAUSAL_LM
        trn_config = TrainingNeuronConfig(tensor_parallel_size=1, use_xser=False, **trn_overrides)
        model = cls.from_pretrained(checkpoint, trn_config)
        model.train() if trn_config.gradient_checkpointing else model.eval()
        output = model(**batch)
        output.loss.backward()
        results[(model_type, name)] = (
            output.logits.detach(),
            output.loss.detach(),
            model.model.embed_tokens.weight.grad.clone(),
        )
    for model_type, folder in folders.items():
        # Which norm weights carry the flag: TP=1 turns SP off, so force it on for construction only.
        trn_config = TrainingNeuronConfig(tensor_parallel_size=1, use_xser=False)
        trn_config.sequence_parallel_enabled = True
        checkpoint = cases[(model_type, "host-mask")][0]
        model = backend.load_model_package(Path(folder)).CAUSAL_LM.from_pretrained(checkpoint, trn_config)
        results[model_type] = {
            key: getattr(param, "sequence_parallel_enabled", None)
            for key, param in model.named_parameters()
            if key.endswith("norm.weight")
        }
    return results


@pytest.fixture(scope="module")
def tp1_results(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    root = tmp_path_factory.mktemp("structural")
    folders, cases, expected = {}, {}, {}
    batch = _batch()
    for model_type in TARGETS:
        blueprint = blueprint_of(model_type)
        # Unique per process: the launcher's ranks may outlive one test module, and a mounted package name
        # cannot be re-mounted from another folder.
        folder = root / f"scaffolded_{model_type}_{os.getpid()}"
        folder.mkdir()
        (folder / f"modeling_{model_type}.py").write_text(module_after(model_type, "NXS013").code)
        (folder / "__init__.py").write_text(
            f"from .modeling_{model_type} import {blueprint.causal_lm_class} as CAUSAL_LM\n"
        )
        folders[model_type] = str(folder)
        reference = _reference(model_type)
        checkpoint = root / f"{model_type}-checkpoint"
        reference.save_pretrained(checkpoint)
        output = reference(**batch)
        output.loss.backward()
        gradient = reference.get_input_embeddings().weight.grad.clone()
        for name, trn_overrides in {
            "host-mask": {"recompute_causal_mask": False},
            "checkpointed": {"recompute_causal_mask": False, "gradient_checkpointing": True},
        }.items():
            cases[(model_type, name)] = (str(checkpoint), trn_overrides, batch)
            expected[(model_type, name)] = (output.logits.detach(), output.loss.detach(), gradient)
    (results,) = run_tensor_parallel(_on_rank, 1, cases, folders, timeout=300.0)
    return results, expected


CASE_IDS = [(model_type, name) for model_type in TARGETS for name in ("host-mask", "checkpointed")]


@pytest.mark.parametrize("case", CASE_IDS, ids=[f"{m}-{n}" for m, n in CASE_IDS])
def test_neuron_classes_at_tp1_compute_what_transformers_computes(tp1_results, case):
    results, expected = tp1_results
    logits, loss, gradient = results[case]
    expected_logits, expected_loss, expected_gradient = expected[case]
    torch.testing.assert_close(logits, expected_logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gradient, expected_gradient, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("model_type", TARGETS)
def test_hidden_stream_norms_carry_the_sequence_parallel_flag(tp1_results, model_type: str):
    results, _ = tp1_results
    flags = results[model_type]
    per_head = {key for key in flags if key.endswith(("q_norm.weight", "k_norm.weight"))}
    assert bool(per_head) == (model_type == "qwen3")  # only Qwen3 has per-head q/k norms
    assert len(flags) - len(per_head) == 2 * TINY["num_hidden_layers"] + 1  # two per layer, the final norm
    for key, flag in flags.items():
        assert flag is (key not in per_head), key
