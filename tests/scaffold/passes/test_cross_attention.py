"""Cross-attention read as absent (analysis) and NXS017 cross-attention-guard, on hand-written snippets.

The oracles are the hand-written `after` texts, the source's own line numbers and, for the guard, the
rewritten snippet run with torch: a config that switches cross-attention on fails at construction.
"""

from __future__ import annotations

import dataclasses
from textwrap import dedent
from types import SimpleNamespace

import libcst as cst
import pytest
import torch

from scaffold.analysis.cross_attention import prune_cross_attention
from scaffold.blueprint import CrossAttentionGuard, CrossAttentionPruning, Location
from scaffold.emit import format_python
from scaffold.rules.cross_attention_guard import CrossAttentionGuardRule

from .toy import RuleTest, blueprint

SOURCE = """
class ToyAttention(nn.Module):
    def __init__(self, config, is_cross_attention=False, layer_idx=None):
        super().__init__()
        self.is_cross_attention = is_cross_attention
        if self.is_cross_attention:
            self.kv_proj = nn.Linear(config.hidden_size, 2 * config.hidden_size)
        else:
            self.qkv_proj = nn.Linear(config.hidden_size, 3 * config.hidden_size)

    def forward(self, hidden_states, key_value_states=None, attention_mask=None):
        is_cross = key_value_states is not None
        current = key_value_states if is_cross else hidden_states
        if is_cross:
            attention_mask = None
        is_causal = attention_mask is None and not is_cross
        return self.qkv_proj(current) * is_causal, attention_mask


class ToyLayer(nn.Module):
    def __init__(self, config, layer_idx=None):
        super().__init__()
        self.attn = ToyAttention(config, layer_idx=layer_idx)
        if config.add_cross_attention:
            self.crossattention = ToyAttention(config, is_cross_attention=True, layer_idx=layer_idx)
            self.ln_cross = nn.LayerNorm(config.hidden_size)

    def forward(self, hidden_states, encoder_hidden_states=None, encoder_attention_mask=None):
        hidden_states, _ = self.attn(hidden_states)
        if encoder_hidden_states is not None and self.training:
            hidden_states = self.ln_cross(hidden_states)
            hidden_states, _ = self.crossattention(hidden_states, encoder_hidden_states, encoder_attention_mask)
        elif encoder_attention_mask is None:
            hidden_states = hidden_states * 2
        if (
            encoder_attention_mask is not None
        ) or self.training:
            hidden_states = hidden_states + 1
        return hidden_states


class ToyModel(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.layers = nn.ModuleList([ToyLayer(config, i) for i in range(2)])

    def forward(self, hidden_states, encoder_hidden_states=None):
        for layer in self.layers:
            hidden_states = layer(hidden_states, encoder_hidden_states, encoder_attention_mask=None)
        return hidden_states
"""

PRUNED = """
class ToyAttention(nn.Module):
    def __init__(self, config, is_cross_attention=False, layer_idx=None):
        super().__init__()
        self.is_cross_attention = False
        self.qkv_proj = nn.Linear(config.hidden_size, 3 * config.hidden_size)

    def forward(self, hidden_states, key_value_states=None, attention_mask=None):
        is_causal = attention_mask is None
        return self.qkv_proj(hidden_states) * is_causal, attention_mask


class ToyLayer(nn.Module):
    def __init__(self, config, layer_idx=None):
        super().__init__()
        self.attn = ToyAttention(config, layer_idx=layer_idx)

    def forward(self, hidden_states, encoder_hidden_states=None, encoder_attention_mask=None):
        hidden_states, _ = self.attn(hidden_states)
        hidden_states = hidden_states * 2
        if self.training:
            hidden_states = hidden_states + 1
        return hidden_states


class ToyModel(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.layers = nn.ModuleList([ToyLayer(config, i) for i in range(2)])

    def forward(self, hidden_states, encoder_hidden_states=None):
        for layer in self.layers:
            hidden_states = layer(hidden_states, encoder_hidden_states, encoder_attention_mask=None)
        return hidden_states
"""

GUARDED = """
class ToyAttention(nn.Module):
    def __init__(self, config, layer_idx=None):
        super().__init__()
        self.is_cross_attention = False
        self.qkv_proj = nn.Linear(config.hidden_size, 3 * config.hidden_size)

    def forward(self, hidden_states, attention_mask=None):
        is_causal = attention_mask is None
        return self.qkv_proj(hidden_states) * is_causal, attention_mask


class ToyLayer(nn.Module):
    def __init__(self, config, layer_idx=None):
        super().__init__()
        if config.add_cross_attention:
            raise NotImplementedError(
                "config.add_cross_attention: cross-attention is not part of causal-LM training; train with it off"
            )
        self.attn = ToyAttention(config, layer_idx=layer_idx)

    def forward(self, hidden_states):
        hidden_states, _ = self.attn(hidden_states)
        hidden_states = hidden_states * 2
        if self.training:
            hidden_states = hidden_states + 1
        return hidden_states


class ToyModel(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.layers = nn.ModuleList([ToyLayer(config, i) for i in range(2)])

    def forward(self, hidden_states):
        for layer in self.layers:
            hidden_states = layer(hidden_states)
        return hidden_states
"""

