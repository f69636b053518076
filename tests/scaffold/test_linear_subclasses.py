"""`scaffold.analysis.linear_subclasses`: local subclasses of nn.Linear whose forward is the plain linear
are read as nn.Linear (Falcon's FalconLinear). Oracles: hand-written expected code, the forms left alone,
and torch itself (the recognised forward computes exactly what nn.Linear computes)."""

from __future__ import annotations

from textwrap import dedent

import libcst as cst
import torch
from torch import nn

from scaffold.analysis.linear_subclasses import plain_linear_subclasses, read_as_linear
from scaffold.emit import format_python

SOURCE = """
class ToyLinear(nn.Linear):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        hidden_states = input @ self.weight.T
        if self.bias is None:
            return hidden_states
        return hidden_states + self.bias


class ToyAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.query_key_value = ToyLinear(config.hidden_size, 3 * config.hidden_size, bias=config.bias)
        self.dense = ToyLinear(config.hidden_size, config.hidden_size, bias=config.bias)
"""


def _read(source: str) -> str:
    return format_python(read_as_linear(cst.parse_module(dedent(source))).code)


def test_calls_of_a_plain_linear_subclass_read_as_its_base() -> None:
    expected = SOURCE.replace("= ToyLinear(", "= nn.Linear(")
    assert _read(SOURCE) == format_python(dedent(expected))


def test_the_functional_form_is_plain_too() -> None:
    source = SOURCE.replace(
        """        hidden_states = input @ self.weight.T
        if self.bias is None:
            return hidden_states
        return hidden_states + self.bias""",
        "        return F.linear(input, self.weight, self.bias)",
    )
    assert list(plain_linear_subclasses(cst.parse_module(dedent(source)))) == ["ToyLinear"]


def test_other_subclasses_are_left_as_they_are() -> None:
    """No-op cases (they stay refused, R012): another computation, a bias added unconditionally, an own
    constructor, another base."""
    cases = [
        SOURCE.replace("input @ self.weight.T", "input @ self.weight"),
        SOURCE.replace("return hidden_states + self.bias", "return hidden_states + 2 * self.bias"),
        SOURCE.replace(
            "class ToyLinear(nn.Linear):\n",
            "class ToyLinear(nn.Linear):\n    def __init__(self, a, b, bias):\n        super().__init__(a, b, bias)\n\n",
        ),
        SOURCE.replace("class ToyLinear(nn.Linear)", "class ToyLinear(nn.Conv1d)"),
    ]
    for source in cases:
        assert _read(source) == format_python(dedent(source))


def test_the_recognised_forward_is_what_nn_linear_computes() -> None:
    """The matched forward, executed, against nn.Linear's own, with and without a bias."""
    namespace: dict = {"nn": nn, "torch": torch}
    exec(dedent(SOURCE).split("\n\n\nclass ToyAttention")[0], namespace)
    for bias in (True, False):
        torch.manual_seed(0)
        toy = namespace["ToyLinear"](4, 3, bias=bias)
        plain = nn.Linear(4, 3, bias=bias)
        plain.load_state_dict(toy.state_dict())
        x = torch.randn(2, 5, 4)
        assert torch.allclose(toy(x), plain(x), atol=1e-6)
