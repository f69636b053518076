"""Refusals on real models: the right code, at a line that holds the construct."""

from __future__ import annotations

from pathlib import Path

import pytest
import transformers.models.llama.modeling_llama as llama

from scaffold.analysis import analyze
from scaffold.refusal_codes import ALL_CODES
from scaffold.source import locate

from .conftest import TARGETS, blueprint_of, source_line


@pytest.mark.parametrize("model_type", TARGETS)
def test_targets_are_not_refused(model_type: str):
    assert blueprint_of(model_type).refusals == ()


def codes(model_type: str) -> set[str]:
    return {refusal.code for refusal in blueprint_of(model_type).refusals}


def lines_of(model_type: str, code: str) -> list[str]:
    return [
        source_line(model_type, refusal.location.line)
        for refusal in blueprint_of(model_type).refusals
        if refusal.code == code
    ]


def test_mixtral_experts_are_rebuilt_not_refused_and_phimoe_routing_is_kept():
    # NXS040 rebuilds Mixtral's block on NxD's MoE, and PhiMoE's with a router that calls its sparsemixer:
    # nothing refuses phimoe's block (nor its gate, once R008).
    assert codes("mixtral") == set()
    assert not codes("phimoe") & {"R001", "R008", "R029"}


def test_ernie4_5_moe_bias_corrected_choice_is_refused_as_routing():
    # `_, selected_experts = torch.topk(self.moe_statics(routing_weights), self.top_k, dim=-1)`: the experts
    # are chosen on the softmax plus a correction bias, a routing neither RouterTopK nor a module function is.
    assert codes("ernie4_5_moe") == {"R029"}
    (line,) = lines_of("ernie4_5_moe", "R029")
    assert "self.gate = nn.Linear" in line


def test_gpt2_conv1d_reads_as_linears_with_transposed_checkpoints():
    # Every Conv1D of gpt2 is `self.<attr> = Conv1D(nf, nx)` in a constructor: read as nn.Linear, each gets
    # the transposing spec (c_attn split into q, k and v by `.split(self.split_size, dim=2)`), no refusal.
    blueprint = blueprint_of("gpt2")
    assert codes("gpt2") == set()
    transposed = {(f.owner, f.source_name): f.part_names for f in blueprint.fusions if f.transposed}
    assert transposed == {
        ("GPT2Attention", "c_attn"): ("q_proj", "k_proj", "v_proj"),
        ("GPT2Attention", "c_proj"): ("c_proj",),
        ("GPT2MLP", "c_fc"): ("c_fc",),
        ("GPT2MLP", "c_proj"): ("c_proj",),
    }
    assert all("Conv1D(" in source_line("gpt2", f.location.line) for f in blueprint.fusions if f.transposed)


def test_qk_norms_sharded_with_their_heads_are_not_refused():
    # olmo2: RMS norms over the whole q_proj/k_proj output (NXS026 distributes them); cohere: LayerNorms with
    # one weight row per head (NXS026 shards them by head).
    assert codes("olmo2") == set()
    assert codes("cohere") == set()
    scopes = {
        (model_type, norm.attribute): norm.scope.value
        for model_type in ("olmo2", "cohere")
        for norm in blueprint_of(model_type).norms
        if norm.normalises
    }
    assert scopes == {
        ("olmo2", "q_norm"): "full_width",
        ("olmo2", "k_norm"): "full_width",
        ("cohere", "q_norm"): "head_rows",
        ("cohere", "k_norm"): "head_rows",
    }


def test_a_list_of_one_norm_per_head_is_sharded_by_head_not_refused():
    # stablelm's StableLmLayerNormPerHead: nn.ModuleList([nn.LayerNorm(dim) for _ in range(num_heads)]), each
    # applied to its head's slice (torch.split(x, 1, dim=1)); its other refusals are not about norms.
    assert "R012" not in codes("stablelm")
    norms = {
        norm.attribute: (norm.kind, norm.scope.value)
        for norm in blueprint_of("stablelm").norms
        if norm.normalises
    }
    assert norms == {
        "q_layernorm": ("per_head_list", "head_rows"),
        "k_layernorm": ("per_head_list", "head_rows"),
    }


