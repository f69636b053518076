"""The overfit check: the generated llama at T=2 with sequence parallelism memorises the fixed batch and
follows transformers' loss curve step by step; a `.detach()` in its MLP (forward right, training wrong)
fails on the curve. The oracle is transformers' model trained here, in the test process, with the same
AdamW on the same batch; the judgement rules are also tested on hand-made curves."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from conformance.checks import RunSettings, overfit
from conformance.checks.overfit import CHECK, OverfitConfig
from conformance.model_runs.fixed_batch import batch_for
from conformance.model_runs.training_loop import TrainingJob, TrainingRun
from conformance.results import CheckResult, Status
from reference_models import build, variant

STEPS = 30
CONFIGURATION = OverfitConfig("llama/gqa", 2, sequence_parallel=True, steps=STEPS)
DETACHED_MLP = (
    "down_proj = self.down_proj(self.act_fn(gate) * up)",
    "down_proj = self.down_proj((self.act_fn(gate) * up).detach())",
)


@pytest.fixture(scope="module")
def transformers_curve(checkpoint_cache: Path) -> list[float]:
    """transformers' llama trained here: AdamW(lr 5e-3, no weight decay), 30 steps on the parity batch (the
    causal mask only: the parallel model recomputes it, optimum-neuron's default)."""
    checkpoint = build(variant("llama/gqa"), checkpoint_cache)
    model = AutoModelForCausalLM.from_pretrained(checkpoint, attn_implementation="eager", dtype=torch.float32)
    batch = batch_for(model.config).reference_inputs(honours_padding=False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=0.0)
    losses = []
    for _ in range(STEPS):
        optimizer.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


def test_generated_llama_overfits_like_transformers(
    generated: Callable[[str], Path], checkpoint_cache: Path, transformers_curve: list[float]
) -> None:
    (result,) = CHECK.run(generated("llama"), [CONFIGURATION], RunSettings(cache_dir=checkpoint_cache))
    assert result.status is Status.PASS, result.reasons
    assert result.check == "overfit" and result.configuration == CONFIGURATION.as_dict()
    assert result.label == "overfit llama/gqa T=2 SP=on steps=30"
    figures = result.figures
    assert figures["reference_losses"] == pytest.approx(transformers_curve, abs=1e-6)
    assert figures["losses"] == pytest.approx(transformers_curve, abs=overfit.STEP_TOLERANCE)
    assert figures["losses"][0] == pytest.approx(math.log(256), abs=0.2)  # untrained: about uniform
    assert (
        figures["final_loss"]
        == figures["losses"][-1]
        < figures["threshold"]
        == pytest.approx(0.1 * math.log(256))
    )
    assert figures["max_step_abs_diff"] == max(
        abs(a - b) for a, b in zip(figures["losses"], figures["reference_losses"])
    )
    assert figures["max_step_abs_diff"] <= overfit.STEP_TOLERANCE and figures["first_departing_step"] is None
    assert figures["steps"] == STEPS and not figures["never_updated"]
    assert figures["sequence_parallel_effective"] is True
    (plot,) = result.plots
    assert "loss" in plot.title and plot.kind == "line" and plot.threshold == figures["threshold"]
    assert [s.name for s in plot.series] == ["parallel model (T=2, SP=on)", "transformers"]
    assert all(len(s.x) == len(s.y) == STEPS for s in plot.series)
    assert plot.series[0].y == figures["losses"] and plot.series[1].y == figures["reference_losses"]
    assert CheckResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result


def test_detached_mlp_trains_away_from_transformers(
    broken_copy: Callable[[str, list[tuple[str, str]]], Path], checkpoint_cache: Path
) -> None:
    package = broken_copy("llama", [DETACHED_MLP])
    (result,) = CHECK.run(package, [CONFIGURATION], RunSettings(cache_dir=checkpoint_cache))
    assert result.status is Status.FAIL
    figures = result.figures
    assert figures["losses"][0] == pytest.approx(figures["reference_losses"][0], abs=1e-5)  # same forward
    departed = figures["first_departing_step"]
    assert departed is not None and departed >= 1 and figures["max_step_abs_diff"] > 1e-2
    assert result.reasons[0].startswith(f"the loss curve departs from transformers' at step {departed} ")
    assert set(figures["never_updated"]) == {
        f"model.layers.{i}.{name}.weight"
        for i in range(2)
        for name in ("mlp.gate_up_proj", "post_attention_layernorm")
    }
    assert any(r.startswith("4 parameter(s) never received a gradient") for r in result.reasons)


def _run(losses: list[float], reference: list[float]) -> TrainingRun:
    job = TrainingJob("llama/gqa", 2, True, False, len(losses), "float32", "unused", vocab_size=256)
    return TrainingRun(job=job, losses=losses, reference_losses=reference)


def _judged(run: TrainingRun) -> CheckResult:
    config = OverfitConfig("llama/gqa", 2, True, steps=len(run.losses))
    return CHECK.result(config, overfit.judge_run(run))


def test_judgement_on_hand_made_curves() -> None:
    falling = [5.5, 3.0, 1.0, 0.3]
    assert _judged(_run(falling, falling)).status is Status.PASS
    drifting = _judged(_run([5.5, 3.0, 1.2, 0.3], falling))
    assert drifting.status is Status.FAIL and drifting.figures["first_departing_step"] == 2
    assert drifting.reasons[0].startswith(
        "the loss curve departs from transformers' at step 2 (|d loss| 0.2 > 0.0001"
    )
    stuck = _judged(_run([5.5, 4.0, 3.0, 0.6], [5.5, 4.0, 3.0, 0.5]))
    assert stuck.status is Status.FAIL
    assert stuck.reasons[-1] == (
        "the loss after 4 steps is 0.6000, not below the threshold 0.555 (transformers: 0.5000)"
    )
    exploded = _judged(_run([5.5, math.nan, math.nan, math.nan], falling))
    assert (
        exploded.status is Status.FAIL
        and exploded.reasons[0] == "the loss is not finite from step 1 on (nan)"
    )


def test_a_batch_transformers_cannot_learn_does_not_blame_the_model() -> None:
    """Both curves stay above the threshold, step for step alike: the tiny model's limit, a SKIP that says
    so (learning cannot be judged), not a FAIL and not a PASS."""
    flat = [5.5, 4.0, 3.0, 2.0]
    result = _judged(_run(flat, flat))
    assert result.status is Status.SKIP and result.figures["reference_reaches_threshold"] is False
    note, agreement = result.reasons
    assert note.startswith(
        "learning not judged: transformers itself does not reach the threshold 0.555 in 4 steps (2.0000)"
    )
    assert agreement == "its curve follows transformers' step by step (max |d loss| 0)"
    # A model that also departs from transformers still fails, on the curve.
    assert _judged(_run([5.5, 4.5, 3.5, 2.5], flat)).status is Status.FAIL
