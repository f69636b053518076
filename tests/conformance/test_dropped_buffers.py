"""Persistent buffers and the host's consolidation (`conformance.comparisons.dropped_buffers`).

The oracle of the host behaviour is the released optimum-neuron 0.4.5 itself (run unmodified as a
checkout host): its consolidation drops a persistent buffer that the shards hold, and the kit's host must
do the same. The judgements are checked on hand-made outcomes: a dropped buffer that holds its
constructor's value is a WARN naming it, one that does not is a FAIL, and a real defect next to a dropped
buffer stays a FAIL.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from conformance.checks import round_trip, topology_change
from conformance.comparisons.dropped_buffers import HOST_DEFECT, classify, persistent_buffer_names
from conformance.results import Status

REPO = Path(__file__).resolve().parents[2]

CONSOLIDATE = """
import json
import torch
from pathlib import Path
from conformance.backends import activate
backend = activate("reference"{checkout})
utils = backend.host_module("transformations_utils")
weight = torch.arange(4.0).reshape(2, 2)
sharded = {{"mlp.up.weight": [weight[:1], weight[1:]], "mlp.act.alpha": [torch.ones(1)] * 2,
            "mlp.act.beta": [torch.full((), 0.5)] * 2}}
metadata = {{"mlp.up.weight": {{"tensor_model_parallel": True, "partition_dim": 0, "partition_stride": 1}},
            "mlp.act.alpha": {{"tensor_model_parallel": False}}}}
print(json.dumps(sorted(utils.to_original_weights([], sharded, metadata))))
"""


def _consolidated_keys(checkout: Path | None) -> list[str]:
    argument = f', Path({str(checkout)!r}), "checkout"' if checkout else ""
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(CONSOLIDATE.format(checkout=argument))],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_released_consolidation_drops_persistent_buffers_and_the_kits_host_mirrors_it(
    released_checkout: Path,
) -> None:
    expected = ["mlp.act.alpha", "mlp.up.weight"]  # the buffer mlp.act.beta is not among them
    assert _consolidated_keys(released_checkout) == expected
    assert _consolidated_keys(None) == expected


def test_persistent_buffer_names() -> None:
    module = torch.nn.Module()
    module.weight = torch.nn.Parameter(torch.ones(2))
    module.register_buffer("kept", torch.zeros(1))
    module.register_buffer("derived", torch.zeros(1), persistent=False)
    assert persistent_buffer_names(module) == {"kept"}


def test_classify_by_the_constructors_value() -> None:
    half = torch.tensor(0.5, dtype=torch.bfloat16)
    saved = {"a.beta": half, "a.eps": torch.tensor(-1e-6, dtype=torch.bfloat16), "b.beta": half, "c.x": half}
    fallback = {
        "a.beta": half.clone(),
        "a.eps": torch.tensor(-1e-6, dtype=torch.bfloat16),
        "b.beta": torch.tensor(0.25, dtype=torch.bfloat16),
    }
    found = classify(saved, saved, fallback)
    assert found.restored == ["a.beta", "a.eps"]
    assert set(found.lost) == {"b.beta", "c.x"}
    assert "max |Δ| 0.25" in found.lost["b.beta"] and "no such buffer" in found.lost["c.x"]
    assert "bfloat16" in classify(["a.beta"], {"a.beta": half.float()}, fallback).lost["a.beta"]


def _round_trip_verdict(outcome: round_trip.RoundTripOutcome) -> Status:
    config = round_trip.RoundTripConfig("apertus/gqa", 2)
    job = round_trip.RoundTripJob(config, "/nowhere/checkpoint", "workdir")
    return round_trip.CHECK.result(config, round_trip.CHECK.judge(job, outcome))


def test_round_trip_warns_for_buffers_a_loader_restores() -> None:
    half = torch.tensor(0.5)
    outcome = round_trip.RoundTripOutcome(
        dropped_buffers=classify(["act.beta"], {"act.beta": half}, {"act.beta": half})
    )
    result = _round_trip_verdict(outcome)
    assert result.status is Status.WARN
    assert result.figures["buffers_dropped_by_consolidation"] == ["act.beta"]
    assert len(result.reasons) == 1 and "act.beta" in result.reasons[0] and HOST_DEFECT in result.reasons[0]


@pytest.mark.parametrize("other_defect", [False, True])
def test_round_trip_fails_for_a_lost_buffer_or_another_defect(other_defect: bool) -> None:
    half = torch.tensor(0.5)
    fallback = {"act.beta": half if other_defect else torch.tensor(0.25)}
    outcome = round_trip.RoundTripOutcome(
        dropped_buffers=classify(["act.beta"], {"act.beta": half}, fallback),
        reasons=["consolidated checkpoint lacks 1 tensor(s) of the original: up.weight"]
        if other_defect
        else [],
    )
    result = _round_trip_verdict(outcome)
    assert result.status is Status.FAIL
    assert any("act.beta" in reason for reason in result.reasons)


def _topology_result(missing: list[str], fallback_beta: float, logits_shift: float = 0.0):
    config = topology_change.TopologyConfig("apertus/gqa", 2, 1)
    job = topology_change.SourceJob(config, "/nowhere/checkpoint", "workdir", 8)
    logits = torch.linspace(-1.0, 1.0, 16).reshape(1, 2, 8)
    source = topology_change.SideOutcome(logits=logits, dropped_buffers={"act.beta": torch.tensor(0.5)})
    target = topology_change.SideOutcome(
        logits=logits + logits_shift, info={"missing_keys": missing, "unexpected_keys": []}
    )
    outcome = topology_change.TopologyOutcome(source, logits.clone(), [], target)
    fallback = {"act.beta": torch.tensor(fallback_beta)}
    original = topology_change.constructor_buffers
    topology_change.constructor_buffers = lambda _checkpoint: fallback
    try:
        return topology_change.CHECK.result(config, topology_change.CHECK.judge(job, outcome))
    finally:
        topology_change.constructor_buffers = original


def test_topology_warns_for_restored_buffers_and_fails_otherwise() -> None:
    restored = _topology_result(["act.beta"], 0.5)
    assert restored.status is Status.WARN and "act.beta" in restored.reasons[0]
    assert _topology_result(["act.beta"], 0.25).status is Status.FAIL
    # Another missing key, or other logits, is a FAIL whatever the buffers.
    assert _topology_result(["act.beta", "up.weight"], 0.5).status is Status.FAIL
    assert _topology_result(["act.beta"], 0.5, logits_shift=1e-2).status is Status.FAIL
