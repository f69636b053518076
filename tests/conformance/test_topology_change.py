"""The topology-change check on generated packages: a seeded model built from config at one T, saved and
consolidated, must give the same logits in transformers and loaded at another T, and the same seed must
build the same model at both sizes. A broken stride on the fused gate/up layer must fail naming it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from safetensors.torch import load_file

from conformance.checks import RunSettings
from conformance.checks.topology_change import CHECK, TopologyConfig
from conformance.results import Status
from reference_models import build, variant

WRONG_GATE_UP_STRIDE = ("            stride=2,", "            stride=1,")


@pytest.fixture
def settings(checkpoint_cache: Path) -> RunSettings:
    return RunSettings(cache_dir=checkpoint_cache, timeout=240.0)


def test_llama_changes_topology_both_ways(
    generated: Callable[[str], Path], settings: RunSettings, checkpoint_cache: Path
) -> None:
    configurations = [
        TopologyConfig("llama/gqa", 2, 1),
        TopologyConfig("llama/gqa", 1, 2),
        TopologyConfig("llama/mqa", 1, 2),
    ]
    results = CHECK.run(generated("llama"), configurations, settings)

    assert [r.configuration for r in results] == [c.as_dict() for c in configurations]
    assert results[0].label == "topology_change llama/gqa from T=2 T=1"
    for result in results:
        assert result.status is Status.PASS, (result.label, result.reasons)
        figures = result.figures
        assert figures["target_logits_max_abs_diff"] <= figures["logits_bound"]
        assert figures["transformers_logits_max_abs_diff"] <= figures["logits_bound"]
        keys = load_file(
            build(variant(result.configuration["variant"]), checkpoint_cache) / "model.safetensors"
        )
        assert figures["init_tensors_compared"] == len(keys)
        assert figures["init_tensors_differing"] == {}
    # mqa reaches the GQA layer at T=2 (K/V replicated) and still loads the T=1 model.
    assert results[2].figures["target_attention"] == ["gqa"] and "NXD-11" in results[2].deviations


def test_a_wrong_gate_up_stride_fails_naming_the_tensor(
    broken_copy: Callable[[str, list[tuple[str, str]]], Path], settings: RunSettings
) -> None:
    package = broken_copy("llama", [WRONG_GATE_UP_STRIDE])
    (result,) = CHECK.run(package, [TopologyConfig("llama/gqa", 2, 1)], settings)

    assert result.status is Status.FAIL
    # The mis-sharded model is saved and reloaded consistently: only the seeded init exposes it.
    assert set(result.figures["init_tensors_differing"]) == {
        f"model.layers.{i}.mlp.{name}_proj.weight" for i in (0, 1) for name in ("gate", "up")
    }
    (init_reason,) = [r for r in result.reasons if "seeded random init differs" in r]
    assert "model.layers.0.mlp.gate_proj.weight" in init_reason
    (cause,) = [r for r in result.reasons if "likely cause" in r]
    assert "model.layers.0.mlp.gate_up_proj.weight is sharded with partition_stride 1" in cause
    assert "its stride must be 2" in cause
