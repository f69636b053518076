"""Tiny configurations per architecture, named by what they exercise in a tensor-parallel model.

Every variant is a transformers config built from the installed transformers' own config class
(`CONFIG_MAPPING[model_type]`), so defaults follow the installed version. Sizes are tiny (hidden 64,
2 layers, vocabulary 256) and chosen so that, at T in {1, 2, 4}, the three attention variants of the
contributing guide are all reached:

| variant    | heads/kv | T=1      | T=2      | T=4      | what else                                   |
|------------|----------|----------|----------|----------|---------------------------------------------|
| `gqa`      | 8/2      | separate | separate | gqa m=2  | untied embeddings                           |
| `mqa`      | 8/1      | separate | gqa m=2  | gqa m=4  | kv heads < T already at T=2                 |
| `mha`      | 4/4      | sep/fused| sep/fused| sep/fused| fused `qkv_proj` when `fuse_qkv`            |
| `tied`     | 8/4      | separate | separate | separate | tied input/output embeddings                |
| `head-dim` | 4/2      | separate | separate | gqa m=2  | head_dim 32 != hidden/heads (configs with a `head_dim` field) |
| `odd-vocab`| 8/2      | separate | separate | rejected | vocabulary 250, not divisible by 4          |
| `features` | 8/2      | separate | separate | gqa m=2  | the architecture's optional features on     |

Non-default scalar fields (`nondefault`): a generated model that hard-codes a constant passes whenever the
config holds that constant, so every variant gives each scalar field the model reads (found in the modeling
file and the transformers helpers it imports: `config_reads`) a valid value other than the config class's
default, chosen by the field's name and type, never by architecture: eps 3e-5, rope theta 1234, YaRN rope
scaling (linear where the config class takes only that), another activation, init range 0.04, scales 2.0,
softcaps that bite, a sliding window of 5, token ids 3, 4, 5 (pad never 0: NXD-05), `use_cache` off.
Dropout fields keep their defaults (`dropout_fields`: compared runs set them to 0); boolean options are
flipped in `features`; tied embeddings are the `tied` variant's. `Variant.field_choices()` records, per
field, the default, the value and the rule; `Variant.nondefault()` the changed ones (reports and
`python -m reference_models list` show them).

Architecture traits are on in every variant of that architecture (mistral: a sliding window of 5, smaller
than the checks' sequence length of 16; granite: embedding 4.0, residual 0.5, attention 0.2 multipliers and
a logits divisor of 0.5). `features` turns on what the architecture offers as options (llama, granite:
attention and MLP biases; qwen2: a sliding window on layer 1 only; qwen3: attention bias and a sliding
window on layer 1). qwen2's q/k/v biases and qwen3's per-head q/k norms are part of the architecture, so
every variant has them.

Every tiny configuration overfits its batch in transformers itself, the way the overfit check trains it
(30 AdamW steps at lr 5e-3 on the checks' fixed batch of 2 x 16 tokens with padding and packed sequences,
below a tenth of ln(V)); the catalogue tests train each
built-in architecture's base variant with the checks' own reference loop (a check whose transformers run
misses the threshold says so instead of failing the model). Scales
matter here: cohere2's default `logit_scale` of 0.0625 shrinks the logits so much that 30 steps cannot grow
the LM head far enough (loss 4.5 after 30 steps); 2.0, like granite's logits divisor of 0.5, learns fast.
The init range of 0.04 (twice the usual default) speeds every architecture up as well.

Mixture of experts (a config class taking `num_experts_per_tok`: mixtral, qwen2_moe, qwen3_moe, phimoe...):
4 experts (`num_local_experts` or `num_experts`), top 2, expert MLPs of 32 (`moe_intermediate_size`; Mixtral's
experts take `intermediate_size`, 96) and a shared expert of 48 (`shared_expert_intermediate_size`, or GraniteMoeShared's
`shared_intermediate_size`, whose default 0 drops it), all
divisible by T <= 4 and the experts by EP <= 2; `output_router_logits` is on in every variant, so that the
loss holds the auxiliary load-balancing loss (with the non-default `router_aux_loss_coef` 0.02) and the checks
compare it. `unsupported_reason(config, T, EP)` adds the MoE divisibilities. A router jitter whose default is
not 0 (phimoe's `router_jitter_noise`, 0.01) is 0: in training phimoe's sparsemixer samples among the experts
within the jitter of the best, which no two runs that order or shard the tokens differently reproduce.

No routing near-tie: top-k routing is discontinuous, so a token whose k-th and (k+1)-th router logits are
nearly equal could pick another expert after a mere reordering of sums, and two correct models would part.
For each MoE checkpoint the builder keeps the first seed (from its own, upward, deterministic) whose router
logits, in transformers fp32 on the checks' fixed batch (the causal mask only, and the padding mask at the
attended positions), separate every token's k-th from its (k+1)-th expert by at least `MIN_ROUTER_MARGIN`
in every layer (`routing.router_margin`); tests/reference_models/test_routing_margin.py recomputes it from
every variant's checkpoint. What remains is reordered sums: the parallel model's router logits differ from
transformers' by ~1e-7 (fp32, T <= 4), four orders of magnitude below the margin.

Other architectures: `variants_for(<model_type>)` derives the same variants for any decoder-only causal LM
of the installed transformers whose config class takes the standard decoder fields (`vocab_size`,
`hidden_size`, `intermediate_size`, `num_hidden_layers`, `num_attention_heads`, `num_key_value_heads`), so
that a model scaffolded from another architecture can be checked as well. A field may go by another name
(`_FIELD_ALIASES`: OPT's MLP width is `ffn_dim`); a width the class keeps apart from the hidden size
(`word_embed_proj_dim`) equals it in every tiny config. Its `features` variant flips
every boolean option of the config class (`attention_bias`, `mlp_bias`, `use_bias`, `qk_layernorm`...)
but those that make the attention bidirectional (`use_bidirectional_attention`: an encoder, not a causal LM);
the non-default rule applies as above. Its `head-dim` variant is offered only where transformers' model
runs with head_dim != hidden/heads (helium's config takes `head_dim`, its `o_proj` ignores it). A type
that does not fit is refused with the fields it lacks.

Vocabulary not divisible by T (`odd-vocab` at T=4): the vocab-parallel embedding and LM head need
`V % T == 0`. NxD's `pad=True` padding is inference-only (the layer raises in training mode), and
optimum-neuron's `resize_token_embeddings` refuses a size that does not divide by T and copies rows per
rank, so it would not preserve the global row mapping of a checkpoint anyway (training semantics §3.1).
Padding the checkpoint here would only test a different, divisible model. So the catalogue keeps the odd
vocabulary and the expected outcome at such a T is a clear rejection when the model is built, naming both
numbers; `unsupported_reason` states it and the parity check treats that rejection as the right answer.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from transformers import CONFIG_MAPPING, PretrainedConfig
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from .config_reads import fields_read, modeling_module
from .nondefault import MOE_ACTIVATIONS, FieldChoice, Sizes, choose, is_dropout_field

ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3", "granite")

# The checks feed sequences of this length (divisible by every T they use, for sequence parallelism);
# sliding windows below are smaller so that they change the result.
PARITY_SEQUENCE_LENGTH = 16

_COMMON: dict[str, Any] = {
    "vocab_size": 256,
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "max_position_embeddings": 64,
    "tie_word_embeddings": False,
}

# Other names config classes give the standard decoder fields, where they take neither the standard name nor
# an `attribute_map` alias of it (OPTConfig's MLP width is `ffn_dim`). The catalogue passes the tiny size under
# the name the class takes and reads it back through `decoder_field`.
_FIELD_ALIASES: dict[str, tuple[str, ...]] = {
    "intermediate_size": ("ffn_dim", "n_inner", "ffn_hidden_size"),
    "num_key_value_heads": ("num_kv_heads",),
}
# Widths a config class may keep apart from the hidden size (OPT's `word_embed_proj_dim`, the embedding width
# projected in and out of the decoder). The tiny configs keep them equal to it: the catalogue describes the
# decoder stack, and a projected embedding is a feature of its own.
_HIDDEN_WIDTH_FIELDS = ("word_embed_proj_dim",)

# Mixture-of-experts sizes, for the fields the config class takes (the expert-count field is named either way).
_MOE_SIZES: dict[str, Any] = {
    "num_local_experts": 4,
    "num_experts": 4,
    "num_experts_per_tok": 2,
    "moe_intermediate_size": 32,
    "shared_expert_intermediate_size": 48,
    "shared_intermediate_size": 48,
}
_EXPERT_COUNT_FIELDS = ("num_local_experts", "num_experts")
_MOE_INTERMEDIATE_FIELDS = (
    "moe_intermediate_size",
    "shared_expert_intermediate_size",
    "shared_intermediate_size",
)

# Every MoE variant computes the auxiliary loss (transformers adds it to the loss only when asked).
_MOE_TRAITS: dict[str, Any] = {"output_router_logits": True}
_JITTER_OFF = (
    "mixture-of-experts trait: router jitter off (phimoe's sparsemixer samples among the experts within "
    "2 * router_jitter_noise of the best in training, which two runs that order or shard the tokens "
    "differently cannot reproduce; at 0 it takes the top 2 by logits)"
)

# Fields the catalogue sizes itself (the table above): not subject to the non-default rule.
_SIZE_FIELDS = frozenset(
    {
        *_COMMON,
        "head_dim",
        *_MOE_SIZES,
        *(alias for aliases in _FIELD_ALIASES.values() for alias in aliases),
        *_HIDDEN_WIDTH_FIELDS,
    }
)

# Head sizes across the variants below (hidden/heads for 8 and 4 heads, and the `head-dim` variant's 32):
# a partial rotary factor must give an even number of rotary dims at each.
_HEAD_DIMS = (8, 16, 32)
_MIN_VOCAB_SIZE = 250

# Boolean options the `features` variant never flips: no computation (`use_cache`) or a variant of its own.
_NOT_FEATURES = frozenset({"use_cache", "tie_word_embeddings", *_MOE_TRAITS})
# Options named for attention in both directions turn the causal LM into an encoder (embedding models
# built on a decoder): the causal LM the catalogue describes, and the host's causal mask, exclude them.
_NON_CAUSAL_MARK = "bidirectional"

# What a config class must take for the catalogue to describe it (as `__init__` parameters or aliases).
_DECODER_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
)
# Standard fields a config class may lack because its model fixes them: BLOOM's MLP is 4 x hidden_size wide
# and its config takes no width. The tiny configs pass them only to the classes that take them.
_OPTIONAL_DECODER_FIELDS = ("intermediate_size",)
# A config class without it (GPT-NeoX) gives every query head its own K/V head: its variants vary the heads only.
_KV_HEADS_FIELD = "num_key_value_heads"

# Parameter names of attention projection biases (what NxD's GQA layer cannot hold: NXD-09, ON-10).
_QKV_BIASES = ("q_proj.bias", "k_proj.bias", "v_proj.bias", "qkv_proj.bias")

_SLIDING_ON_LAYER_1 = {"use_sliding_window": True, "sliding_window": 5, "max_window_layers": 1}

# Traits every variant of an architecture carries.
_ARCHITECTURE_TRAITS: dict[str, dict[str, Any]] = {
    "mistral": {"sliding_window": 5},
    # GPT-Neo lists its layer types compressed ([pattern, repeats]); the config checks they cover
    # num_layers. One global then one local layer, the local window shorter than the fixed batch.
    "gpt_neo": {"attention_types": [[["global", "local"], 1]], "window_size": 5},
    # GPT-J rotates the first `rotary_dim` dimensions of each head (64 by default, wider than a tiny head).
    "gptj": {"rotary_dim": 4},
    # CodeGen too; its qkv_proj holds `mp_num` = 4 groups of q|v|k, and each rank cuts its own heads into 4
    # groups again: the 8 heads of the base variants keep 4 per rank at T=2 (quick), not at T=4.
    "codegen": {"rotary_dim": 4},
    # Falcon's attention layout follows two flags: K/V-grouped (`new_decoder_architecture`, its K/V heads
    # from `num_kv_heads`) in the standard variants; per-head interleaved q|k|v in `features`, one shared
    # K/V head in `multi-query` (`_ARCHITECTURE_VARIANTS`).
    "falcon": {"new_decoder_architecture": True, "multi_query": False},
    # GPTBigCode's q|k|v follow `multi_query` too: per-head interleaved with a K/V head per query head in the
    # standard variants, one shared K/V head (the class's default) in `multi-query` (`_ARCHITECTURE_VARIANTS`),
    # which the quick profile reaches as its GQA case.
    "gpt_bigcode": {"multi_query": False},
    "granite": {
        "embedding_multiplier": 4.0,
        "residual_multiplier": 0.5,
        "attention_multiplier": 0.2,
        "logits_scaling": 0.5,
    },
}

# Variants of an architecture's own, after the standard ones: (name, summary, overrides).
_ARCHITECTURE_VARIANTS: dict[str, tuple[tuple[str, str, dict[str, Any]], ...]] = {
    "falcon": (
        (
            "multi-query",
            "q heads then one shared k and v head (multi_query): GQA layer at T=2 (m=2) and T=4 (m=4)",
            {"new_decoder_architecture": False, "multi_query": True, "num_key_value_heads": 1},
        ),
    ),
    "gpt_bigcode": (
        (
            "multi-query",
            "q heads then one shared k and v head (multi_query): GQA layer at T=2 (m=2) and T=4 (m=4)",
            {"multi_query": True},
        ),
    ),
}

# Optional features, on in the `features` variant: (overrides, summary).
_ARCHITECTURE_FEATURES: dict[str, tuple[dict[str, Any], str]] = {
    "llama": ({"attention_bias": True, "mlp_bias": True}, "attention and MLP biases"),
    "qwen2": (dict(_SLIDING_ON_LAYER_1), "sliding window 5 on layer 1 only"),
    "qwen3": (
        {"attention_bias": True, **_SLIDING_ON_LAYER_1},
        "attention bias, sliding window 5 on layer 1 only",
    ),
    "granite": ({"attention_bias": True, "mlp_bias": True}, "attention and MLP biases"),
    "falcon": (
        {
            "new_decoder_architecture": False,
            "multi_query": False,
            "num_key_value_heads": 8,
            "parallel_attn": False,
            "bias": True,
        },
        "q|k|v interleaved per head (8/8), sequential attention and MLP, biases",
    ),
    # The flipped options, with a window that bites: its eager mask windows every layer (max_window_layers
    # only steers its flash path).
    "qwen2_moe": (
        {"use_sliding_window": True, "sliding_window": 5, "norm_topk_prob": True, "qkv_bias": False},
        "sliding window 5 (every layer); norm_topk_prob on; qkv_bias off",
    ),
}


def attention_variant(heads: int, kv_heads: int, tp_size: int, fuse_qkv: bool) -> str:
    """The attention layout a generated model must pick (contributing guide, DESIGN §3).

    "gqa" (NxD's `GQAQKVColumnParallelLinear`) when `kv_heads < T` or `kv_heads % T != 0`; else "fused"
    (one stride-3 `qkv_proj`) when `fuse_qkv` and `heads == kv_heads`; else "separate" q/k/v.
    """
    if kv_heads < tp_size or kv_heads % tp_size:
        return "gqa"
    if fuse_qkv and heads == kv_heads:
        return "fused"
    return "separate"


def decoder_field(config: PretrainedConfig, name: str) -> Any:
    """The value of the standard decoder field `name` in `config`, under the name its class gives it."""
    if hasattr(config, name):
        return getattr(config, name)
    for alias in _FIELD_ALIASES.get(name, ()):
        if hasattr(config, alias):
            return getattr(config, alias)
    raise AttributeError(
        f"{type(config).__name__} has no {name} (nor {', '.join(_FIELD_ALIASES.get(name, ()))})"
    )


def optional_decoder_field(config: PretrainedConfig, name: str) -> Any:
    """`decoder_field`, or None where the config class lacks a field its model fixes (`_OPTIONAL_DECODER_FIELDS`)."""
    try:
        return decoder_field(config, name)
    except AttributeError:
        if name in _OPTIONAL_DECODER_FIELDS:
            return None
        raise


def key_value_heads(config: PretrainedConfig) -> int:
    """The K/V heads of `config`: its `num_key_value_heads` (or an alias of it), or one per query head where
    it has none."""
    for name in (_KV_HEADS_FIELD, *_FIELD_ALIASES[_KV_HEADS_FIELD]):
        value = getattr(config, name, None)
        if value:
            return value
    return config.num_attention_heads


def kv_size_multiplier(kv_heads: int, tp_size: int) -> int:
    """How many times the GQA layer replicates K/V heads so that each rank holds at least one."""
    return max(1, tp_size // kv_heads)


def num_experts(config: PretrainedConfig) -> int | None:
    """The number of routed experts of a mixture-of-experts config, None for a dense one."""
    for name in _EXPERT_COUNT_FIELDS:
        value = getattr(config, name, None)
        if isinstance(value, int) and getattr(config, "num_experts_per_tok", None) is not None:
            return value
    return None


def is_moe(model_type: str) -> bool:
    """Whether the architecture routes tokens to experts (its config class takes `num_experts_per_tok`)."""
    return model_type in CONFIG_MAPPING and "num_experts_per_tok" in _config_parameters(model_type)


def unsupported_reason(config: PretrainedConfig, tp_size: int, ep_size: int = 1) -> str | None:
    """Why a tensor-parallel training model cannot be built from `config` at `tp_size` (and expert-parallel
    size `ep_size`), or None.

    Checks the divisibility NxD's layers require: vocabulary (vocab-parallel embedding and LM head),
    attention heads, MLP intermediate size, and the K/V heads after GQA replication; for a mixture of
    experts also the expert and shared-expert intermediate sizes (over T) and the experts (over EP).
    """
    problems = []
    if config.vocab_size % tp_size:
        problems.append(
            f"vocab_size {config.vocab_size} is not divisible by tensor parallel size {tp_size} "
            "(the vocab-parallel embedding and LM head need it; NxD pads only for inference)"
        )
    heads, kv_heads = config.num_attention_heads, key_value_heads(config)
    if heads % tp_size:
        problems.append(f"num_attention_heads {heads} is not divisible by {tp_size}")
    if (kv_heads * kv_size_multiplier(kv_heads, tp_size)) % tp_size:
        problems.append(f"num_key_value_heads {kv_heads} cannot be spread over {tp_size} ranks")
    intermediate = optional_decoder_field(config, "intermediate_size")
    if intermediate is not None and intermediate % tp_size:
        problems.append(f"intermediate_size {intermediate} is not divisible by {tp_size}")
    for name in _MOE_INTERMEDIATE_FIELDS:
        size = getattr(config, name, None)
        if isinstance(size, int) and size % tp_size:
            problems.append(f"{name} {size} is not divisible by {tp_size}")
    experts = num_experts(config)
    if ep_size > 1 and (experts is None or experts % ep_size):
        problems.append(
            f"expert parallel size {ep_size} needs experts divisible by it (the config has {experts or 'none'})"
        )
    return "; ".join(problems) or None


@dataclass(frozen=True)
class Variant:
    """One catalogue entry: an architecture, a name and the config values that differ from the common base."""

    model_type: str
    name: str
    summary: str
    overrides: tuple[tuple[str, Any], ...]

    @property
    def key(self) -> str:
        """`<model_type>/<name>`, the name the CLI and the checks use."""
        return f"{self.model_type}/{self.name}"

    def config_values(self) -> dict[str, Any]:
        """The keyword arguments given to the config class.

        In order of precedence: the variant's overrides, the architecture's traits, the non-default values
        of the scalar fields the model reads (`nondefault`), the common tiny sizes. Where the config class
        has a `head_dim` field it is always set (to hidden/heads unless the variant says otherwise): qwen3's
        default of 128 would make every variant far from tiny. A default token id outside the tiny
        vocabulary that no rule changed (a field the model does not read) is taken modulo its size.
        """
        chosen = {choice.name: choice.value for choice in _scalar_choices(self.model_type) if choice.changed}
        values = {
            **_common(self.model_type),
            **_moe_values(self.model_type),
            **chosen,
            **_traits(self.model_type),
            **_renamed(self.model_type, dict(self.overrides)),
        }
        kv_field = _field_name(self.model_type, _KV_HEADS_FIELD)
        if kv_field is None:
            del values[_KV_HEADS_FIELD]  # a config class keeps unknown keywords: one would read as a field
        elif kv_field != _KV_HEADS_FIELD and _KV_HEADS_FIELD in values:  # an override under the standard name
            values[kv_field] = values.pop(_KV_HEADS_FIELD)
        if _takes_head_dim(self.model_type):
            values.setdefault("head_dim", values["hidden_size"] // values["num_attention_heads"])
        for name in _HIDDEN_WIDTH_FIELDS:
            if name in _config_parameters(self.model_type):
                values.setdefault(name, values["hidden_size"])
        for name, parameter in _config_parameters(self.model_type).items():
            default = parameter.default
            if name.endswith("_token_id") and isinstance(default, int) and default >= values["vocab_size"]:
                # The embedding's padding row must exist in the tiny vocabulary (e.g. smollm3's default 128004).
                values.setdefault(name, default % values["vocab_size"])
        return values

    def field_choices(self) -> tuple[FieldChoice, ...]:
        """What this variant does with each config field the model reads (sizes excepted), in name order,
        and with each field its traits or overrides set: default, value and the rule that decided."""
        parameters = _config_parameters(self.model_type)
        traits = _ARCHITECTURE_TRAITS.get(self.model_type, {})
        jitter = _jitter_off(self.model_type) if is_moe(self.model_type) else {}
        moe_traits = {
            name: value
            for name, value in _traits(self.model_type).items()
            if name not in traits and name not in jitter
        }
        overrides = dict(self.overrides)
        found = {choice.name: choice for choice in _scalar_choices(self.model_type)}
        for source, rule in (
            (traits, "architecture trait"),
            (moe_traits, "mixture-of-experts trait: the loss holds the auxiliary loss"),
            (jitter, _JITTER_OFF),
            (overrides, f"`{self.name}` variant"),
        ):
            for name, value in source.items():
                if name in _SIZE_FIELDS:
                    continue
                default = parameters[name].default if name in parameters else None
                seen_in = found[name].seen_in if name in found else ""
                found[name] = FieldChoice(name, default, value, rule, seen_in)
        return tuple(found[name] for name in sorted(found))

    def nondefault(self) -> dict[str, tuple[Any, Any]]:
        """`{field: (default, value)}` for every field this variant sets away from the config class's
        default, sizes excepted: the traits a report shows beside the tiny model's shape."""
        return {c.name: (c.default, c.value) for c in self.field_choices() if c.changed}

    def config(self) -> PretrainedConfig:
        """A fresh config of the installed transformers' class for this architecture."""
        return CONFIG_MAPPING[self.model_type](**self.config_values())

    def facts(self) -> dict[str, Any]:
        """Key figures for listings and reports (config values as the built config holds them)."""
        config = self.config()
        heads, kv_heads = config.num_attention_heads, key_value_heads(config)
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return {
            "variant": self.key,
            "config_class": type(config).__name__,
            "vocab_size": config.vocab_size,
            "hidden_size": config.hidden_size,
            "layers": config.num_hidden_layers,
            "heads": heads,
            "kv_heads": kv_heads,
            "head_dim": head_dim,
            "tied": bool(config.tie_word_embeddings),
            "summary": self.summary,
            "nondefault": {name: [default, value] for name, (default, value) in self.nondefault().items()},
            "dropout_fields": list(dropout_fields(self.model_type)),
        }

    def attention(self, tp_size: int, fuse_qkv: bool = False) -> str | None:
        """The attention variant expected at `tp_size`, or None when the heads cannot be spread over the
        ranks. The vocabulary plays no part: a model that keeps it replicated builds where a vocab-parallel
        one is refused, and its attention is the same."""
        config = self.config()
        heads, kv_heads = config.num_attention_heads, key_value_heads(config)
        if heads % tp_size or (kv_heads * kv_size_multiplier(kv_heads, tp_size)) % tp_size:
            return None
        return attention_variant(heads, kv_heads, tp_size, fuse_qkv)

    def unsupported_reason(self, tp_size: int, ep_size: int = 1) -> str | None:
        """Why this variant cannot be built at `tp_size` and `ep_size` (expected to be refused), or None."""
        return unsupported_reason(self.config(), tp_size, ep_size)

    @property
    def is_moe(self) -> bool:
        """Whether the variant routes tokens to experts."""
        return is_moe(self.model_type)

    def has_attention_biases(self) -> bool:
        """Whether transformers' model of this variant has q/k/v projection biases, whichever config field
        (or none: qwen2 always has them) turns them on."""
        return _attention_biases(self.key)


@functools.cache
def _config_parameters(model_type: str) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(CONFIG_MAPPING[model_type].__init__).parameters)


