"""NXS031 attention-bias-by-head: the rule on hand-written snippets, its analysis on BLOOM's file, and the
helper it inserts (`heads_of_rank`) against ALiBi slopes computed by hand from the paper's formula.

Oracles: hand-written expected code; the slope table of ALiBi (Press et al.: for H a power of two, head h of
H gets the slope 2^(-8 (h + 1) / H)) written out for 8 heads; transformers' own `build_alibi_tensor` as the
full-width tensor a rank slices.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import pytest
import torch

from scaffold.blueprint import ClassKind, HeadBias
from scaffold.rules.attention_bias_by_head import AttentionBiasByHead

from ..conftest import blueprint_of
from .test_forward_rules import GEOMETRY
from .toy import HERE, RuleTest, blueprint, klass

STACK_BEFORE = """
class ToyModel(ToyPreTrainedModel):
    def forward(self, inputs_embeds, attention_mask=None):
        hidden_states = inputs_embeds
        bias = build_bias(attention_mask, self.num_heads)
        for layer in self.layers:
            hidden_states = layer(hidden_states, bias=bias, attention_mask=attention_mask)
        return hidden_states
"""

STACK_AFTER = """
import torch
from neuronx_distributed.parallel_layers.parallel_state import (
    get_tensor_model_parallel_rank,
    get_tensor_model_parallel_size,
)
from neuronx_distributed.parallel_layers.utils import divide


def heads_of_rank(bias: torch.Tensor, num_heads: int) -> torch.Tensor:
    \"\"\"The slices of `bias` that belong to this rank's attention heads.

    `bias` holds one slice per head along its first dimension, alone `(heads, ...)` or after the batch
    `(batch * heads, ...)`. The attention's heads are sharded contiguously over the tensor-parallel ranks:
    rank r computes heads [r * heads / T, (r + 1) * heads / T) and adds their slices only.
    \"\"\"
    if bias.shape[0] % num_heads != 0:
        raise ValueError(
            f"the attention bias of shape {tuple(bias.shape)} holds no slice per head of {num_heads} heads "
            "along its first dimension"
        )
    per_rank = divide(num_heads, get_tensor_model_parallel_size())
    start = get_tensor_model_parallel_rank() * per_rank
    by_head = bias.reshape(-1, num_heads, *bias.shape[1:])
    return by_head[:, start : start + per_rank].reshape(-1, *bias.shape[1:])


class ToyModel(ToyPreTrainedModel):
    def forward(self, inputs_embeds, attention_mask=None):
        hidden_states = inputs_embeds
        if self.trn_config.recompute_causal_mask and attention_mask is not None:
            # The padding mask is ignored (trn_config.recompute_causal_mask): the bias sees every position.
            attention_mask = torch.ones_like(attention_mask)
        bias = build_bias(attention_mask, self.num_heads)
        if self.config._attn_implementation == "flash_attention_2":
            raise NotImplementedError(
                "the NKI flash-attention kernel adds no attention bias (`bias`, one slice per head); use eager attention"
            )
        # One slice per head: each tensor-parallel rank keeps those of the heads it computes.
        bias = heads_of_rank(bias, self.num_heads)
        for layer in self.layers:
            hidden_states = layer(hidden_states, bias=bias, attention_mask=attention_mask)
        return hidden_states
"""

ATTENTION_BEFORE = """
class ToyAttention(nn.Module):
    def forward(self, hidden_states, bias, attention_mask):
        q = self.q_proj(hidden_states)
        k = self.k_proj(hidden_states)
        scores = bias.baddbmm(q, k.transpose(-1, -2))
        if attention_mask is not None:
            scores = scores + attention_mask
        probs = scores.softmax(-1)
        return self.o_proj(probs @ self.v_proj(hidden_states))
"""

ATTENTION_AFTER = """
import torch


class ToyAttention(nn.Module):
    def forward(self, hidden_states, bias, attention_mask):
        q = self.q_proj(hidden_states)
        k = self.k_proj(hidden_states)
        scores = bias.baddbmm(q, k.transpose(-1, -2))
        if attention_mask is not None:
            scores = scores + attention_mask
        else:
            # No mask was built (trn_config.recompute_causal_mask): mask the future keys here.
            future = torch.ones(scores.shape[-2:], dtype=torch.bool, device=scores.device).triu(diagonal=1)
            scores = scores.masked_fill(future, torch.finfo(scores.dtype).min)
        probs = scores.softmax(-1)
        return self.o_proj(probs @ self.v_proj(hidden_states))
