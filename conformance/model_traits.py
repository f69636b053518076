"""The tiny model of each catalogue variant as a report shows it: its shape (hidden size, layers, heads
and kv heads, vocabulary, head_dim, tied embeddings) and its notable traits — every config field whose
value differs from the config class's own default, the sizes aside (a constant that equals a default
cannot be told from a config read, so a reader should see which fields the run really varied)."""

from __future__ import annotations

import functools
from typing import Any

from reference_models import variant
from reference_models.catalogue import optional_decoder_field

SHAPE_FIELDS = frozenset(
    {
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "tie_word_embeddings",
    }
)
BOOKKEEPING_FIELDS = frozenset(
    {
        "architectures",
        "model_type",
        "transformers_version",
        "dtype",
        "torch_dtype",
        "_name_or_path",
        "name_or_path",
        "_attn_implementation_autoset",
        "id2label",
        "label2id",
    }
)


def traits(variant_key: str) -> dict[str, Any]:
    """Shape and non-default fields of one catalogue variant (plain JSON)."""
    entry = variant(variant_key)
    config = entry.config()
    facts = entry.facts()
    defaults = _defaults(type(config))
    values = config.to_dict()
    notable = {
        name: value
        for name, value in sorted(values.items())
        if name not in SHAPE_FIELDS | BOOKKEEPING_FIELDS and (name not in defaults or defaults[name] != value)
    }
    return {
        "config_class": facts["config_class"],
        "hidden_size": facts["hidden_size"],
        "intermediate_size": optional_decoder_field(config, "intermediate_size"),
        "layers": facts["layers"],
        "heads": facts["heads"],
        "kv_heads": facts["kv_heads"],
        "head_dim": facts["head_dim"],
        "vocab_size": facts["vocab_size"],
        "tied_embeddings": facts["tied"],
        "summary": facts["summary"],
        "non_default_fields": notable,
    }


@functools.cache
def _defaults(config_class: type) -> dict[str, Any]:
    """The config class's defaults (empty when it cannot be built without arguments)."""
    try:
        return config_class().to_dict()
    except Exception:
        return {}