def test_a_learnable_activation_of_a_parallel_mlp_is_not_refused():
    # apertus' MLP applies xIELU (parameters alpha_p, alpha_n) to up_proj's output: NXS025 sums their gradients.
    assert codes("apertus") == set()
    assert blueprint_of("apertus").learnable_activations == (("ApertusMLP", "act_fn"),)
    assert blueprint_of("llama").learnable_activations == ()


def test_bloom_and_falcon_qkv_split_by_a_helper_are_not_refused_as_interleaved():
    # their `_reshape`/`_split_heads` helpers are read as separate projections (helper_fusions); falcon's
    # ALiBi branch is read as off (optional_inputs, NXS028): nothing of it is refused. Bloom's attention adds
    # its ALiBi bias through `baddbmm` to scores computed inline: read as attention (R014 no more) that stays
    # eager, its bias sharded by head (NXS031, R027 no more).
    assert codes("bloom") == set()
    assert codes("falcon") == set()


def test_mpt_attention_with_alibi_and_a_boolean_mask_is_not_refused():
    # MptAttention reads `batch_size, seq_length = hidden_states.shape[:2]` (its (B, S, D) input's leading
    # shape: R026 no more) and fills a boolean mask into scores computed inline with the ALiBi bias its model
    # builds once (`s = s.masked_fill(mask, min)`: kept eager by NXS031, R027 no more).
    assert codes("mpt") == set()


def test_refusal_messages_name_their_reason_and_codes_are_unique():
    known = {code.code: code for code in ALL_CODES}
    assert len(known) == len(ALL_CODES)
    for model_type in ("phimoe", "gpt2", "rwkv", "mpt"):
        for refusal in blueprint_of(model_type).refusals:
            assert known[refusal.code].why in refusal.message
            assert refusal.location.file == blueprint_of(model_type).source_file


def test_replicating_plan_styles_are_not_read_as_sharding():
    # olmo2's plan says colwise_rep/rowwise_rep for attention (HF gathers around its full-width norms):
    # the roles come from the dataflow instead, and the plain mlp styles are used as is.
    blueprint = blueprint_of("olmo2")
    q_proj = blueprint.site("model.layers.*.self_attn.q_proj")
    assert q_proj.role.value == "column"
    assert q_proj.evidence == "tp plan 'colwise_rep' is not plain sharding; dataflow: feeds o_proj"
    o_proj = blueprint.site("model.layers.*.self_attn.o_proj")
    assert o_proj.role.value == "row" and o_proj.evidence.startswith("tp plan 'rowwise_rep' is not plain")
    assert blueprint.site("model.layers.*.mlp.down_proj").evidence.startswith(
        "tp plan 'rowwise'; dataflow agrees"
    )


def test_attention_called_with_one_tensor_three_times_is_self_attention():
    # ctrl's MultiHeadAttention.forward(v, k, q, ...) is called `(normed, normed, normed, ...)` only: no R006.
    assert "R006" not in codes("ctrl")


@pytest.mark.parametrize("model_type", ["gpt2", "gpt_bigcode", "biogpt", "xglm"])
def test_a_decoder_cross_attention_path_is_removed_not_refused(model_type: str):
    # Their attention reads `encoder_hidden_states` / `key_value_states` for keys and values only where those
    # are not None, and their layers build the cross-attention modules under `config.add_cross_attention`:
    # analysis reads the path as absent (NXS017 guards the switch), nothing is refused as R006.
    assert "R006" not in codes(model_type)
    guards = blueprint_of(model_type).cross_attention.guards
    assert all(source_line(model_type, g.location.line).strip() == f"if {g.test}:" for g in guards)
    assert len(guards) == (0 if model_type == "biogpt" else 1)


def test_the_cache_followed_across_calls_leaves_no_cache_use():
    # gpt2 (positional), gpt_neox and ctrl (`layer_past=`), mpt (a cache-only helper), xglm (returned tuple).
    for model_type in ("gpt2", "gpt_neox", "ctrl", "mpt", "xglm"):
        assert "R019" not in codes(model_type), model_type


