"""The attention paths the parity matrix does not reach, on generated models at TP=2 with sequence
parallelism: the Neuron flash path (`attn_implementation="flash_attention_2"`) and the host's 4-D
padding mask (`recompute_causal_mask=False`) through the eager function NXS023 rewrote.

Oracle: transformers' model (eager, fp32) on the same checkpoint; logits of the non-padded positions,
the loss, and gradients of layer 0's o_proj shard, input norm (which the attention's backward reaches
through the projections and the layout changes of NXS022) and per-head q_norm (replicated: the full
gradient on every rank).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from conformance.tensor_parallel_run import run_tensor_parallel

from ..conftest import blueprint_of
from .generated_stages import module_after

TP = 2
MODELS = {"llama": {"attention_bias": True, "mlp_bias": True}, "qwen3": {"head_dim": 16}}
CASES = {
    "flash": {"attn_implementation": "flash_attention_2"},
    "padded-host-mask": {"recompute_causal_mask": False},
}


def _config(model_type: str):
    return AutoConfig.for_model(
        model_type,
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=False,
        **MODELS[model_type],
    )


def _reference(model_type: str) -> torch.nn.Module:
    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_config(_config(model_type), attn_implementation="eager").eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("norm.weight"):
                parameter.uniform_(0.5, 1.5)
            elif name.endswith("bias"):
                parameter.uniform_(-0.5, 0.5)
    return model


def _batch(padded: bool) -> dict[str, torch.Tensor]:
    input_ids = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(3))
    if not padded:
        return {"input_ids": input_ids, "labels": input_ids.clone()}
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, 6:] = 0
    return {"input_ids": input_ids, "attention_mask": mask, "labels": input_ids.masked_fill(mask == 0, -100)}


def _on_rank(packages: dict[str, tuple[str, str]], checkpoints: dict[str, str]) -> dict:
    import os

    from neuronx_distributed.parallel_layers.mappings import gather_from_tensor_model_parallel_region

    from conformance.backends import activate
    from conformance.backends.reference.training.config import TrainingNeuronConfig

    os.environ["NXD_REFERENCE_FLASH_ATTN_SEQ_MULTIPLE"] = "8"
    backend = activate("reference")
    results = {}
    for model_type, (folder, class_name) in packages.items():
        model_class = getattr(backend.load_model_package(Path(folder)), class_name)
        for case, settings in CASES.items():
            settings = dict(settings)
            attention = settings.pop("attn_implementation", None)
            trn_config = TrainingNeuronConfig(
                tensor_parallel_size=TP, sequence_parallel_enabled=True, use_xser=False, **settings
            )
            extra = {"attn_implementation": attention} if attention else {}
            model = model_class.from_pretrained(checkpoints[model_type], trn_config, **extra)
            assert model.config._attn_implementation == (attention or "eager")
            output = model(**_batch(case.startswith("padded")))
            output.loss.backward()
            layer = model.model.layers[0]
            q_norm = getattr(layer.self_attn, "q_norm", None)
            results[model_type, case] = (
                gather_from_tensor_model_parallel_region(output.logits.detach()),
                output.loss.detach(),
                layer.self_attn.o_proj.weight.grad.clone(),
                layer.input_layernorm.weight.grad.clone(),
                None if q_norm is None else q_norm.weight.grad.clone(),
            )
    return results


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, tuple[str, str]], dict[str, str]]:
    root = tmp_path_factory.mktemp("generated-attention")
    packages, checkpoints = {}, {}
    for model_type in MODELS:
        blueprint = blueprint_of(model_type)
        folder = root / f"generated_{model_type}"
        folder.mkdir()
        (folder / f"modeling_{model_type}.py").write_text(module_after(model_type, "NXS024").code)
        (folder / "__init__.py").write_text(
            f"from .modeling_{model_type} import {blueprint.causal_lm_class}, {blueprint.base_model_class}\n"
        )
        packages[model_type] = (str(folder), blueprint.causal_lm_class)
        checkpoints[model_type] = str(root / f"checkpoint_{model_type}")
        _reference(model_type).save_pretrained(checkpoints[model_type])
    return packages, checkpoints


def test_flash_and_host_mask_paths_match_transformers(
    generated: tuple[dict[str, tuple[str, str]], dict[str, str]],
) -> None:
    results = run_tensor_parallel(_on_rank, TP, *generated, timeout=300)
    for model_type in MODELS:
        for case in CASES:
            batch = _batch(case.startswith("padded"))
            reference = _reference(model_type)
            expected = reference(**batch)
            expected.loss.backward()
            keep = batch.get("attention_mask", torch.ones(2, 8)).bool()
            layer = reference.model.layers[0]
            norm_grad = sum(result[model_type, case][3] for result in results)  # SP: partial per rank
            for rank, result in enumerate(results):
                logits, loss, o_grad, _, q_norm_grad = result[model_type, case]
                where = f"{model_type} {case} rank {rank}"
                torch.testing.assert_close(logits[keep], expected.logits.detach()[keep], rtol=1e-5, atol=1e-5)
                torch.testing.assert_close(loss, expected.loss.detach(), rtol=1e-5, atol=1e-6, msg=where)
                shard = layer.self_attn.o_proj.weight.grad.chunk(TP, dim=1)[rank]
                torch.testing.assert_close(o_grad, shard, rtol=1e-4, atol=1e-6, msg=where)
                if q_norm_grad is not None:  # replicated per-head norm: the full gradient on every rank
                    expected_q_norm = layer.self_attn.q_norm.weight.grad
                    torch.testing.assert_close(q_norm_grad, expected_q_norm, rtol=1e-4, atol=1e-7, msg=where)
            torch.testing.assert_close(norm_grad, layer.input_layernorm.weight.grad, rtol=1e-4, atol=1e-6)
