"""The round-trip check on generated packages: transformers checkpoint -> from_pretrained at T -> save ->
consolidate must give back the checkpoint transformers wrote. The oracle is that checkpoint, read here
with safetensors; broken copies of the generated modeling file must fail with reasons naming the cause.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from safetensors.torch import load_file

from conformance.checks import RunSettings
from conformance.checks.round_trip import CHECK, RoundTripConfig
from conformance.results import Status
from reference_models import build, variant

# Drops the gate/up fusion's spec from the MLP: the spec object is built but never added.
MISSING_GATE_UP_SPEC = (
    'self.specs.add_spec(\n            FusedLinearsSpec(\n                fused_linear_name="gate_up_proj",',
    '_unused_spec = (\n            FusedLinearsSpec(\n                fused_linear_name="gate_up_proj",',
)


def _dropped_qkv_bias() -> list[tuple[str, str]]:
    """qwen2's separate q/k/v projections built with bias=False."""
    edits = []
    for proj, heads in (
        ("q", "num_attention_heads"),
        ("k", "num_key_value_heads"),
        ("v", "num_key_value_heads"),
    ):
        old = (
            f"self.{proj}_proj = ColumnParallelLinear(\n                config.hidden_size,\n"
            f"                config.{heads} * self.head_dim,\n                bias=True,"
        )
        edits.append((old, old.replace("bias=True", "bias=False")))
    return edits


@pytest.fixture
def settings(checkpoint_cache: Path) -> RunSettings:
    return RunSettings(cache_dir=checkpoint_cache, timeout=240.0)


def _original_keys(key: str, cache: Path) -> list[str]:
    return sorted(load_file(build(variant(key), cache) / "model.safetensors"))


def test_llama_round_trips_bit_for_bit(
    generated: Callable[[str], Path], settings: RunSettings, checkpoint_cache: Path
) -> None:
    configurations = [RoundTripConfig(key, tp) for key in ("llama/gqa", "llama/tied") for tp in (1, 2)] + [
        RoundTripConfig("llama/mqa", 2, fuse_qkv=True)
    ]
    results = CHECK.run(generated("llama"), configurations, settings)

    assert [r.configuration for r in results] == [c.as_dict() for c in configurations]
    for result in results:
        assert result.status is Status.PASS, (result.label, result.reasons)
        original = _original_keys(result.configuration["variant"], checkpoint_cache)
        assert result.figures["keys_compared"] == result.figures["tensors_equal"] == len(original)
        assert result.figures["keys_missing"] == result.figures["keys_extra"] == []
        assert result.figures["max_abs_diff"] == 0.0 and result.seconds > 0
    # The tied checkpoint holds the shared tensor once; the round trip must not invent lm_head.weight.
    assert "lm_head.weight" not in _original_keys("llama/tied", checkpoint_cache)
    assert results[-1].figures["attention"] == ["gqa"] and "NXD-10" in results[-1].deviations
    assert all("ON-11" in r.deviations for r in results)  # the shards were written in the plain format


def test_qwen2_round_trip_keeps_the_qkv_biases(
    generated: Callable[[str], Path], settings: RunSettings, checkpoint_cache: Path
) -> None:
    (result,) = CHECK.run(generated("qwen2"), [RoundTripConfig("qwen2/gqa", 2)], settings)
    assert result.status is Status.PASS, result.reasons
    original = _original_keys("qwen2/gqa", checkpoint_cache)
    assert "model.layers.0.self_attn.q_proj.bias" in original
    assert result.figures["tensors_equal"] == len(original)


def test_a_missing_spec_fails_naming_the_keys_and_the_spec(
    broken_copy: Callable[[str, list[tuple[str, str]]], Path], settings: RunSettings
) -> None:
    package = broken_copy("llama", [MISSING_GATE_UP_SPEC])
    (result,) = CHECK.run(package, [RoundTripConfig("llama/gqa", 2)], settings)

    assert result.status is Status.FAIL
    assert "model.layers.0.mlp.gate_proj.weight" in result.figures["keys_missing"]
    assert "model.layers.0.mlp.gate_up_proj.weight" in result.figures["keys_extra"]
    (spec_reason,) = [r for r in result.reasons if r.startswith("model.layers.0.mlp.gate_proj.weight")]
    assert "model.layers.0.mlp.up_proj.weight: missing" in spec_reason
    assert "gate_up_proj.weight without a spec to split it back" in spec_reason
    assert "missing CustomModule spec" in spec_reason
    # from_pretrained could not place the checkpoint's gate/up tensors either, and says so.
    assert any("unexpected keys" in r and "model.layers.0.mlp.gate_proj.weight" in r for r in result.reasons)


def test_a_dropped_bias_fails_naming_the_bias_keys(
    broken_copy: Callable[[str, list[tuple[str, str]]], Path], settings: RunSettings
) -> None:
    package = broken_copy("qwen2", _dropped_qkv_bias())
    (result,) = CHECK.run(package, [RoundTripConfig("qwen2/gqa", 2)], settings)

    assert result.status is Status.FAIL
    biases = [f"model.layers.{i}.self_attn.{p}_proj.bias" for i in (0, 1) for p in "qkv"]
    assert sorted(result.figures["keys_missing"]) == sorted(biases)
    (bias_reason,) = [r for r in result.reasons if "dropped bias" in r]
    assert all(name in bias_reason for name in biases)


def test_a_size_the_variant_cannot_take_is_skipped(
    generated: Callable[[str], Path], settings: RunSettings
) -> None:
    (result,) = CHECK.run(generated("llama"), [RoundTripConfig("llama/odd-vocab", 4)], settings)
    assert result.status is Status.SKIP
    assert "250" in result.reasons[0] and "4" in result.reasons[0]