GUARD = CrossAttentionGuard(
    owner="ToyLayer",
    test="config.add_cross_attention",
    attributes=("crossattention", "ln_cross"),
    location=Location("toy.py", 23),
)
FACTS = CrossAttentionPruning(
    guards=(GUARD,),
    inputs=("encoder_attention_mask", "encoder_hidden_states", "key_value_states"),
    defaulted=(("ToyAttention", "is_cross_attention"),),
)


def _source(text: str) -> str:
    return dedent(text).strip("\n") + "\n"


def _lines(text: str) -> list[str]:
    """The non-blank lines (removed code leaves blank lines, to keep the file's line numbers)."""
    return [line for line in text.splitlines() if line.strip()]


def test_the_path_without_encoder_states_is_what_remains():
    pruned, facts = prune_cross_attention(cst.parse_module(_source(SOURCE)), "toy.py")
    assert _lines(pruned.code) == _lines(_source(PRUNED))
    assert facts == FACTS


def test_line_numbers_stay_those_of_the_file():
    source = _source(SOURCE)
    pruned, _ = prune_cross_attention(cst.parse_module(source), "toy.py")
    before, after = source.splitlines(), pruned.code.splitlines()
    assert len(after) == len(before)
    for line in ("        hidden_states, _ = self.attn(hidden_states)", "class ToyModel(nn.Module):"):
        assert after.index(line) == before.index(line)
    assert before[GUARD.location.line - 1].strip() == "if config.add_cross_attention:"


def test_a_module_without_encoder_inputs_is_left_as_it_is():
    module = cst.parse_module(
        _source(PRUNED)
        .replace("encoder_hidden_states", "extra")
        .replace("key_value_states", "other")
        .replace("encoder_attention_mask", "more")
    )
    pruned, facts = prune_cross_attention(module, "toy.py")
    assert pruned is module
    assert facts == CrossAttentionPruning()


@pytest.mark.parametrize(
    "read",
    [
        "        hidden_states = hidden_states + encoder_hidden_states\n",  # a read outside any decided branch
        "        hidden_states = self.attn(encoder_hidden_states.float())\n",  # passed on, but not as itself
    ],
)
def test_a_path_that_cannot_be_removed_whole_stays_as_written(read: str):
    anchor = "        hidden_states, _ = self.attn(hidden_states)\n"
    module = cst.parse_module(_source(SOURCE).replace(anchor, anchor + read))
    pruned, facts = prune_cross_attention(module, "toy.py")
    assert pruned is module  # R006 then names it
    assert facts == CrossAttentionPruning()


def test_a_branch_whose_attributes_are_still_read_is_kept():
    source = _source(SOURCE).replace(
        "        return hidden_states\n\n\nclass ToyModel",
        "        return self.ln_cross(hidden_states)\n\n\nclass ToyModel",
    )
    _, facts = prune_cross_attention(cst.parse_module(source), "toy.py")
    assert facts.guards == ()


class TestCrossAttentionGuard(RuleTest):
    TRANSFORM = CrossAttentionGuardRule

    def test_inputs_leave_signatures_and_calls_and_the_switch_raises(self) -> None:
        toy = dataclasses.replace(blueprint(), cross_attention=FACTS)
        self.assertCodemod(PRUNED, GUARDED, blueprint=toy)

    def test_a_model_without_cross_attention_is_left_alone(self) -> None:
        self.assertUnchanged(PRUNED, blueprint=blueprint())


def test_the_guarded_model_refuses_the_switch_at_construction():
    namespace: dict[str, object] = {"nn": torch.nn}
    exec(compile(format_python(_source(GUARDED)), "toy.py", "exec"), namespace)
    layer = namespace["ToyLayer"]
    built = layer(SimpleNamespace(hidden_size=4, add_cross_attention=False))  # type: ignore[operator]
    assert isinstance(built, torch.nn.Module)
    with pytest.raises(NotImplementedError, match="add_cross_attention"):
        layer(SimpleNamespace(hidden_size=4, add_cross_attention=True))  # type: ignore[operator]
