"""Features of the five target models against what their sources visibly do."""

from __future__ import annotations

import pytest

from .conftest import TARGETS, blueprint_of, source_line

# model -> (qkv bias, o bias, mlp bias, q/k norm, sliding window source)
EXPECTED = {
    "llama": ("config.attention_bias", "config.attention_bias", "config.mlp_bias", "none", None),
    "mistral": ("False", "False", "False", "none", 'getattr(self.config, "sliding_window", None)'),
    "qwen2": ("True", "False", "False", "none", "self.sliding_window"),
    "qwen3": ("config.attention_bias", "config.attention_bias", "False", "per_head", "self.sliding_window"),
    "granite": ("config.attention_bias", "config.attention_bias", "config.mlp_bias", "none", None),
}


@pytest.mark.parametrize("model_type", TARGETS)
def test_biases_norms_and_windows(model_type: str):
    features = blueprint_of(model_type).features
    window = features.sliding_window.source if features.sliding_window else None
    found = (
        features.qkv_bias.source,
        features.o_bias.source,
        features.mlp_bias.source,
        features.qk_norm,
        window,
    )
    assert found == EXPECTED[model_type]


@pytest.mark.parametrize("model_type", TARGETS)
def test_common_llama_family_features(model_type: str):
    features = blueprint_of(model_type).features
    assert features.mlp == "gated"
    assert features.norm_kinds == ("rms",)
    assert features.rotary
    assert features.tied_weights_keys == ("lm_head.weight",)
    assert features.tie_word_embeddings is False
    assert features.attention_softcap is None and features.final_logit_softcap is None


def test_qwen3_per_head_norms_apply_to_q_and_k():
    blueprint = blueprint_of("qwen3")
    (attention,) = blueprint.attention
    assert (attention.q_norm, attention.k_norm) == ("q_norm", "k_norm")
    norms = {norm.attribute: norm for norm in blueprint.norms if norm.normalises}
    assert norms["q_norm"].normalises == ("q_proj",) and norms["k_norm"].normalises == ("k_proj",)
    assert norms["q_norm"].width.source == "self.head_dim"


def test_granite_scales_point_at_their_lines():
    features = blueprint_of("granite").features
    assert features.attention_scaling is not None
    assert features.attention_scaling.resolved == "config.attention_multiplier"
    scales = [features.embedding_scale, *features.residual_scales, features.logits_scale]
    assert [(s.op, s.factor.resolved) for s in scales] == [
        ("*", "config.embedding_multiplier"),
        ("*", "config.residual_multiplier"),
        ("*", "config.residual_multiplier"),
        ("/", "config.logits_scaling"),
    ]
    for scale in scales:
        assert scale.factor.source in source_line("granite", scale.location.line)


@pytest.mark.parametrize("model_type", ["llama", "mistral", "qwen2", "qwen3"])
def test_no_scales_where_the_source_has_none(model_type: str):
    features = blueprint_of(model_type).features
    assert (
        features.embedding_scale is None and features.residual_scales == () and features.logits_scale is None
    )
