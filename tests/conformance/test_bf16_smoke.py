"""The bf16 smoke check: the generated llama loads in bfloat16 at T=2 with sequence parallelism, trains
with finite, falling losses; the judgement rules are tested on hand-made curves. Oracle for the first
loss: transformers' model loaded in bf16 here, on the same checkpoint and batch."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from conformance.checks import RunSettings, bf16_smoke
from conformance.checks.bf16_smoke import CHECK, Bf16Config
from conformance.model_runs.fixed_batch import batch_for
from conformance.model_runs.training_loop import TrainingJob, TrainingRun
from conformance.results import CheckResult, Status
from reference_models import build, variant

STEPS = 10
CONFIGURATION = Bf16Config("llama/gqa", 2, sequence_parallel=True, steps=STEPS)


def test_generated_llama_trains_in_bf16(generated: Callable[[str], Path], checkpoint_cache: Path) -> None:
    checkpoint = build(variant("llama/gqa"), checkpoint_cache)
    model = AutoModelForCausalLM.from_pretrained(
        checkpoint, attn_implementation="eager", dtype=torch.bfloat16
    )
    # The parallel model recomputes the causal mask (the default): transformers gets the causal mask only.
    inputs = batch_for(model.config).reference_inputs(honours_padding=False)
    with torch.no_grad():
        first = float(model(**inputs).loss)
        fp32_first = float(model.float()(**inputs).loss)

    (result,) = CHECK.run(generated("llama"), [CONFIGURATION], RunSettings(cache_dir=checkpoint_cache))
    assert result.status is Status.PASS, result.reasons
    assert result.check == "bf16_smoke" and result.configuration == CONFIGURATION.as_dict()
    figures = result.figures
    assert figures["dtype"] == "bfloat16"
    assert len(figures["losses"]) == len(figures["reference_losses"]) == STEPS
    assert all(math.isfinite(loss) for loss in figures["losses"])
    assert figures["reference_losses"][0] == first  # transformers in bf16, same batch
    assert figures["losses"][0] == pytest.approx(first, abs=1e-2)
    assert figures["losses"][0] != fp32_first  # really bf16 (rounding shows in the loss)
    assert figures["relative_drop"] == pytest.approx(
        (figures["losses"][0] - figures["losses"][-1]) / figures["losses"][0]
    )
    assert figures["relative_drop"] >= bf16_smoke.MIN_RELATIVE_DROP
    (plot,) = result.plots
    assert "loss" in plot.title and all(len(s.y) == STEPS for s in plot.series)
    assert plot.series[0].y == figures["losses"]


def _run(losses: list[float], reference: list[float] | None = None) -> TrainingRun:
    job = TrainingJob("llama/gqa", 2, False, False, len(losses), "bfloat16", "unused", vocab_size=256)
    return TrainingRun(job=job, losses=losses, reference_losses=list(reference or losses))


def _judged(run: TrainingRun) -> CheckResult:
    return CHECK.result(Bf16Config("llama/gqa", 2, steps=len(run.losses)), bf16_smoke.judge_run(run))


def test_judgement_on_hand_made_curves() -> None:
    assert _judged(_run([5.5, 4.0, 3.0])).status is Status.PASS
    flat = _judged(_run([5.5, 5.4, 5.0], [5.5, 4.0, 3.0]))  # transformers learns, the model hardly
    assert flat.status is Status.FAIL
    assert flat.reasons == [
        "the bf16 loss does not fall enough: 5.5000 -> 5.0000 in 3 steps, a 9% drop < 25%"
    ]
    broken = _judged(_run([5.5, math.inf, math.nan]))
    assert broken.status is Status.FAIL and broken.reasons == [
        "the bf16 loss is not finite at step(s) [1, 2] (first: inf)"
    ]
    (plot,) = flat.plots
    assert plot.threshold == pytest.approx(5.5 * 0.75)  # the line the last loss must end below


def test_norm_that_forgets_to_cast_back_fails_in_bf16_only(
    broken_copy: Callable[[str, list[tuple[str, str]]], Path], checkpoint_cache: Path
) -> None:
    # A contributor drops the cast back to the input dtype: harmless in fp32 (parity passes), but in bf16 the
    # norm hands fp32 activations to bf16 parallel layers.
    package = broken_copy(
        "llama",
        [
            (
                "        return self.weight * hidden_states.to(input_dtype)\n",
                "        return self.weight * hidden_states\n",
            )
        ],
    )
    settings = RunSettings(cache_dir=checkpoint_cache)
    (result,) = CHECK.run(package, [CONFIGURATION], settings)
    assert result.status is Status.FAIL
    reasons = " ".join(result.reasons)
    assert "dtype" in reasons.lower() and "modeling_llama.py" in reasons, reasons


def test_a_batch_transformers_learns_slowly_in_bf16_does_not_blame_the_model() -> None:
    """transformers drops 10% (under the 25% bound): the model must drop half of that, and the row says so."""
    slow = [5.0, 4.8, 4.5]
    along = _judged(_run([5.0, 4.85, 4.7], slow))  # a 6% drop, more than half of transformers' 10%
    assert along.status is Status.PASS
    (note,) = along.reasons
    assert note.startswith("transformers itself drops only 10% in bf16 (< 25%)")
    stuck = _judged(_run([5.0, 4.95, 4.9], slow))  # 2%, less than half of 10%
    assert stuck.status is Status.FAIL
    assert (
        stuck.reasons[0]
        == "the bf16 loss falls 2% (5.0000 -> 4.9000), less than 50% of transformers' own 10% drop in bf16"
    )
