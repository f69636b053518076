"""Optional inputs a base model builds only under a config flag, read with the flag off
(`scaffold.analysis.optional_inputs`), and the construction-time check NXS028 adds for the flag.

Oracles: hand-written expected code (blank lines keep the file's line numbers), and Falcon's file: its
ALiBi flag is the guard, the attention keeps its rotary path.
"""

from __future__ import annotations

import textwrap

import libcst as cst

from scaffold.analysis.optional_inputs import optional_inputs
from scaffold.analysis.source_fusions import read_source
from scaffold.blueprint import InputGuard, Location
from scaffold.source import locate

SOURCE = """
class Attention(nn.Module):
    def forward(self, hidden_states, bias, mask):
        if bias is None:
            hidden_states = rotate(hidden_states)
        if bias is not None:
            scores = scores + bias
        else:
            scores = plain(scores)
        return scores


class Model(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.use_bias = config.bias_on

    def forward(self, hidden_states, mask):
        bias = None
        if self.use_bias:
            bias = build_bias(mask)
        return self.layer(hidden_states, bias=bias, mask=mask)
"""

EXPECTED = """
class Attention(nn.Module):
    def forward(self, hidden_states, bias, mask):

        hidden_states = rotate(hidden_states)



        scores = plain(scores)
        return scores


class Model(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.use_bias = config.bias_on

    def forward(self, hidden_states, mask):
        bias = None


        return self.layer(hidden_states, bias=bias, mask=mask)
"""


def _text(source: str) -> str:
    return textwrap.dedent(source).strip("\n") + "\n"


def test_an_input_built_under_a_flag_is_read_off_and_the_flag_guarded() -> None:
    module, guards = optional_inputs(cst.parse_module(_text(SOURCE)), "toy.py")
    assert module.code == _text(EXPECTED)
    assert guards == (InputGuard("Model", "bias", "config.bias_on", Location("toy.py", 19)),)


def test_other_inputs_are_left_as_they_are() -> None:
    """No-op cases: a flag the constructor does not copy from the config, an input built unconditionally
    too, an input the model does not pass on by name, one no method tests against None."""
    cases = [
        SOURCE.replace("self.use_bias = config.bias_on", "self.use_bias = compute(config)"),
        SOURCE.replace(
            "        return self.layer(", "        bias = other(mask)\n        return self.layer("
        ),
        SOURCE.replace("bias=bias, mask=mask", "bias, mask=mask"),
        SOURCE.replace("bias is None", "bias == 0").replace("bias is not None", "bias != 0"),
    ]
    for source in cases:
        module, guards = optional_inputs(cst.parse_module(_text(source)), "toy.py")
        assert guards == ()
        assert module.code == _text(source)


def test_falcon_is_read_without_alibi_and_guards_config_alibi() -> None:
    read = read_source(locate("falcon"))
    (guard,) = read.guards
    assert (guard.owner, guard.name, guard.condition) == ("FalconModel", "alibi", "config.alibi")
    text = read.module.code
    assert "build_alibi_tensor(mask" not in text.split("class FalconModel")[1]
    attention = text.split("class FalconAttention")[1].split("\nclass ")[0]
    assert (
        "alibi.view" not in attention
        and "apply_rotary_pos_emb(query_layer, key_layer, cos, sin)" in attention
    )