"""

FILLED_BEFORE = """
class ToyAttention(nn.Module):
    def forward(self, hidden_states, bias, attention_mask=None):
        q = self.q_proj(hidden_states)
        k = self.k_proj(hidden_states)
        scores = q @ k.transpose(-1, -2) + bias
        if attention_mask is not None:
            scores = scores.masked_fill(attention_mask, -1e9)
        probs = scores.softmax(-1)
        return self.o_proj(probs @ self.v_proj(hidden_states))
"""

FILLED_AFTER = """
import torch


class ToyAttention(nn.Module):
    def forward(self, hidden_states, bias, attention_mask=None):
        q = self.q_proj(hidden_states)
        k = self.k_proj(hidden_states)
        scores = q @ k.transpose(-1, -2) + bias
        if attention_mask is not None:
            scores = scores.masked_fill(attention_mask, -1e9)
        else:
            # No mask was built (trn_config.recompute_causal_mask): mask the future keys here.
            future = torch.ones(scores.shape[-2:], dtype=torch.bool, device=scores.device).triu(diagonal=1)
            scores = scores.masked_fill(future, torch.finfo(scores.dtype).min)
        probs = scores.softmax(-1)
        return self.o_proj(probs @ self.v_proj(hidden_states))
"""

TOY_BIAS = HeadBias("ToyModel", "bias", "self.num_heads", HERE, "attention_mask")
TOY = dataclasses.replace(
    blueprint(
        classes=[klass("ToyModel", ClassKind.BASE_MODEL), klass("ToyAttention", ClassKind.ATTENTION)],
        attention=[dataclasses.replace(GEOMETRY, eager_function=None)],
    ),
    head_biases=(TOY_BIAS,),
)


class TestAttentionBiasByHead(RuleTest):
    TRANSFORM = AttentionBiasByHead

    def test_the_stack_keeps_its_ranks_heads_of_the_bias(self) -> None:
        self.assertCodemod(STACK_BEFORE, STACK_AFTER, blueprint=TOY)

    def test_a_bias_that_reads_no_padding_mask_is_sliced_only(self) -> None:
        reads_none = STACK_BEFORE.replace("build_bias(attention_mask, ", "build_bias(")
        expected = STACK_AFTER.replace("build_bias(attention_mask, ", "build_bias(").replace(
            """        if self.trn_config.recompute_causal_mask and attention_mask is not None:
            # The padding mask is ignored (trn_config.recompute_causal_mask): the bias sees every position.
            attention_mask = torch.ones_like(attention_mask)
