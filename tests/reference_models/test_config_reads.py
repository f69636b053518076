"""Which config fields a model reads: the reader on hand-written source, and on installed modeling files
against reads found by hand (grep of transformers 4.57's files)."""

from __future__ import annotations

from reference_models.config_reads import fields_read, reads_in

SNIPPET = """
class Attention:
    def __init__(self, config):
        self.eps = config.rms_norm_eps
        self.scale = self.config.attention_multiplier
        self.window = getattr(config, "sliding_window", None)
        if hasattr(self.config, "rope_scaling"):
            pass
        other.hidden_size  # not a config
        self.other.config.vocab_size  # a config of something else
        config._attn_implementation  # private: not a field
"""


def test_the_reader_finds_attribute_and_getattr_reads_of_config_only() -> None:
    assert reads_in(SNIPPET) == {"rms_norm_eps", "attention_multiplier", "sliding_window", "rope_scaling"}


def test_reads_come_from_the_modeling_file_and_the_helpers_it_imports() -> None:
    llama = fields_read("llama")
    assert llama["rms_norm_eps"] == "transformers.models.llama.modeling_llama"
    assert llama["hidden_act"] == "transformers.models.llama.modeling_llama"
    # modeling_llama never names rope_theta: ROPE_INIT_FUNCTIONS' default function reads it.
    assert llama["rope_theta"] == "transformers.modeling_rope_utils"
    # PreTrainedModel._init_weights reads the init range.
    assert llama["initializer_range"] == "transformers.modeling_utils"
    # LlamaConfig takes pretraining_tp, which the model never reads.
    assert "pretraining_tp" not in llama


def test_architecture_specific_fields_are_found() -> None:
    assert "logit_scale" in fields_read("cohere2")
    assert {"attn_logit_softcapping", "final_logit_softcapping", "query_pre_attn_scalar"} <= set(
        fields_read("gemma2")
    )
    assert fields_read("phi")["partial_rotary_factor"] == "transformers.models.phi.modeling_phi"
    assert "clip_qkv" in fields_read("olmo")
    # code_llama has no modeling file of its own: LlamaForCausalLM's is read.
    assert fields_read("code_llama") == fields_read("llama")