def _accepted_fields(model_type: str) -> set[str]:
    """The names the config class takes: its `__init__` parameters and its `attribute_map` aliases."""
    return set(_config_parameters(model_type)) | set(getattr(CONFIG_MAPPING[model_type], "attribute_map", {}))


def _field_name(model_type: str, name: str) -> str | None:
    """The name under which the config class takes the standard decoder field `name` (itself, else the first
    alias of `_FIELD_ALIASES` it takes), or None."""
    parameters = _config_parameters(model_type)
    attribute_map = getattr(CONFIG_MAPPING[model_type], "attribute_map", {})
    for candidate in (name, *_FIELD_ALIASES.get(name, ())):
        if candidate in parameters:
            return candidate
        if attribute_map.get(candidate) in parameters:
            # Passed under the constructor's own name: the class's __init__ may check it (GPT-Neo's
            # num_layers) before the attribute map applies.
            return attribute_map[candidate]
        if candidate in attribute_map:
            return candidate
    return None


def _common(model_type: str) -> dict[str, Any]:
    """The common tiny sizes under the names the config class takes (`_COMMON` renamed by `_FIELD_ALIASES`)."""
    return {
        _field_name(model_type, name) or name: value
        for name, value in _COMMON.items()
        if name not in _OPTIONAL_DECODER_FIELDS or _field_name(model_type, name) is not None
    }


