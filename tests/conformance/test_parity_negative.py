"""Broken generated models fail parity with a reason that names the cause (issue 4).

Each break is one a contributor could make by hand: K/V heads tiled instead of interleaved in
`repeat_kv` (query head h must use K/V head h // n_rep), a norm built without its sequence-parallel flag,
and a `.detach()` in the MLP that leaves the forward right but starves gate/up of gradient. The oracle is
transformers' model on the same checkpoint (inside the check); the tests assert the verdict and the
cause the reasons name.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from conformance.checks import RunSettings
from conformance.checks.parity import CHECK, ParityConfig
from conformance.results import Status

TILED_KV_HEADS = (
    "hidden_states = hidden_states[:, :, None, :, :].expand(batch, num_key_value_heads, n_rep, slen, head_dim)",
    "hidden_states = hidden_states[:, None, :, :, :].expand(batch, n_rep, num_key_value_heads, slen, head_dim)",
)
INPUT_NORM_WITHOUT_SP_FLAG = (
    "        self.input_layernorm = LlamaRMSNorm(\n"
    "            config.hidden_size,\n"
    "            eps=config.rms_norm_eps,\n"
    "            sequence_parallel_enabled=trn_config.sequence_parallel_enabled,\n"
    "        )",
    "        self.input_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)",
)
DETACHED_MLP = (
    "down_proj = self.down_proj(self.act_fn(gate) * up)",
    "down_proj = self.down_proj((self.act_fn(gate) * up).detach())",
)


@pytest.fixture
def settings(checkpoint_cache: Path) -> RunSettings:
    return RunSettings(cache_dir=checkpoint_cache)


def test_tiled_kv_heads_fail_at_the_first_attention(
    broken_copy: Callable[[str, list[tuple[str, str]]], Path], settings: RunSettings
) -> None:
    package = broken_copy("llama", [TILED_KV_HEADS])
    # The bug shows wherever a rank holds several K/V heads shared by several query heads:
    # llama/gqa at T=1 (2 kv heads, n_rep 4), llama/tied at T=2 (2 kv heads per rank, n_rep 2).
    configurations = [ParityConfig("llama/gqa", 1), ParityConfig("llama/tied", 2, sequence_parallel=True)]
    for result in CHECK.run(package, configurations, settings):
        assert result.status is Status.FAIL, result.label
        assert result.figures["first_divergent_module"] == "model.layers.0.self_attn"
        assert result.figures["activation_errors"]["model.embed_tokens"] == 0.0
        assert result.reasons[0].startswith(
            "the forward first departs from transformers at model.layers.0.self_attn"
        )
        assert "head layout" in result.reasons[0]
        assert any(reason.startswith("logits differ") for reason in result.reasons)


def test_norm_without_sequence_parallel_flag_is_named(
    broken_copy: Callable[[str, list[tuple[str, str]]], Path], settings: RunSettings
) -> None:
    package = broken_copy("llama", [INPUT_NORM_WITHOUT_SP_FLAG])
    on, off = CHECK.run(
        package,
        [ParityConfig("llama/gqa", 2, sequence_parallel=True), ParityConfig("llama/gqa", 2)],
        settings,
    )
    assert on.status is Status.FAIL
    assert on.figures["logits_max_abs_diff"] <= 1e-5 and on.figures["first_divergent_module"] is None
    partial = [f"model.layers.{i}.input_layernorm.weight" for i in range(2)]
    assert on.figures["partial_gradients"] == partial
    for name in partial:
        (reason,) = [r for r in on.reasons if r.startswith(f"gradient of {name} is partial")]
        assert "missing its sequence_parallel_enabled flag?" in reason
    assert not any("post_attention_layernorm.weight is partial" in r for r in on.reasons)
    assert off.status is Status.PASS, off.reasons  # without SP the flag is not used


def test_detached_mlp_input_names_the_parameters_without_gradient(
    broken_copy: Callable[[str, list[tuple[str, str]]], Path], settings: RunSettings
) -> None:
    package = broken_copy("llama", [DETACHED_MLP])
    (result,) = CHECK.run(package, [ParityConfig("llama/gqa", 2, sequence_parallel=True)], settings)
    assert result.status is Status.FAIL
    assert result.figures["logits_max_abs_diff"] <= 1e-5  # the forward is right
    # Everything that feeds only the MLP's detached input: gate/up and the post-attention norm.
    starved = {
        f"model.layers.{i}.{name}.weight"
        for i in range(2)
        for name in ("mlp.gate_up_proj", "post_attention_layernorm")
    }
    assert set(result.figures["no_gradient"]) == starved
    assert result.reasons[0].startswith(f"{len(starved)} parameter(s) received no gradient: ")
    assert all(name in result.reasons[0] for name in starved)
    assert result.reasons[0].endswith(
        "the forward matches transformers, so something detaches them from the loss (a .detach(), "
        "torch.no_grad, an in-place or non-differentiable op)"
    )
    over = {f"model.layers.{i}.mlp.{p}_proj.weight" for i in range(2) for p in ("gate", "up")}
    gradient_plot = result.plots[0]
    ratios = dict(zip(gradient_plot.x_labels, gradient_plot.series[0].y))
    assert all(ratios[name] > 1 for name in over)