""",
            "",
        )
        toy = dataclasses.replace(TOY, head_biases=(dataclasses.replace(TOY_BIAS, mask=None),))
        self.assertCodemod(reads_none, expected, blueprint=toy)

    def test_the_attention_masks_the_future_without_a_mask(self) -> None:
        self.assertCodemod(ATTENTION_BEFORE, ATTENTION_AFTER, blueprint=TOY)

    def test_a_boolean_mask_filled_in_the_scores_gets_the_same_else(self) -> None:
        # MPT's mask block: `s = s.masked_fill(mask, value)`, the mask True where a key is masked.
        self.assertCodemod(FILLED_BEFORE, FILLED_AFTER, blueprint=TOY)

    def test_a_mask_filled_with_another_mask_is_no_mask_block(self) -> None:
        other = FILLED_BEFORE.replace("masked_fill(attention_mask, ", "masked_fill(attention_mask.bool(), ")
        self.assertUnchanged(other, blueprint=TOY)

    def test_a_model_without_a_head_bias_is_left_alone(self) -> None:
        none = dataclasses.replace(TOY, head_biases=())
        self.assertUnchanged(STACK_BEFORE, blueprint=none)
        self.assertUnchanged(ATTENTION_BEFORE, blueprint=none)


def test_bloom_alibi_is_read_as_a_head_bias_of_its_attention():
    found = blueprint_of("bloom")
    assert found.head_biases == (
        HeadBias("BloomModel", "alibi", "self.num_heads", found.head_biases[0].location, "attention_mask"),
    )
    (geometry,) = {(g.owner, g.q, g.k, g.v, g.o) for g in found.attention}
    assert geometry == (
        "BloomAttention",
        "q_proj",
        "k_proj",
        "v_proj",
        "dense",
    )  # scores: alibi.baddbmm(q, k)
    assert not found.refusals


def test_mpt_alibi_is_read_as_a_head_bias_of_its_attention():
    # MPT: `alibi = self.build_mpt_alibi_tensor(self.num_heads, ...)`, (heads, 1, keys), no padding mask
    # read; its attention reads `batch_size, seq_length = hidden_states.shape[:2]` (R026 before) and fills
    # a boolean mask (R027 before).
    found = blueprint_of("mpt")
    assert found.head_biases == (
        HeadBias("MptModel", "alibi", "self.num_heads", found.head_biases[0].location, None),
    )
    assert {(g.owner, g.q, g.k, g.v, g.o) for g in found.attention} == {
        ("MptAttention", "q_proj", "k_proj", "v_proj", "out_proj")
    }
    assert not found.refusals


def test_a_model_without_alibi_has_no_head_bias():
    assert blueprint_of("llama").head_biases == ()
    assert blueprint_of("falcon").head_biases == ()  # its ALiBi is read as off (NXS028)


# --- the inserted helper against hand-computed slopes ------------------------------------------------

HEADS = 8
# ALiBi's slopes for 8 heads: 2^(-8 (h + 1) / 8) = 2^-(h + 1), written out.
SLOPES = (1 / 2, 1 / 4, 1 / 8, 1 / 16, 1 / 32, 1 / 64, 1 / 128, 1 / 256)


def _helper(monkeypatch: pytest.MonkeyPatch, rank: int, tp_size: int):
    """templates/definitions/heads_of_rank.py loaded under the reference backend, as rank `rank` of
    `tp_size`."""
    from conformance.backends import activate

    activate("reference")
    path = Path(__file__).resolve().parents[3] / "templates" / "definitions" / "heads_of_rank.py"
    spec = importlib.util.spec_from_file_location("heads_of_rank_template", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "get_tensor_model_parallel_rank", lambda: rank)
    monkeypatch.setattr(module, "get_tensor_model_parallel_size", lambda: tp_size)
    return module.heads_of_rank


@pytest.mark.parametrize(("rank", "heads"), [(0, range(0, 4)), (1, range(4, 8))])
def test_each_rank_keeps_the_slopes_of_its_heads_in_bloom_layout(monkeypatch, rank, heads):
    from transformers.models.bloom.modeling_bloom import build_alibi_tensor

    batch, length = 2, 5
    mask = torch.ones(batch, length)
    full = build_alibi_tensor(mask, HEADS, torch.float32)  # (batch * heads, 1, length)
    local = _helper(monkeypatch, rank, 2)(full, HEADS)
    positions = torch.arange(length, dtype=torch.float32)
    expected = torch.stack([SLOPES[h] * positions for _ in range(batch) for h in heads]).unsqueeze(1)
    assert local.shape == (batch * 4, 1, length)
    torch.testing.assert_close(local, expected, rtol=0, atol=0)


def test_a_heads_first_bias_keeps_its_ranks_heads(monkeypatch):
    # MPT's layout, (heads, 1, keys): rank 1 of 2 keeps heads 4..7.
    bias = torch.tensor(SLOPES).view(HEADS, 1, 1) * torch.arange(-3.0, 1.0).view(1, 1, 4)
    local = _helper(monkeypatch, 1, 2)(bias, HEADS)
    expected = torch.tensor([[[-3 * s, -2 * s, -1 * s, 0.0]] for s in SLOPES[4:]])
    torch.testing.assert_close(local, expected, rtol=0, atol=0)


def test_the_whole_bias_at_one_rank_and_a_clear_error_without_a_slice_per_head(monkeypatch):
    bias = torch.randn(HEADS * 3, 1, 6)
    assert torch.equal(_helper(monkeypatch, 0, 1)(bias, HEADS), bias)
    with pytest.raises(ValueError, match="no slice per head of 8 heads"):
        _helper(monkeypatch, 0, 2)(torch.randn(12, 1, 6), HEADS)
