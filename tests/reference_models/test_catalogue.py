"""The catalogue: real transformers configs, tiny, and reaching every attention variant at T in {1, 2, 4}.

Expected attention layouts are written out by hand from the contributing guide's rule (GQA layer when
kv heads < T or kv heads % T != 0; fused qkv_proj when fuse_qkv and heads == kv heads; else separate),
not computed by the function under test.
"""

from __future__ import annotations

import pytest
import torch
import transformers
from transformers import CONFIG_MAPPING

from reference_models import (
    ARCHITECTURES,
    CATALOGUE,
    attention_variant,
    unsupported_reason,
    variant,
    variants_for,
)
from reference_models.catalogue import PARITY_SEQUENCE_LENGTH

# variant name -> {(T, fuse_qkv): layout}. The vocabulary plays no part: odd-vocab at T=4 is refused by a
# vocab-parallel model (`unsupported_reason`) but a model that keeps the vocabulary replicated builds GQA there.
SEP, FUSED, GQA = "separate", "fused", "gqa"
EXPECTED = {
    "gqa": {
        (1, False): SEP,
        (2, False): SEP,
        (4, False): GQA,
        (1, True): SEP,
        (2, True): SEP,
        (4, True): GQA,
    },
    "mqa": {
        (1, False): SEP,
        (2, False): GQA,
        (4, False): GQA,
        (1, True): SEP,
        (2, True): GQA,
        (4, True): GQA,
    },
    "mha": {
        (1, False): SEP,
        (2, False): SEP,
        (4, False): SEP,
        (1, True): FUSED,
        (2, True): FUSED,
        (4, True): FUSED,
    },
    "tied": {(t, f): SEP for t in (1, 2, 4) for f in (False, True)},
    "head-dim": {(1, False): SEP, (2, False): SEP, (4, False): GQA, (4, True): GQA},
    "odd-vocab": {(1, False): SEP, (2, False): SEP, (4, False): GQA, (4, True): GQA},
    "features": {(1, False): SEP, (2, False): SEP, (4, False): GQA},
}
TAKES_HEAD_DIM = {"llama", "mistral", "qwen3"}  # config classes of transformers 4.57 with a head_dim field


@pytest.mark.parametrize("key", list(CATALOGUE))
def test_every_variant_is_a_tiny_config_of_the_installed_class(key: str) -> None:
    entry = variant(key)
    config = entry.config()
    assert type(config) is CONFIG_MAPPING[entry.model_type]
    assert config.hidden_size == 64 and config.num_hidden_layers == 2
    assert 128 <= config.vocab_size <= 512
    assert entry.facts()["head_dim"] * config.num_attention_heads <= 128


@pytest.mark.parametrize("key", list(CATALOGUE))
def test_attention_layout_per_tp_size_matches_the_hand_written_table(key: str) -> None:
    entry = variant(key)
    for (tp_size, fuse_qkv), expected in EXPECTED[entry.name].items():
        assert entry.attention(tp_size, fuse_qkv) == expected, (key, tp_size, fuse_qkv)


def test_each_architecture_reaches_every_layout_at_t2_and_t4() -> None:
    for model_type in ARCHITECTURES:
        for tp_size in (2, 4):
            reached = {
                entry.attention(tp_size, fuse) for entry in variants_for(model_type) for fuse in (False, True)
            }
            assert {SEP, FUSED, GQA} <= reached, (model_type, tp_size, reached)


def test_attention_variant_rule() -> None:
    assert attention_variant(8, 2, 4, False) == GQA  # kv < T
    assert attention_variant(6, 3, 2, False) == GQA  # kv % T != 0
    assert attention_variant(4, 4, 2, True) == FUSED
    assert attention_variant(8, 4, 2, True) == SEP  # fuse_qkv needs heads == kv heads
    assert attention_variant(4, 4, 4, False) == SEP


def test_head_dim_variant_exists_only_where_the_config_has_the_field() -> None:
    with_variant = {e.model_type for e in CATALOGUE.values() if e.name == "head-dim"}
    assert with_variant == TAKES_HEAD_DIM
    for model_type in TAKES_HEAD_DIM:
        config = variant(f"{model_type}/head-dim").config()
        assert config.head_dim * config.num_attention_heads != config.hidden_size
        assert config.head_dim == 32
        # The other variants pin head_dim to hidden/heads (qwen3's own default is 128).
        gqa = variant(f"{model_type}/gqa").config()
        assert gqa.head_dim == gqa.hidden_size // gqa.num_attention_heads


def test_odd_vocabulary_is_rejected_only_where_it_does_not_divide() -> None:
    for model_type in ARCHITECTURES:
        entry = variant(f"{model_type}/odd-vocab")
        assert entry.config().vocab_size % 4 != 0
        assert entry.unsupported_reason(1) is None and entry.unsupported_reason(2) is None
        reason = entry.unsupported_reason(4)
        assert reason is not None and "250" in reason and "4" in reason
        assert variant(f"{model_type}/gqa").unsupported_reason(4) is None


