"""R031: a column-parallel output multiplied element by element by an argument of the forward.

Oracles: hand-written sources (tests/scaffold/synthetic.py's llama-like model), where a reader sees which
product pairs the rank's share of a linear's features with a full-width argument; the installed gemma3n
file, whose decoder layer gates each layer's own input that way (`torch.multiply(gate, per_layer_input)`).
"""

from __future__ import annotations

from pathlib import Path

from scaffold.analysis import analyze
from scaffold.source import locate

from .synthetic import marked_line, model_source

FEED_FORWARD = "        return self.s(self.p(x) * F.silu(self.r(x)))"
BLOCK_CALL = "        return x + self.ff(self.n2(x))"


def _refusals(tmp_path: Path, text: str) -> list:
    path = tmp_path / "modeling_synthetic.py"
    path.write_text(text)
    return [refusal for refusal in analyze(locate("llama", path)).refusals if refusal.code == "R031"]


def test_a_column_output_times_an_argument_is_refused_at_the_product(tmp_path: Path):
    text = (
        model_source()
        .replace(
            "    def forward(self, x):\n" + FEED_FORWARD,
            "    def forward(self, x, extra):\n"
            + FEED_FORWARD.replace(
                "self.s(self.p(x) * F.silu(self.r(x)))", "self.s(self.p(x) * F.silu(self.r(x)) * extra)  # <-"
            ),
        )
        .replace(BLOCK_CALL, "        return x + self.ff(self.n2(x), x)")
    )
    (refusal,) = _refusals(tmp_path, text)
    assert refusal.location.line == marked_line(text)
    assert "Feed: the output of p, r meets the argument extra" in refusal.message


def test_products_of_projections_and_scalings_are_not_refused(tmp_path: Path):
    # `p(x) * silu(r(x))`: both shares of the same columns; `p(x) * 0.5`: no argument.
    text = model_source().replace(FEED_FORWARD, FEED_FORWARD.replace("self.r(x)))", "self.r(x)) * 0.5)"))
    assert _refusals(tmp_path, text) == []
    assert _refusals(tmp_path, model_source()) == []


def test_gemma3n_per_layer_gate_times_its_input_is_refused():
    refusals = [r for r in analyze(locate("gemma3n_text")).refusals if r.code == "R031"]
    assert [r.message.split(";")[0] for r in refusals] == [
        "Gemma3nTextDecoderLayer: the output of per_layer_input_gate meets the argument per_layer_input "
        "element by element"
    ]
