"""A generated model that hard-codes a config default fails: the catalogue never holds the default.

Each break replaces a config read by the constant transformers' LlamaConfig has as its default (the
activation `silu`, the final norm's eps 1e-6, no rope scaling). With tiny configs that kept the defaults
these copies matched transformers exactly; with the catalogue's values (`gelu_pytorch_tanh`, 3e-5, YaRN)
parity fails and names the first module that departs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from conformance.checks import RunSettings, parity
from conformance.results import Status
from reference_models import variant

DEFAULT_ACTIVATION = ("self.act_fn = ACT2FN[config.hidden_act]", 'self.act_fn = ACT2FN["silu"]')
DEFAULT_FINAL_NORM_EPS = (
    "        self.norm = LlamaRMSNorm(\n            config.hidden_size,\n            eps=config.rms_norm_eps,",
    "        self.norm = LlamaRMSNorm(\n            config.hidden_size,\n            eps=1e-6,",
)
NO_ROPE_SCALING = (
    'self.rope_type = config.rope_scaling.get("rope_type", config.rope_scaling.get("type"))',
    'self.rope_type = "default"',
)


def test_the_catalogue_holds_no_default_that_the_breaks_below_hard_code() -> None:
    nondefault = variant("llama/gqa").nondefault()
    assert nondefault["hidden_act"] == ("silu", "gelu_pytorch_tanh")
    assert nondefault["rms_norm_eps"] == (1e-6, 3e-5)
    assert nondefault["rope_scaling"][0] is None


@pytest.mark.parametrize(
    ("replacement", "first_departure"),
    [
        (DEFAULT_ACTIVATION, "model.layers.0.mlp"),
        (DEFAULT_FINAL_NORM_EPS, "model.norm"),
        (NO_ROPE_SCALING, "model.layers.0.self_attn"),
    ],
    ids=["activation", "final-norm-eps", "rope-scaling"],
)
def test_a_constant_equal_to_the_default_fails_parity_where_it_sits(
    broken_copy: Callable[[str, list[tuple[str, str]]], Path],
    checkpoint_cache: Path,
    replacement: tuple[str, str],
    first_departure: str,
) -> None:
    (result,) = parity.CHECK.run(
        broken_copy("llama", [replacement]),
        [parity.ParityConfig("llama/gqa", 1)],
        RunSettings(cache_dir=checkpoint_cache),
    )
    assert result.status is Status.FAIL, result.reasons
    assert result.figures["first_divergent_module"] == first_departure, result.reasons
    assert any(reason.startswith("logits differ") for reason in result.reasons), result.reasons
