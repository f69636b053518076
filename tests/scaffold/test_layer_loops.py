"""The loops over the decoder layers NXS012 checkpoints (R022 when there is none): hand-written loop shapes,
and the real models that loop with `enumerate`."""

from __future__ import annotations

import libcst as cst
import pytest

from scaffold.rules.base_model_forward import layer_loop_calls, loop_layer

from .conftest import blueprint_of


def first_loop(text: str) -> cst.For:
    (statement,) = cst.parse_module(text).body
    assert isinstance(statement, cst.For)
    return statement


@pytest.mark.parametrize(
    ("loop", "layer"),
    [
        ("for decoder_layer in self.layers:\n    pass\n", "decoder_layer"),
        ("for block in self.layers[: self.config.num_hidden_layers]:\n    pass\n", "block"),
        ("for i, block in enumerate(self.layers):\n    pass\n", "block"),
        ("for i, block in enumerate(self.layers[:2]):\n    pass\n", "block"),
        ("for i, block in enumerate(self.norms):\n    pass\n", None),  # another list
        ("for block, cache in zip(self.layers, caches):\n    pass\n", None),  # not enumerate
        ("for (i, j), block in enumerate(self.layers):\n    pass\n", None),  # nested target
        ("for i, block in enumerate(self.layers, 1):\n    pass\n", "block"),
    ],
)
def test_the_name_bound_to_each_layer(loop: str, layer: str | None):
    assert loop_layer(first_loop(loop), "layers") == layer


def test_calls_in_an_enumerated_loop_are_counted():
    forward = cst.parse_module(
        "def forward(self, x):\n"
        "    for idx, layer in enumerate(self.layers):\n"
        "        if self.training and idx > 3:\n"
        "            continue\n"
        "        outputs = layer(x, idx)\n"
        "        x = outputs[0]\n"
        "    return x\n"
    ).body[0]
    assert isinstance(forward, cst.FunctionDef)
    assert layer_loop_calls(forward, "layers") == 1


@pytest.mark.parametrize("model_type", ["gpt_neo", "xglm", "biogpt", "ctrl"])
def test_enumerated_layer_loops_are_not_refused(model_type: str):
    assert "R022" not in {refusal.code for refusal in blueprint_of(model_type).refusals}
