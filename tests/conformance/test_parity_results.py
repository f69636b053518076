"""Parity as `CheckResult`s (`conformance.checks.parity.CHECK.run`): the generated llama passes at T=1 and
T=2 with SP on and off, and every figure and plot a report needs is there. Oracles: transformers' own
parameter names and loss on the same checkpoint and batch, and hand-made figures for the verdict."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from conformance.checks import RunSettings
from conformance.checks.parity import CHECK, ParityConfig, ParityJob, ParityMeasurement
from conformance.comparisons.gradients import GradientFigure
from conformance.model_runs.fixed_batch import batch_for
from conformance.results import CheckResult, Status
from reference_models import build, variant

CONFIGURATIONS = [
    ParityConfig("llama/gqa", 1),
    ParityConfig("llama/gqa", 2),
    ParityConfig("llama/gqa", 2, sequence_parallel=True),
]


@pytest.fixture(scope="module")
def results(generated: Callable[[str], Path], checkpoint_cache: Path) -> list[CheckResult]:
    return CHECK.run(generated("llama"), CONFIGURATIONS, RunSettings(cache_dir=checkpoint_cache))


@pytest.fixture(scope="module")
def transformers_figures(checkpoint_cache: Path) -> tuple[list[str], float]:
    checkpoint = build(variant("llama/gqa"), checkpoint_cache)
    model = AutoModelForCausalLM.from_pretrained(checkpoint, attn_implementation="eager", dtype=torch.float32)
    # These cases recompute the causal mask (optimum-neuron's default): transformers gets the causal mask only.
    batch = batch_for(model.config).reference_inputs(honours_padding=False)
    with torch.no_grad():
        loss = float(model(**batch).loss)
    return sorted(name for name, _ in model.named_parameters()), loss


def test_the_generated_llama_passes_in_every_configuration(results: list[CheckResult]) -> None:
    assert [r.configuration for r in results] == [c.as_dict() for c in CONFIGURATIONS]
    assert [r.label for r in results] == [
        "parity llama/gqa T=1 SP=off fuse_qkv=off",
        "parity llama/gqa T=2 SP=off fuse_qkv=off",
        "parity llama/gqa T=2 SP=on fuse_qkv=off",
    ]
    for result in results:
        assert result.check == "parity" and result.status is Status.PASS, result.reasons
        assert not result.reasons and result.traceback is None and result.deviations == []
        assert "fp32" in result.tolerance and result.seconds > 0


def test_figures_come_from_a_real_comparison(
    results: list[CheckResult], transformers_figures: tuple[list[str], float]
) -> None:
    names, loss = transformers_figures
    for result in results:
        figures = result.figures
        assert figures["outcome"] == "compared"
        assert figures["reference_loss"] == pytest.approx(loss, abs=1e-6)
        assert figures["loss_abs_diff"] <= 1e-5 and figures["logits_max_abs_diff"] <= 1e-5
        assert figures["tensors_compared"] == figures["tensors_within_bound"] == len(names)
        assert len(figures["worst_gradient_ratios"]) == 5
        assert all(0 <= ratio <= 1 for ratio in figures["worst_gradient_ratios"].values())
        assert set(figures["worst_gradient_ratios"]) <= set(names)
        assert figures["attention_layouts"] == ["separate"] == [figures["expected_attention"]]
        assert figures["sequence_parallel_effective"] == result.configuration["sequence_parallel"]
        assert figures["first_divergent_module"] is None
        assert list(figures["activation_errors"]) == [
            "model.embed_tokens",
            *(f"model.layers.{i}{part}" for i in range(2) for part in (".self_attn", ".mlp", "")),
            "model.norm",
        ]
        assert not (figures["no_gradient"] or figures["partial_gradients"] or figures["missing_gradients"])


def test_plots_show_every_gradient_against_its_bound_and_the_forward_per_module(
    results: list[CheckResult], transformers_figures: tuple[list[str], float]
) -> None:
    names, _ = transformers_figures
    for result in results:
        gradients, forward = result.plots
        assert gradients.kind == "bar" and gradients.log_y and gradients.x_labels == names
        (series,) = gradients.series
        assert len(series.y) == len(names) and all(0 <= y <= 1 for y in series.y)
        assert gradients.threshold == 1.0 and "bound" in gradients.threshold_label
        assert series.y == [result.figures["gradient_ratios"][name] for name in names]
        assert forward.x_labels == list(result.figures["activation_errors"]) and forward.threshold == 1.0
        again = CheckResult.from_dict(json.loads(json.dumps(result.to_dict())))
        assert again == result


def test_verdict_ranks_gradients_and_plots_the_true_ratios() -> None:
    config = ParityConfig("llama/gqa", 2, sequence_parallel=True)
    job = ParityJob(config, "c", "separate", None, 256)
    measured = ParityMeasurement(
        reasons=["1 gradient(s) out of bounds"],
        diagnoses=["gradient of b is partial"],
        gradients={
            "a": GradientFigure(max_abs_diff=0.0, reference_max_abs=1.0, bound=1e-4),
            "b": GradientFigure(max_abs_diff=5e-4, reference_max_abs=1.0, bound=1e-4),
            "c": GradientFigure(max_abs_diff=1e-5, reference_max_abs=1.0, bound=1e-4),
        },
    )
    check = CHECK.result(config, CHECK.judge(job, measured))
    assert check.status is Status.FAIL
    assert check.reasons == ["gradient of b is partial", "1 gradient(s) out of bounds"]
    assert check.figures["worst_gradient_ratios"] == {
        "b": pytest.approx(5.0),
        "c": pytest.approx(0.1),
        "a": 0.0,
    }
    assert check.figures["tensors_compared"] == 3 and check.figures["tensors_within_bound"] == 2
    assert check.figures["gradients_out_of_bound"] == ["b"]
    (plot,) = check.plots
    assert plot.x_labels == ["a", "b", "c"]
    assert plot.series[0].y == [0.0, pytest.approx(5.0), pytest.approx(0.1)]  # a zero stays zero
    assert not any(math.isinf(y) for y in plot.series[0].y)


@pytest.mark.parametrize(("layout", "status"), [("replicated", Status.PASS), ("vocab-parallel", Status.FAIL)])
def test_an_odd_vocabulary_must_be_refused_only_by_a_model_that_shards_it(
    layout: str, status: Status
) -> None:
    # granite's vocabulary of 49155 is not divisible by T=2: a vocab-parallel lm_head must refuse it, while a
    # model that keeps the vocabulary replicated builds and is compared like any other run
    config = ParityConfig("llama/gqa", 2)
    job = ParityJob(config, "c", "separate", "vocab_size 49155 is not divisible by T=2", 49155)
    measured = ParityMeasurement(
        logits_layout=layout,
        gradients={"a": GradientFigure(max_abs_diff=0.0, reference_max_abs=1.0, bound=1e-4)},
    )
    result = CHECK.result(config, CHECK.judge(job, measured))
    assert result.status is status
    if status is Status.FAIL:
        assert result.reasons[0].startswith("expected a refusal (vocab_size 49155")
    else:
        assert any("replicated" in reason for reason in result.reasons)