def test_constructors_without_config_take_their_callers():
    # ctrl's EncoderLayer(d_model_size, ...) and MultiHeadAttention(d_model_size, ...): built only in
    # constructors that hold a config.
    assert "R018" not in codes("ctrl")


def test_ctrl_attention_with_its_own_kernel_stays_refused():
    # ctrl shards Wq/Wk/Wv by dataflow, splits heads in `self.split_into_heads` with `self.num_heads` and
    # calls its own `scaled_dot_product_attention`: no rule adapts the head count per rank, so the
    # attention must be refused (R014 when the split is not traced, R025/R027 once it is), never emitted.
    assert codes("ctrl") & {"R014", "R025", "R027"}


def test_biogpt_is_refused_for_nothing():
    # R018: its attention's optional `config=None`, which its one caller always passes, moves first (NXS004);
    # R019: `_update_causal_mask` on BioGptPreTrainedModel is read as the host's mask builder (current_forms).
    assert codes("biogpt") == set()


def test_a_view_to_an_unpacked_shape_tuple_gives_the_head_geometry():
    # BioGPT views its projections with `.view(*q_input_shape)`, `q_input_shape = (bsz, tgt_len, -1,
    # self.head_dim)`: head_dim is the tuple's last entry. Oracle: transformers' own module.
    import transformers
    from transformers.models.biogpt import modeling_biogpt

    config = transformers.BioGptConfig(hidden_size=48, num_attention_heads=4)
    module = modeling_biogpt.BioGptAttention(48, 4, config=config)
    (geometry,) = {g.owner: g for g in blueprint_of("biogpt").attention}.values()
    assert geometry.head_dim.evaluate(config) == module.head_dim == 12
    assert geometry.num_heads.evaluate(config) == geometry.num_kv_heads.evaluate(config) == module.num_heads


def test_xglm_is_refused_for_nothing_and_its_sinusoidal_positions_join_the_stream_layout():
    # R027: its attention folds the heads into the batch (`torch.bmm`), read in 4-D as the current kernel
    # (scaffold.analysis.batched_attention). Its sinusoidal position module holds no weights but is looked
    # up from position_ids and added to the stream like learned positions (NXS012 moves it under SP).
    blueprint = blueprint_of("xglm")
    assert codes("xglm") == set()
    assert blueprint.backbone.positions == ("model.embed_positions",)


def test_ctrl_projections_read_one_input_and_its_batch_the_leading_shape():
    # R025: `forward(v, k, q, mask)` called as `attn(normed, normed, normed, mask)` is one input (the
    # same reading R006 makes); R026: `batch_size = q.shape[0]` reads the leading shape. Its kernel (a
    # module function adding `mask * -1e4`) and hand-built padding mask are still refused (R027).
    assert not codes("ctrl") & {"R025", "R026"}


def _llama_with_rotary_table(tmp_path, entry: str):
    """transformers' llama with its rotary embedding held in a ModuleDict of `entry` (olmo3's form)."""

    text = Path(llama.__file__).read_text()
    text = text.replace(
        "self.rotary_emb = LlamaRotaryEmbedding(config=config)",
        f'self.rotary_embs = nn.ModuleDict({{"full": {entry}}})',
    ).replace(
        "self.rotary_emb(hidden_states, position_ids)",
        'self.rotary_embs["full"](hidden_states, position_ids)',
    )
    path = tmp_path / "modeling_llama.py"
    path.write_text(text)
    return {refusal.code for refusal in analyze(locate("llama", path)).refusals}


def test_a_module_dict_of_weightless_modules_has_nothing_to_convert(tmp_path):
    # olmo3: one rotary embedding per attention kind, in a ModuleDict
    assert "R012" not in codes("olmo3")
    assert "R012" not in _llama_with_rotary_table(tmp_path, "LlamaRotaryEmbedding(config=config)")


def test_a_module_dict_holding_weights_stays_refused(tmp_path):
    assert "R012" in _llama_with_rotary_table(tmp_path, "LlamaMLP(config)")
