"""Llama's Blueprint against a hand-written table of what the optimum-neuron port holds (§5.1)."""

from __future__ import annotations

from scaffold.blueprint import ClassKind, NormScope, Role

from .conftest import blueprint_of, source_line

# path -> (role, in_features, out_features, bias), sizes as written in modeling_llama.py
EXPECTED_SITES = {
    "model.embed_tokens": ("embedding", "config.vocab_size", "config.hidden_size", "False"),
    "model.layers.*.self_attn.q_proj": (
        "column",
        "config.hidden_size",
        "config.num_attention_heads * self.head_dim",
        "config.attention_bias",
    ),
    "model.layers.*.self_attn.k_proj": (
        "column",
        "config.hidden_size",
        "config.num_key_value_heads * self.head_dim",
        "config.attention_bias",
    ),
    "model.layers.*.self_attn.v_proj": (
        "column",
        "config.hidden_size",
        "config.num_key_value_heads * self.head_dim",
        "config.attention_bias",
    ),
    "model.layers.*.self_attn.o_proj": (
        "row",
        "config.num_attention_heads * self.head_dim",
        "config.hidden_size",
        "config.attention_bias",
    ),
    "model.layers.*.mlp.gate_proj": (
        "column",
        "self.hidden_size",
        "self.intermediate_size",
        "config.mlp_bias",
    ),
    "model.layers.*.mlp.up_proj": ("column", "self.hidden_size", "self.intermediate_size", "config.mlp_bias"),
    "model.layers.*.mlp.down_proj": ("row", "self.intermediate_size", "self.hidden_size", "config.mlp_bias"),
    "lm_head": ("lm_head", "config.hidden_size", "config.vocab_size", "False"),
}

EXPECTED_CLASSES = {
    "LlamaRMSNorm": ClassKind.NORM,
    "LlamaRotaryEmbedding": ClassKind.ROTARY,
    "LlamaMLP": ClassKind.MLP,
    "LlamaAttention": ClassKind.ATTENTION,
    "LlamaDecoderLayer": ClassKind.DECODER_LAYER,
    "LlamaPreTrainedModel": ClassKind.PRETRAINED,
    "LlamaModel": ClassKind.BASE_MODEL,
    "LlamaForCausalLM": ClassKind.CAUSAL_LM,
}


def test_sites_roles_and_sizes_match_the_hand_written_table():
    blueprint = blueprint_of("llama")
    found = {
        site.path: (site.role.value, site.in_features.source, site.out_features.source, site.bias.source)
        for site in blueprint.sites
    }
    assert found == EXPECTED_SITES
    assert [site.path for site in blueprint.sites] == list(EXPECTED_SITES)  # module order


def test_layer_roles_come_from_the_tp_plan_and_agree_with_dataflow():
    blueprint = blueprint_of("llama")
    for site in blueprint.sites:
        if site.path.startswith("model.layers."):
            assert site.plan_key == site.path.removeprefix("model.")
            assert site.evidence.startswith(
                "tp plan 'colwise'" if site.role is Role.COLUMN else "tp plan 'rowwise'"
            )
            assert "dataflow agrees" in site.evidence
    assert blueprint.site("lm_head").plan_key is None
    assert blueprint.site("lm_head").evidence.startswith("dataflow")


def test_locations_point_at_the_constructor_lines():
    blueprint = blueprint_of("llama")
    assert blueprint.source_file == "transformers/models/llama/modeling_llama.py"
    for site in blueprint.sites:
        assert f"self.{site.attribute} = " in source_line("llama", site.location.line)


def test_classes_functions_and_backbone():
    blueprint = blueprint_of("llama")
    assert {plan.name: plan.kind for plan in blueprint.classes} == EXPECTED_CLASSES
    assert blueprint.functions == (
        "rotate_half",
        "apply_rotary_pos_emb",
        "repeat_kv",
        "eager_attention_forward",
    )
    backbone = blueprint.backbone
    assert (backbone.base_model_prefix, backbone.embedding, backbone.layers, backbone.decoder_layer) == (
        "model",
        "model.embed_tokens",
        "model.layers.*",
        "LlamaDecoderLayer",
    )
    assert (backbone.final_norm, backbone.rotary, backbone.lm_head) == (
        "model.norm",
        "model.rotary_emb",
        "lm_head",
    )
    assert blueprint.class_plan("LlamaAttention").paths == ("model.layers.*.self_attn",)


def test_norms_are_hidden_scope_rms():
    blueprint = blueprint_of("llama")
    assert [(norm.path, norm.kind, norm.scope) for norm in blueprint.norms] == [
        ("model.layers.*.input_layernorm", "rms", NormScope.HIDDEN),
        ("model.layers.*.post_attention_layernorm", "rms", NormScope.HIDDEN),
        ("model.norm", "rms", NormScope.HIDDEN),
    ]
    assert {norm.eps.source for norm in blueprint.norms if norm.eps} == {"config.rms_norm_eps"}


def test_attention_and_mlp_structure():
    blueprint = blueprint_of("llama")
    (attention,) = blueprint.attention
    assert (attention.q, attention.k, attention.v, attention.o) == ("q_proj", "k_proj", "v_proj", "o_proj")
    assert (attention.num_heads.source, attention.num_kv_heads.source) == (
        "config.num_attention_heads",
        "config.num_key_value_heads",
    )
    (mlp,) = blueprint.mlps
    assert (mlp.gate, mlp.up, mlp.down) == ("gate_proj", "up_proj", "down_proj")
    assert mlp.activation is not None and mlp.activation.resolved == "config.hidden_act"
    assert blueprint.refusals == ()


def test_config_fields_carry_defaults():
    fields = {field.name: field.default for field in blueprint_of("llama").config_fields}
    assert fields["attention_bias"] == "False"
    assert fields["hidden_act"] == "'silu'"
    assert fields["mlp_bias"] == "False"
    assert "vocab_size" in fields
