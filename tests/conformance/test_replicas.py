"""The replicas check: after optimizer steps emulating optimum-neuron's, replicated parameters stay
bit-identical on every TP rank in the generated qwen3 (per-head q/k norms whose gradients the model sums
itself); without that sum, or with a norm in the SP region that lost its `sequence_parallel_enabled` mark,
the copies drift and the failure names the parameter and why its gradient differs per rank.

Oracle: the ranks' own copies (every rank must hold rank 0's bits), and the hand-written expectation of
which parameters are replicated and why each broken one gets a partial gradient.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from conformance.checks import RunSettings
from conformance.checks.replicas import CHECK, ReplicasConfig
from conformance.results import Status

BrokenCopy = Callable[[str, list[tuple[str, str]]], Path]
QK_NORM_GRADIENT_SUM = (
    "        for parameter in (*self.q_norm.parameters(), *self.k_norm.parameters()):\n"
    "            parameter.register_hook(reduce_from_tensor_model_parallel_region)\n"
)
INPUT_NORM_WITHOUT_SP_FLAG = (
    "        self.input_layernorm = LlamaRMSNorm(\n"
    "            config.hidden_size,\n"
    "            eps=config.rms_norm_eps,\n"
    "            sequence_parallel_enabled=trn_config.sequence_parallel_enabled,\n"
    "        )",
    "        self.input_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)",
)


@pytest.fixture
def settings(checkpoint_cache: Path) -> RunSettings:
    return RunSettings(cache_dir=checkpoint_cache)


def test_generated_qwen3_keeps_its_replicas_identical(
    generated: Callable[[str], Path], settings: RunSettings
) -> None:
    on, off = CHECK.run(
        generated("qwen3"),
        [ReplicasConfig("qwen3/gqa", 2, True), ReplicasConfig("qwen3/gqa", 2, False)],
        settings,
    )
    for result in (on, off):
        assert result.status is Status.PASS, result.reasons
        # 2 layers x (input, post-attention, q, k norms) + the final norm; no bias in qwen3/gqa.
        assert result.figures["replicated_parameters"] == 9
        assert result.figures["max_parameter_spread"] == 0.0
        assert (
            len(result.figures["losses"]) == 3 and result.figures["losses"][-1] < result.figures["losses"][0]
        )
    assert on.figures["sequence_parallel_effective"] is True


def test_qk_norm_gradients_never_summed_are_named(broken_copy: BrokenCopy, settings: RunSettings) -> None:
    # The model forgets the gradient sum of its per-head q/k norms: each rank normalises only its own heads,
    # so each holds a partial gradient that optimum-neuron's optimizer never sums (with or without SP).
    package = broken_copy("qwen3", [(QK_NORM_GRADIENT_SUM, "")])
    (result,) = CHECK.run(package, [ReplicasConfig("qwen3/gqa", 2, False)], settings)
    assert result.status is Status.FAIL
    norms = {f"model.layers.{i}.self_attn.{n}_norm.weight" for i in range(2) for n in ("q", "k")}
    assert set(result.figures["first_gradient_step_differing"]) == norms
    assert result.figures["parameters_differing"] == 4
    (reason,) = [r for r in result.reasons if r.startswith("model.layers.0.self_attn.q_norm.weight ")]
    assert "is not the same on every TP rank after 3 optimizer steps" in reason
    assert (
        "per-rank partial gradient never summed (from step 1 each rank holds a different gradient" in reason
    )
    assert "applied to a column-sharded activation" in reason
    assert "sum its gradient over TP in the model" in reason


def test_a_norm_in_the_sequence_parallel_region_without_its_mark_is_named(
    broken_copy: BrokenCopy, settings: RunSettings
) -> None:
    # The input norm loses its sequence_parallel_enabled mark: under SP each rank normalises its sequence
    # shard, and the optimizer only sums marked parameters.
    package = broken_copy("llama", [INPUT_NORM_WITHOUT_SP_FLAG])
    (result,) = CHECK.run(package, [ReplicasConfig("llama/gqa", 2, True)], settings)
    assert result.status is Status.FAIL
    assert set(result.figures["first_gradient_step_differing"]) == {
        f"model.layers.{i}.input_layernorm.weight" for i in range(2)
    }
    for reason in result.reasons:
        assert "applied to the rank's sequence shard under SP" in reason
        assert "mark it sequence_parallel_enabled so that the optimizer sums its gradient over TP" in reason
