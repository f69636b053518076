"""Sizes found by the analysis, evaluated on a real config, against the instantiated transformers model.

The oracle is transformers itself: each model type is built from a tiny config and every expression
of the Blueprint (layer sizes, biases, head geometry, scaling, norm widths, scales) must reproduce the
shapes and attributes of the modules it describes.
"""

from __future__ import annotations

import functools
import re

import pytest
import torch
import transformers
from torch import nn

from scaffold.blueprint import Expr, LayerKind

from .conftest import TARGETS, blueprint_of, located

TINY = dict(
    vocab_size=96,
    hidden_size=32,
    intermediate_size=40,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
)
# head_dim != hidden/heads wherever the config class takes head_dim (llama, mistral, qwen3).
EXTRA = {
    "llama": dict(head_dim=16, attention_bias=True, mlp_bias=True),
    "mistral": dict(head_dim=12, sliding_window=8),
    "qwen2": dict(use_sliding_window=True, sliding_window=8, max_window_layers=1),
    "qwen3": dict(head_dim=16, use_sliding_window=True, sliding_window=8, max_window_layers=1),
    "granite": dict(
        attention_multiplier=0.3, embedding_multiplier=2.5, residual_multiplier=0.5, logits_scaling=4.0
    ),
}


@functools.cache
def tiny(model_type: str) -> tuple[object, nn.Module]:
    """A tiny config and the transformers causal LM built from it."""
    source = located(model_type)
    config = source.config_class(**TINY, **EXTRA[model_type])
    torch.manual_seed(0)
    model = getattr(transformers, source.causal_lm_class)(config).eval()
    return config, model


def instance(model: nn.Module, path: str, index: int = 0) -> nn.Module:
    return model.get_submodule(path.replace("*", str(index)))


def starred(name: str) -> str:
    return re.sub(r"\.\d+(?=\.|$)", ".*", name)


@pytest.mark.parametrize("model_type", TARGETS)
def test_every_linear_and_embedding_is_a_site(model_type: str):
    _, model = tiny(model_type)
    expected = {
        starred(name)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear | nn.Embedding)
    }
    assert {site.path for site in blueprint_of(model_type).sites} == expected


@pytest.mark.parametrize("model_type", TARGETS)
def test_site_expressions_give_the_weight_shapes(model_type: str):
    config, model = tiny(model_type)
    for site in blueprint_of(model_type).sites:
        for index in range(config.num_hidden_layers if "*" in site.path else 1):
            module = instance(model, site.path, index)
            values = {"layer_idx": index}
            in_features = site.in_features.evaluate(config, **_needed(site.in_features, values))
            out_features = site.out_features.evaluate(config, **_needed(site.out_features, values))
            if site.kind is LayerKind.EMBEDDING:
                assert tuple(module.weight.shape) == (in_features, out_features), site.path
            else:
                assert tuple(module.weight.shape) == (out_features, in_features), site.path
                assert bool(site.bias.evaluate(config)) == (module.bias is not None), site.path


@pytest.mark.parametrize("model_type", TARGETS)
def test_attention_geometry_matches_the_projections(model_type: str):
    config, model = tiny(model_type)
    (geometry,) = blueprint_of(model_type).attention
    attention = instance(model, geometry.path)
    heads = geometry.num_heads.evaluate(config)
    kv_heads = geometry.num_kv_heads.evaluate(config)
    head_dim = geometry.head_dim.evaluate(config)
    assert head_dim == attention.head_dim
    assert getattr(attention, geometry.q).weight.shape[0] == heads * head_dim
    assert getattr(attention, geometry.k).weight.shape[0] == kv_heads * head_dim
    assert getattr(attention, geometry.v).weight.shape[0] == kv_heads * head_dim
    assert getattr(attention, geometry.o).weight.shape[1] == heads * head_dim
    assert geometry.scaling is not None
    assert geometry.scaling.evaluate(config) == pytest.approx(attention.scaling)


def test_head_dim_differs_from_hidden_over_heads_for_qwen3():
    config, model = tiny("qwen3")
    (geometry,) = blueprint_of("qwen3").attention
    assert geometry.head_dim.evaluate(config) == 16 != config.hidden_size // config.num_attention_heads
    assert instance(model, geometry.path + "." + geometry.q).weight.shape == (4 * 16, 32)


@pytest.mark.parametrize("model_type", ["qwen2", "qwen3"])
def test_per_layer_sliding_window_follows_layer_types(model_type: str):
    config, model = tiny(model_type)
    (geometry,) = blueprint_of(model_type).attention
    assert geometry.sliding_window is not None and geometry.sliding_window.variables == ("layer_idx",)
    windows = [geometry.sliding_window.evaluate(config, layer_idx=i) for i in range(config.num_hidden_layers)]
    assert windows == [
        instance(model, geometry.path, i).sliding_window for i in range(config.num_hidden_layers)
    ]
    assert None in windows and 8 in windows  # max_window_layers=1 mixes both kinds


@pytest.mark.parametrize("model_type", TARGETS)
def test_norm_widths_and_mlp_size(model_type: str):
    config, model = tiny(model_type)
    blueprint = blueprint_of(model_type)
    for norm in blueprint.norms:
        assert instance(model, norm.path).weight.shape[0] == norm.width.evaluate(config), norm.path
    (mlp,) = blueprint.mlps
    gate = instance(model, f"{mlp.path}.{mlp.gate}")
    assert gate.weight.shape[0] == mlp.intermediate_size.evaluate(config)
    assert mlp.activation is not None and mlp.activation.evaluate(config) == config.hidden_act


def test_granite_scales_reproduce_the_model_output():
    config, model = tiny("granite")
    features = blueprint_of("granite").features
    assert features.embedding_scale is not None and features.logits_scale is not None
    assert features.embedding_scale.factor.evaluate(config) == model.model.embedding_multiplier
    assert [scale.applies_to for scale in features.residual_scales] == ["self_attn", "mlp"]
    for scale in features.residual_scales:
        assert scale.factor.evaluate(config) == model.model.layers[0].residual_multiplier
    ids = torch.arange(10).reshape(1, 10)
    with torch.no_grad():
        hidden = model.model(ids).last_hidden_state
        logits = model(ids).logits
    assert features.logits_scale.op == "/"
    expected = model.lm_head(hidden) / features.logits_scale.factor.evaluate(config)
    torch.testing.assert_close(logits, expected, rtol=0, atol=0)


def _needed(expr: Expr, values: dict[str, int]) -> dict[str, int]:
    return {name: values[name] for name in expr.variables}