def test_unsupported_reason_checks_heads_and_mlp_too() -> None:
    config = CONFIG_MAPPING["llama"](
        vocab_size=252, hidden_size=48, intermediate_size=90, num_attention_heads=6, num_key_value_heads=3
    )
    reason = unsupported_reason(config, 4)
    assert "num_attention_heads 6" in reason and "intermediate_size 90" in reason
    assert "num_key_value_heads 3" in reason  # 3 kv heads x multiplier 1 over 4 ranks
    assert unsupported_reason(config, 3) is None


def test_architecture_traits_change_the_transformers_model() -> None:
    for entry in variants_for("mistral"):
        assert entry.config().sliding_window < PARITY_SEQUENCE_LENGTH
    for entry in variants_for("granite"):
        config = entry.config()
        multipliers = (config.embedding_multiplier, config.residual_multiplier, config.logits_scaling)
        assert all(value != 1.0 for value in multipliers)
        assert config.attention_multiplier != (config.hidden_size // config.num_attention_heads) ** -0.5


@pytest.mark.parametrize("model_type", ["qwen2", "qwen3"])
def test_qwen_features_put_a_sliding_window_on_layer_1_only(model_type: str) -> None:
    config = variant(f"{model_type}/features").config()
    config._attn_implementation = "eager"
    model = transformers.AutoModelForCausalLM.from_config(config)
    windows = [layer.self_attn.sliding_window for layer in model.model.layers]
    assert windows == [None, 5]
    assert all(
        layer.self_attn.sliding_window is None
        for layer in type(model)(variant(f"{model_type}/gqa").config()).model.layers
    )


def test_biases_are_on_in_llama_and_granite_features() -> None:
    for model_type in ("llama", "granite"):
        config = variant(f"{model_type}/features").config()
        assert config.attention_bias and config.mlp_bias
        assert not variant(f"{model_type}/gqa").config().attention_bias
    assert variant("qwen3/features").config().attention_bias


def test_unknown_names_list_the_catalogue() -> None:
    with pytest.raises(KeyError, match="llama/gqa"):
        variant("llama/nope")
    with pytest.raises(KeyError, match="gemma/mqa"):
        variant("gemma/nope")


@pytest.mark.parametrize(
    ("model_type", "reason"),
    [
        ("mamba", "MambaConfig does not take num_attention_heads"),
        ("t5", "no causal LM class"),
        ("no-such-model", "no config class"),
    ],
)
def test_architectures_without_the_decoder_fields_are_refused_with_what_they_lack(
    model_type: str, reason: str
) -> None:
    with pytest.raises(KeyError, match=reason):
        variants_for(model_type)


def test_a_config_without_an_mlp_width_gets_the_variants_without_one() -> None:
    # BLOOM's MLP is 4 x hidden_size wide and BloomConfig takes no width: the tiny configs pass none, and
    # the MLP (256 = 4 x 64) divides by every T the checks use.
    bloom = {entry.name: entry for entry in variants_for("bloom")}
    assert list(bloom)[:4] == ["mha-8", "mha", "tied", "odd-vocab"]
    config = bloom["mha-8"].config()
    assert not hasattr(config, "intermediate_size")
    assert (config.hidden_size, config.n_head, config.n_layer) == (64, 8, 2)
    assert unsupported_reason(config, 4) is None


def test_other_architectures_get_the_generic_variants_from_their_config_class() -> None:
    gemma = {entry.name: entry for entry in variants_for("gemma")}
    assert list(gemma) == ["gqa", "mqa", "mha", "tied", "head-dim", "odd-vocab", "features"]
    config = gemma["gqa"].config()
    assert type(config).__name__ == "GemmaConfig"
    asked = {"vocab_size": 256, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2}
    assert {name: getattr(config, name) for name in asked} == asked
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (8, 2, 8)
    # GemmaConfig offers attention_bias (default False) and no mlp_bias: `features` turns on what exists.
    assert gemma["features"].config().attention_bias and not config.attention_bias
    assert gemma["features"].summary == "attention_bias on"
    assert variant("gemma/mqa").config().num_key_value_heads == 1
    # starcoder2 takes no head_dim; its one boolean option, use_bias (default True), is off in `features`.
    starcoder2 = {entry.name: entry for entry in variants_for("starcoder2")}
    assert list(starcoder2) == ["gqa", "mqa", "mha", "tied", "odd-vocab", "features"]
    assert starcoder2["gqa"].config().use_bias and not starcoder2["features"].config().use_bias


def test_a_config_without_kv_heads_gets_one_kv_head_per_query_head() -> None:
    """GPTNeoXConfig has no num_key_value_heads: no GQA/MQA variant, the field is not passed (a config
    class would keep it as an attribute), and the layouts are those of 8 and 4 K/V heads."""
    neox = {entry.name: entry for entry in variants_for("gpt_neox")}
    assert list(neox) == ["mha-8", "mha", "tied", "odd-vocab", "features"]
    config = neox["mha-8"].config()
    assert not hasattr(config, "num_key_value_heads")
    assert config.num_attention_heads == 8 and neox["mha"].config().num_attention_heads == 4
    assert [neox["mha-8"].attention(tp) for tp in (1, 2, 4)] == ["separate"] * 3
    assert neox["mha"].attention(2, fuse_qkv=True) == "fused"
    assert neox["mha-8"].facts()["kv_heads"] == 8


def test_features_keep_the_attention_causal() -> None:
    # Gemma3TextConfig offers attention_bias and use_bidirectional_attention (both default False): the
    # second makes the model an encoder (no causal mask), which is no causal LM, so only the first flips.
    features = {entry.name: entry for entry in variants_for("gemma3_text")}["features"]
    assert features.summary == "attention_bias on"
    config = features.config()
    assert config.attention_bias and not config.use_bidirectional_attention


def test_a_default_pad_token_outside_the_tiny_vocabulary_is_brought_inside() -> None:
    from transformers import CONFIG_MAPPING

    assert CONFIG_MAPPING["smollm3"]().pad_token_id >= 256
    for entry in variants_for("smollm3"):
        config = entry.config()
        assert 0 <= config.pad_token_id < config.vocab_size
    # Every model that reads a pad token gets one inside the vocabulary and not 0 (NxD drops index 0: NXD-05).
    for entry in CATALOGUE.values():
        pad = entry.config().pad_token_id
        assert pad is not None and 0 < pad < entry.config().vocab_size, entry.key


def test_attention_biases_are_read_from_the_model_whatever_turns_them_on() -> None:
    # qwen2 hard-codes q/k/v biases (no config field), llama and qwen3 take `attention_bias`,
    # starcoder2 `use_bias` (default True).
    assert variant("qwen2/gqa").has_attention_biases()
    assert not hasattr(variant("qwen2/gqa").config(), "attention_bias")
    assert not variant("llama/gqa").has_attention_biases()
    assert variant("llama/features").has_attention_biases()
    assert (
        variant("qwen3/features").has_attention_biases() and not variant("qwen3/gqa").has_attention_biases()
    )
    assert variant("starcoder2/gqa").has_attention_biases()


def test_a_config_naming_the_mlp_width_otherwise_gets_the_tiny_sizes_under_its_name() -> None:
    """OPTConfig takes `ffn_dim` (not `intermediate_size`) and `word_embed_proj_dim`: transformers' model
    of each variant has MLPs of 96 and no embedding projections (the width stays the hidden size)."""
    variants = {entry.name: entry for entry in variants_for("opt")}
    assert list(variants) == ["mha-8", "mha", "tied", "odd-vocab", "features"]
    config = variants["mha-8"].config()
    assert not hasattr(config, "intermediate_size")
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    decoder = model.model.decoder
    assert [layer.fc1.out_features for layer in decoder.layers] == [96, 96]
    assert decoder.project_in is None and decoder.project_out is None
    assert decoder.embed_tokens.embedding_dim == 64
    assert "ffn_dim" not in variants["mha-8"].nondefault()
    odd_width = variants["mha-8"].config()
    odd_width.ffn_dim = 98
    assert "intermediate_size 98 is not divisible by 4" in unsupported_reason(odd_width, 4)


def test_a_config_checking_its_layer_count_gets_it_under_its_constructors_name() -> None:
    """GPTNeoConfig checks its layer types against `num_layers` in __init__, before its attribute map
    (num_hidden_layers -> num_layers) applies: transformers' model of each variant has the tiny layer count,
    one global then one local layer."""
    variants = {entry.name: entry for entry in variants_for("gpt_neo")}
    config = variants["mha-8"].config()
    assert config.num_layers == 2 and config.attention_layers == ["global", "local"]
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    assert len(model.transformer.h) == 2
    assert [layer.attn.attention_type for layer in model.transformer.h] == ["global", "local"]


def test_a_size_override_reaches_the_fields_the_config_derives_from_it() -> None:
    """GPTBigCodeConfig derives `num_key_value_heads` from its constructor's `n_head` (1 under `multi_query`):
    the `mha` variant's 4 heads are given under that name, so its K/V head count is transformers' own for 4
    heads, and the `multi-query` variant keeps one K/V head (the oracle: the config class built directly)."""
    variants = {entry.name: entry for entry in variants_for("gpt_bigcode")}
    assert list(variants) == ["mha-8", "mha", "tied", "odd-vocab", "features", "multi-query"]
    direct = transformers.GPTBigCodeConfig(n_head=4, multi_query=False)
    config = variants["mha"].config()
    assert (config.n_head, config.num_key_value_heads) == (4, direct.num_key_value_heads) == (4, 4)
    assert variants["mha"].attention(2, fuse_qkv=True) == "fused"
    assert not variants["mha-8"].config().multi_query
    assert variants["multi-query"].config().num_key_value_heads == 1
    assert [variants["multi-query"].attention(tp) for tp in (1, 2, 4)] == ["separate", "gqa", "gqa"]
