"""Each check's documented tolerance is the bound it applies: a hand-made result just inside the bound
passes and one just outside fails, through the check's own judgement (`Check.judge` or the function it
calls), and the number is the one its tolerance text (docs/conformance-checks.md) states.

The hand-made inputs are tensors and loss curves whose differences are set here to a bound times
0.9 or 1.1; the bounds come from the check modules. Every registered check has a case, so a
new check must say where its bound is.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

from conformance.checks import (
    bf16_smoke,
    dropout,
    init,
    lora_round_trip,
    overfit,
    parity,
    replicas,
    round_trip,
    topology_change,
)
from conformance.comparisons.adapters import compare_adapters
from conformance.comparisons.bound_text import number
from conformance.comparisons.gradients import compare_gradients
from conformance.comparisons.init_statistics import RANDOM, InitStatistics, Z
from conformance.comparisons.outputs import compare_outputs
from conformance.comparisons.state_dicts import diff_state_dicts, explain
from conformance.harness.protocol import Verdict
from conformance.harness.registry import check_names
from conformance.model_runs.training_loop import TrainingJob, TrainingRun
from conformance.results import Status

INSIDE, OUTSIDE = 0.9, 1.1


def _logits(seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 4, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _status(check, config, verdict: Verdict) -> Status:
    return check.CHECK.result(config, verdict).status


def _parity(scale: float) -> list[str]:
    tol = parity.CHECK.tolerances
    assert (
        f"absolute {number(tol.logits_atol)}" in parity.TOLERANCE
        and f"{number(tol.grad_rtol)} *" in parity.TOLERANCE
    )
    reference = _logits()
    outputs = compare_outputs(
        reference + tol.logits_atol * scale,
        reference,
        5.0 + tol.loss_atol * scale,
        5.0,
        tol.logits_atol,
        tol.loss_atol,
    )
    grad = torch.full((3, 3), 2.0, dtype=torch.float64)
    bound = tol.grad_rtol * 2.0 + tol.grad_atol
    gradients = compare_gradients({"w": grad + bound * scale}, {"w": grad}, tol.gradient)
    return outputs.reasons + gradients.reasons


def _round_trip(scale: float) -> list[str]:
    assert "bit for bit" in round_trip.TOLERANCE
    tensor = torch.linspace(0.5, 1.5, 6)
    rebuilt = tensor.clone() if scale < 1 else torch.nextafter(tensor, torch.tensor(2.0))  # one ulp off
    diff = diff_state_dicts({"model.w": rebuilt}, {"model.w": tensor})
    config = round_trip.RoundTripConfig("llama/gqa", 2)
    job = round_trip.RoundTripJob(config, "checkpoint", "workdir")
    verdict = round_trip.CHECK.judge(
        job, round_trip.RoundTripOutcome(diff_figures=diff.figures(), reasons=explain(diff, {}))
    )
    return verdict.reasons


def _topology(scale: float) -> list[str]:
    assert (
        f"<= {number(topology_change.LOGITS_RTOL)} * max |reference logits| + {number(topology_change.LOGITS_ATOL)}"
        in (topology_change.TOLERANCE)
    )
    source = _logits().float()
    bound = topology_change.logits_bound(source)
    config = topology_change.TopologyConfig("llama/gqa", 2, 1)
    job = topology_change.SourceJob(config, "checkpoint", "workdir", 8)
    outcome = topology_change.TopologyOutcome(
        source=topology_change.SideOutcome(logits=source, attention=["separate"]),
        transformers_logits=source + bound * scale,
        transformers_reasons=[],
        target=topology_change.SideOutcome(logits=source - bound * scale, attention=["separate"]),
    )
    return topology_change.CHECK.judge(job, outcome).reasons


def _lora(scale: float) -> list[str]:
    tol = lora_round_trip.CHECK.tolerances
    assert (
        f"absolute {number(tol.logits_atol)}" in tol.reason and f"{number(tol.mean_ulps)} ulps" in tol.reason
    )
    generator = torch.Generator().manual_seed(0)
    original = {
        f"m.layers.0.mlp.{p}.lora_A.weight": torch.randn(2, 4, generator=generator)
        for p in ("gate_proj", "up_proj")
    }
    mean = (
        original["m.layers.0.mlp.gate_proj.lora_A.weight"] + original["m.layers.0.mlp.up_proj.lora_A.weight"]
    ) / 2
    # A fused lora_A comes back as the mean, within 4 ulps of its magnitude.
    off = tol.mean_bound(mean) * scale
    consolidated = {key: mean + off for key in original}
    _, reasons = compare_adapters(original, consolidated, "separate", tol)
    reference = _logits(1).float()
    found = {"base": reference - 1.0, "consolidated": reference, "original": reference}
    reasons += lora_round_trip.logits_reasons(reference + tol.logits_atol * scale, found, {}, tol)
    return reasons


def _curve_run(losses: list[float], reference: list[float], dtype: str = "float32") -> TrainingRun:
    job = TrainingJob("llama/gqa", 2, True, False, len(losses), dtype, "checkpoint", vocab_size=256)
    return TrainingRun(job=job, losses=losses, reference_losses=reference)


def _overfit(scale: float) -> list[str]:
    assert (
        f"Bound {number(overfit.STEP_TOLERANCE)} per step" in overfit.TOLERANCE
        and "a tenth of ln(V)" in overfit.TOLERANCE
    )
    limit = overfit.threshold(256)
    reference = [5.5, 2.0, limit * INSIDE]
    # Step 1 within (or just over) the per-step bound, the last loss under (or just over) the threshold.
    losses = [5.5, 2.0 + overfit.STEP_TOLERANCE * scale, limit * (INSIDE if scale < 1 else scale)]
    config = overfit.OverfitConfig("llama/gqa", 2, True, steps=3)
    verdict = overfit.judge_run(_curve_run(losses, reference))
    return [] if _status(overfit, config, verdict) is Status.PASS else verdict.reasons


def _bf16(scale: float) -> list[str]:
    assert f"at least {bf16_smoke.MIN_RELATIVE_DROP:.0%} below the first" in bf16_smoke.TOLERANCE.replace(
        "the last at least", "at least"
    )
    first = 5.0
    last = first * (1 - bf16_smoke.MIN_RELATIVE_DROP * (2 - scale))  # a drop just over (inside) or under it
    learning = [first, 3.0, 2.0]  # transformers drops 60%: the 25% bound applies
    return bf16_smoke.judge_run(_curve_run([first, 4.0, last], learning, "bfloat16")).reasons


def _dropout(scale: float) -> list[str]:
    assert (
        f"differ by more than {number(dropout.LIVE_MIN)}" in dropout.TOLERANCE
        and f"{number(dropout.EVAL_ATOL)}" in (dropout.TOLERANCE)
    )
    config = dropout.DropoutConfig("seed_oss/gqa", 2)
    job = dropout.DropoutJob(config, "checkpoint", 8, (("attention_dropout", 0.1),))
    logits = _logits(2).float()
    train = (logits, logits + dropout.LIVE_MIN * (2 - scale))  # live: differ by more than the minimum
    evaluation = (logits, logits + dropout.EVAL_ATOL * scale)
    return dropout.judge_logits(job, train, evaluation, logits).reasons


def _init(scale: float) -> list[str]:
    """A std off by `scale` times Z standard errors of the difference of two std estimators (each
    sqrt(s^2 (kurtosis - 1) / 4n) for n values; a normal's kurtosis is 3), solved by fixed point."""
    assert f"{Z:g} standard errors" in init.TOLERANCE and "sqrt(s^2 (kurtosis - 1) / 4n)" in init.TOLERANCE
    n, reference_std, kurtosis = 4096, 0.04, 3.0
    std = reference_std
    for _ in range(50):
        std = reference_std + scale * Z * math.sqrt((std**2 + reference_std**2) * (kurtosis - 1) / (4 * n))
    job = init.InitJob(init.InitConfig("llama/gqa", 2), "checkpoint")
    found = init.InitMeasurement(
        model={"w": InitStatistics(n, 0.0, std, kurtosis, RANDOM)},
        reference={"w": InitStatistics(n, 0.0, reference_std, kurtosis, RANDOM)},
    )
    return init.judge_measurement(job, found).reasons


def _replicas(scale: float) -> list[str]:
    """Bit-identical: inside is a spread of exactly 0, outside the smallest difference fp32 can hold at 1.0."""
    assert "Bit-identical" in replicas.TOLERANCE
    spread = 0.0 if scale < 1 else torch.finfo(torch.float32).eps
    job = replicas.ReplicasJob(replicas.ReplicasConfig("llama/gqa", 2), "checkpoint", 256, 5)
    run = replicas.ReplicasRun(
        parameter_spread={"model.norm.weight": spread},
        gradient_spread=[{"model.norm.weight": spread}],
    )
    return replicas.judge_run(job, run).reasons


BOUNDARIES: dict[str, Callable[[float], list[str]]] = {
    "parity": _parity,
    "round_trip": _round_trip,
    "topology_change": _topology,
    "lora_round_trip": _lora,
    "overfit": _overfit,
    "bf16_smoke": _bf16,
    "dropout": _dropout,
    "init": _init,
    "replicas": _replicas,
}


def test_every_registered_check_has_a_boundary_case() -> None:
    assert sorted(BOUNDARIES) == sorted(check_names())


@pytest.mark.parametrize("check", sorted(BOUNDARIES))
def test_just_inside_the_bound_passes_and_just_outside_fails(check: str) -> None:
    assert BOUNDARIES[check](INSIDE) == [], check
    outside = BOUNDARIES[check](OUTSIDE)
    assert outside, f"{check}: a result just outside its documented bound passed"


def test_the_failures_just_outside_name_what_crossed_the_bound() -> None:
    text = {check: " ".join(case(OUTSIDE)) for check, case in BOUNDARIES.items()}
    assert "logits differ" in text["parity"] and "loss differs" in text["parity"]
    assert "gradient(s) out of bounds, worst w" in text["parity"]
    assert "1 tensor(s) differ from the original: model.w" in text["round_trip"]
    assert "transformers' logits differ from the T=a model's" in text["topology_change"]
    assert "T=1 logits differ from the T=a model's" in text["topology_change"]
    assert "lora_A_fused_vs_mean tensor(s) differ" in text["lora_round_trip"]
    assert "logits differ from transformers' PeftModel" in text["lora_round_trip"]
    assert (
        "departs from transformers' at step 1" in text["overfit"]
        and "not below the threshold" in text["overfit"]
    )
    assert "does not fall enough" in text["bf16_smoke"]
    assert "dropout is not live in train()" in text["dropout"] and "not off in eval()" in text["dropout"]
    assert "w: std" in text["init"] and "standard errors" in text["init"]
    assert "model.norm.weight is not the same on every TP rank" in text["replicas"]
    assert not math.isnan(overfit.threshold(256))
