"""Configuration constants compared module by module name the module, both values and the config field.
Oracle: transformers' own modules built from two configs that differ in one field."""

from __future__ import annotations

import torch
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRMSNorm, LlamaRotaryEmbedding

from conformance.comparisons.module_constants import constant_reasons, module_constants


def _model(rope_theta: float, eps: float) -> torch.nn.Module:
    config = LlamaConfig(hidden_size=64, num_attention_heads=8, rope_theta=rope_theta, rms_norm_eps=eps)
    model = torch.nn.Module()
    model.rotary_emb = LlamaRotaryEmbedding(config)
    model.norm = LlamaRMSNorm(64, eps=eps)
    return model


def test_the_same_config_gives_no_reason() -> None:
    assert (
        constant_reasons(module_constants(_model(5e5, 1e-5)), module_constants(_model(5e5, 1e-5)), {}) == []
    )


def test_a_default_rope_theta_and_epsilon_are_named() -> None:
    config = LlamaConfig(rope_theta=5e5, rms_norm_eps=1e-5).to_dict()
    reasons = constant_reasons(
        module_constants(_model(1e4, 1e-6)), module_constants(_model(5e5, 1e-5)), config
    )
    assert reasons[0] == (
        "norm.variance_epsilon is 1e-06 in the model but 1e-05 in transformers' (config.rms_norm_eps = 1e-05): "
        "a constant written in the code where the config's value belongs"
    )
    assert reasons[1].startswith("buffer rotary_emb.inv_freq differs from transformers' (max |d| ")
    assert "a hard-coded rope theta or scaling" in reasons[1]
    assert len(reasons) == 2
