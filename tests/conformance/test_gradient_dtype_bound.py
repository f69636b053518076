"""The gradient bound follows the gradient's dtype and the reduction it went through, both ways.

A bf16 parameter replicated over T=2 ranks (apertus' xIELU alpha_p) gets its gradient as the bf16 sum of
two bf16-rounded rank partials; transformers rounds the full sum once. The oracle is bf16 arithmetic
worked out by hand: partials 1.0045 and 1.0035 round to 1.0078125 (above half an ulp, 2^-8, over 1) and
1.0 (below it); their sum 2.0078125 is a tie between the bf16 neighbours 2.0 and 2.015625 and goes to the
even 2.0, while the exact 2.008 rounds to 2.015625: one ulp (2^-6) apart, 0.78%, which the fp32 bound
(1e-4 relative) would call a FAIL. A gradient missing the TP sum (one partial) or counted twice is still a
FAIL.
"""

from __future__ import annotations

import pytest
import torch

from conformance.checks import parity
from conformance.comparisons.gradients import (
    GradientBound,
    coarser_dtype,
    compare_gradients,
    replicated_partials,
    rounding_rtol,
)

BOUND = parity.CHECK.tolerances.gradient
PARTIALS = (1.0045, 1.0035)


def _bf16(value: float) -> torch.Tensor:
    return torch.tensor([value], dtype=torch.float64).to(torch.bfloat16)


def _two_rank_sum() -> torch.Tensor:
    """What the TP model holds: each rank's partial rounded to bf16, summed in bf16."""
    first, second = (_bf16(value) for value in PARTIALS)
    return first + second


def _transformers() -> torch.Tensor:
    """What transformers holds: the whole sum, rounded once."""
    return _bf16(sum(PARTIALS))


def test_the_oracle_values_are_the_hand_computed_ones() -> None:
    assert _bf16(PARTIALS[0]).item() == 1.0078125
    assert _bf16(PARTIALS[1]).item() == 1.0
    assert _two_rank_sum().item() == 2.0
    assert _transformers().item() == 2.015625


def test_bf16_sum_of_two_rounded_partials_passes() -> None:
    found = compare_gradients(
        {"act.alpha_p": _two_rank_sum()}, {"act.alpha_p": _transformers()}, BOUND, {"act.alpha_p": 2}
    )
    assert found.reasons == []
    figure = found.figures["act.alpha_p"]
    assert figure.max_abs_diff == 2**-6
    # 7 unit roundoffs of bf16 (2^-8 each) of the scale 2.015625, plus the absolute floor.
    assert figure.bound == pytest.approx(7 * 2**-8 * 2.015625 + BOUND.atol)


def test_the_same_difference_in_fp32_stays_a_fail() -> None:
    """The rounding allowance is the dtype's: fp32 gradients keep the measured 1e-4."""
    found = compare_gradients({"w": _two_rank_sum().float()}, {"w": _transformers().float()}, BOUND, {"w": 2})
    assert len(found.reasons) == 1 and "out of bounds" in found.reasons[0]


@pytest.mark.parametrize(
    ("wrong", "what"),
    [
        (lambda: _bf16(PARTIALS[0]), "missing the TP sum (one rank's partial)"),
        (lambda: _two_rank_sum() * 2, "summed twice"),
        (lambda: _two_rank_sum() / 2, "averaged instead of summed"),
    ],
)
def test_a_wrong_bf16_gradient_still_fails(wrong, what: str) -> None:
    found = compare_gradients({"a": wrong()}, {"a": _transformers()}, BOUND, {"a": 2})
    assert found.reasons, what
    assert "out of bounds, worst a" in found.reasons[0]


def test_rounding_rtol_counts_both_sides() -> None:
    eps = 2**-7  # bf16
    assert rounding_rtol(torch.bfloat16) == pytest.approx(4 * eps / 2)
    assert rounding_rtol(torch.bfloat16, 2) == pytest.approx(7 * eps / 2)
    assert rounding_rtol(torch.bfloat16, 4, 2) == pytest.approx((11 + 5) * eps / 2)
    assert rounding_rtol(torch.float32, 8) < 1e-5


def test_fp32_bound_is_unchanged() -> None:
    """Every fp32 model keeps its bound: the rounding term is far below the measured rtol."""
    bound = GradientBound(1e-4, 1e-7)
    assert bound.of(3.0, torch.float32, 8, 2) == bound.of(3.0) == pytest.approx(1e-4 * 3.0 + 1e-7)


def test_coarser_dtype() -> None:
    assert coarser_dtype(torch.float32, torch.bfloat16) is torch.bfloat16
    assert coarser_dtype(torch.float16, torch.float32) is torch.float16
    assert coarser_dtype(torch.float64, torch.float32) is torch.float32


def test_replicated_partials_from_the_metadata() -> None:
    metadata = {
        "model.norm.weight": {"tensor_model_parallel": False},
        "model.layers.0.mlp.up_proj.weight": {"tensor_model_parallel": True, "partition_dim": 0},
    }
    assert replicated_partials(metadata, 4) == {
        "model.norm.weight": 4,
        "model.layers.0.mlp.up_proj.weight": 1,
    }
    assert replicated_partials(metadata, 2, 2)["model.norm.weight"] == 4