def _renamed(model_type: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """A variant's overrides of the common sizes under the names the config class takes, as `_common` passes
    them: a size given under an attribute-map alias is set after `__init__`, which may have derived other
    fields from the constructor's own value (GPTBigCodeConfig's `num_key_value_heads` from `n_head`). The K/V
    head count keeps its standard name here (`config_values` renames or drops it)."""
    return {
        (_field_name(model_type, name) or name)
        if name in _COMMON and name != _KV_HEADS_FIELD
        else name: value
        for name, value in overrides.items()
    }


def _moe_values(model_type: str) -> dict[str, Any]:
    """The MoE sizes for the fields the config class takes (nothing for a dense architecture)."""
    if not is_moe(model_type):
        return {}
    parameters = _config_parameters(model_type)
    return {name: value for name, value in _MOE_SIZES.items() if name in parameters}


def _traits(model_type: str) -> dict[str, Any]:
    """What every variant of the architecture carries: its hand-picked traits, and the MoE ones."""
    found = dict(_ARCHITECTURE_TRAITS.get(model_type, {}))
    if is_moe(model_type):
        parameters = _config_parameters(model_type)
        found.update({name: value for name, value in _MOE_TRAITS.items() if name in parameters})
        found.update(_jitter_off(model_type))
    return found


def _jitter_off(model_type: str) -> dict[str, float]:
    """An MoE config's router jitter fields whose default is not 0, set to 0 (see `_JITTER_OFF`)."""
    return {
        name: 0.0
        for name, parameter in _config_parameters(model_type).items()
        if "jitter" in name and isinstance(parameter.default, float) and parameter.default != 0.0
    }


def _takes_head_dim(model_type: str) -> bool:
    return "head_dim" in _config_parameters(model_type)


def _takes_kv_heads(model_type: str) -> bool:
    return _field_name(model_type, _KV_HEADS_FIELD) is not None


def _features_of(model_type: str) -> tuple[dict[str, Any], str] | None:
    """The `features` overrides: the architecture's table entry, else every boolean option of the config
    class flipped (bias options, q/k norms, sliding window...), `_NOT_FEATURES` and options that make the
    attention bidirectional excepted."""
    if model_type in _ARCHITECTURE_FEATURES:
        return _ARCHITECTURE_FEATURES[model_type]
    options = {
        name: not parameter.default
        for name, parameter in _config_parameters(model_type).items()
        if isinstance(parameter.default, bool) and name not in _NOT_FEATURES and _NON_CAUSAL_MARK not in name
    }
    if not options:
        return None
    return options, "; ".join(f"{name} {'on' if value else 'off'}" for name, value in options.items())


@functools.cache
def _scalar_choices(model_type: str) -> tuple[FieldChoice, ...]:
    """The non-default rule applied to the fields the model reads (sizes and tied embeddings excepted):
    the config class's `__init__` parameters, and the token ids every config has where the modeling file
    itself reads them (qwen2's class takes no `pad_token_id` parameter, yet its model reads one). A field whose default is None but that the config
    fills with a list (`layer_types`) is not a scalar."""
    parameters = _config_parameters(model_type)
    reads = fields_read(model_type)
    read = set(reads) - _SIZE_FIELDS
    instance = CONFIG_MAPPING[model_type]()
    defaults = {name: parameter.default for name, parameter in parameters.items() if name in read}
    for name in read - set(defaults):
        if (
            name.endswith("_token_id")
            and reads[name] == modeling_module(model_type)
            and hasattr(instance, name)
        ):
            defaults[name] = getattr(instance, name)
    shapes = {name: getattr(instance, name, None) for name in defaults}
    sizes = Sizes(_HEAD_DIMS, _MIN_VOCAB_SIZE, _COMMON["max_position_embeddings"])
    if is_moe(model_type):
        sizes = dataclasses.replace(sizes, activations=MOE_ACTIVATIONS)
    return choose(defaults, shapes, sizes, functools.partial(_accepts, model_type))


def _accepts(model_type: str, name: str, value: Any) -> bool:
    """Whether the config class builds at the tiny sizes with `name=value` and holds the value (a dict may
    gain keys: transformers adds `rope_type` beside a legacy `type`)."""
    common = {
        k: v for k, v in _common(model_type).items() if k != _KV_HEADS_FIELD or _takes_kv_heads(model_type)
    }
    try:
        config = CONFIG_MAPPING[model_type](**{**common, **_moe_values(model_type), name: value})
    except (ValueError, KeyError, TypeError):
        return False
    held = getattr(config, name, None)
    if isinstance(value, dict):
        return isinstance(held, dict) and all(held.get(key) == item for key, item in value.items())
    return held == value


def dropout_fields(model_type: str) -> tuple[str, ...]:
    """The config class's dropout probabilities (`attention_dropout`, `resid_pdrop`...), read by the model
    or not. The catalogue keeps their defaults; a check that compares two runs sets each to 0.0."""
    return tuple(
        name
        for name, parameter in _config_parameters(model_type).items()
        if is_dropout_field(name)
        and (parameter.default is None or isinstance(parameter.default, int | float))
    )


def _why_not_described(model_type: str) -> str | None:
    """Why the generic variants cannot describe `model_type`, or None when they can."""
    if model_type not in CONFIG_MAPPING:
        return "transformers has no config class for it"
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return "transformers has no causal LM class for it"
    config_class = CONFIG_MAPPING[model_type]
    missing = [field for field in _DECODER_FIELDS if _field_name(model_type, field) is None]
    if missing:
        return f"its config class {config_class.__name__} does not take {', '.join(missing)}"
    return None


def _variants_of(model_type: str) -> list[Variant]:
    def make(name: str, summary: str, overrides: Mapping[str, Any]) -> Variant:
        return Variant(model_type, name, summary, tuple(sorted(overrides.items())))

    if not _takes_kv_heads(model_type):
        return _mha_variants_of(model_type, make)
    found = [
        make("gqa", "8 heads / 2 kv heads: GQA layer at T=4 (m=2), separate q/k/v below", {}),
        make("mqa", "8 heads / 1 kv head: GQA layer at T=2 (m=2) and T=4 (m=4)", {"num_key_value_heads": 1}),
        make(
            "mha",
            "4 heads / 4 kv heads: fused qkv_proj with fuse_qkv, separate without",
            {"num_attention_heads": 4, "num_key_value_heads": 4},
        ),
        make(
            "tied",
            "tied embeddings, 8 heads / 4 kv heads",
            {"num_key_value_heads": 4, "tie_word_embeddings": True},
        ),
    ]
    if _takes_head_dim(model_type):
        found.append(
            make(
                "head-dim",
                "head_dim 32 with hidden 64 and 4 heads (not hidden/heads); GQA layer at T=4",
                {"num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32},
            )
        )
    found.append(make("odd-vocab", "vocabulary 250: built at T=1, 2; rejected at T=4", {"vocab_size": 250}))
    features = _features_of(model_type)
    if features is not None:
        overrides, summary = features
        found.append(make("features", summary, overrides))
    found += [make(*variant) for variant in _ARCHITECTURE_VARIANTS.get(model_type, ())]
    return found


def _mha_variants_of(model_type: str, make: Any) -> list[Variant]:
    """The variants of an architecture whose config has no K/V head count (one K/V head per query head):
    no GQA or MQA variant but the architecture's own (`_ARCHITECTURE_VARIANTS`), the rest as for the others."""
    found = [
        make("mha-8", "8 heads, each its own K/V head (no kv-head field): separate q/k/v at T=2 and 4", {}),
        make("mha", "4 heads: fused qkv_proj with fuse_qkv, separate without", {"num_attention_heads": 4}),
        make("tied", "tied embeddings, 8 heads", {"tie_word_embeddings": True}),
    ]
    if _takes_head_dim(model_type):
        found.append(
            make(
                "head-dim",
                "head_dim 32 with hidden 64 and 4 heads (not hidden/heads)",
                {"num_attention_heads": 4, "head_dim": 32},
            )
        )
    found.append(make("odd-vocab", "vocabulary 250: built at T=1, 2; rejected at T=4", {"vocab_size": 250}))
    features = _features_of(model_type)
    if features is not None:
        overrides, summary = features
        found.append(make("features", summary, overrides))
    found += [make(*variant) for variant in _ARCHITECTURE_VARIANTS.get(model_type, ())]
    return found


@functools.cache
def _derived_variants(model_type: str) -> tuple[Variant, ...]:
    """The variants of an architecture outside `ARCHITECTURES` (KeyError saying why it does not fit)."""
    reason = _why_not_described(model_type)
    if reason is not None:
        raise KeyError(
            f"no reference models for {model_type!r}: {reason}. The catalogue describes decoder-only causal LMs "
            f"with the standard config fields ({', '.join(_DECODER_FIELDS)}); built in: {', '.join(ARCHITECTURES)}"
        )
    return tuple(entry for entry in _variants_of(model_type) if entry.name != "head-dim" or _runs(entry))


def _runs(entry: Variant) -> bool:
    """Whether transformers' model of `entry` runs a forward pass. A config class may take `head_dim` that
    its model does not honour everywhere (helium's `o_proj` takes hidden_size inputs): such a variant is
    not offered. Built on the meta device and materialised uninitialised, so no random number is drawn."""
    import torch
    from transformers import AutoModelForCausalLM

    config = entry.config()
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    model.to_empty(device="cpu")
    try:
        with torch.no_grad():
            model(input_ids=torch.zeros(1, PARITY_SEQUENCE_LENGTH, dtype=torch.long))
    except RuntimeError:
        return False
    return True


CATALOGUE: dict[str, Variant] = {v.key: v for model_type in ARCHITECTURES for v in _variants_of(model_type)}


@functools.cache
def _attention_biases(key: str) -> bool:
    """Read from transformers' model built on the meta device (no memory, no init)."""
    import torch
    from transformers import AutoModelForCausalLM

    config = variant(key).config()
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return any(name.endswith(_QKV_BIASES) for name, _ in model.named_parameters())


def variant(key: str) -> Variant:
    """The variant named `<model_type>/<name>` (KeyError listing what there is otherwise)."""
    if key in CATALOGUE:
        return CATALOGUE[key]
    known = variants_for(key.partition("/")[0])
    for entry in known:
        if entry.key == key:
            return entry
    raise KeyError(f"no reference model {key!r}; the catalogue has: {', '.join(e.key for e in known)}")


def variants_for(model_type: str) -> list[Variant]:
    """Every variant of one architecture, in catalogue order (derived for architectures outside the tables)."""
    found = [v for v in CATALOGUE.values() if v.model_type == model_type]
    return found or list(_derived_variants(model_type))
