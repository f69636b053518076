"""Broken generated models that only real training data exposes fail parity with a reason naming the cause
(issue 8, "No false PASS"): a constant equal to the config default, a lost padding row, a dropped padding
mask, ignored `position_ids`, and a mask dropped only under gradient checkpointing.

Each break is a one-line edit a contributor could make; the oracle is transformers' model on the same
checkpoint and batch (inside the check); the reasons are the check's diagnoses, which re-ask transformers
with one input changed. One launcher call per test, at T=1.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from transformers import LlamaConfig

from conformance.checks import RunSettings
from conformance.checks.parity import CHECK, ParityConfig
from conformance.results import CheckResult, Status

BrokenCopy = Callable[[str, list[tuple[str, str]]], Path]
DEFAULT_EPS = LlamaConfig().rms_norm_eps


@pytest.fixture
def settings(checkpoint_cache: Path) -> RunSettings:
    return RunSettings(cache_dir=checkpoint_cache)


def _reasons(result: CheckResult) -> str:
    return "\n".join(result.reasons)


def test_a_norm_epsilon_written_as_the_config_default_is_named(
    broken_copy: BrokenCopy, catalogue_variant: Callable[..., str], settings: RunSettings
) -> None:
    # A contributor pastes a norm with LlamaConfig's default epsilon instead of the config's: invisible
    # with a default config, so the checkpoint's config holds ten times the default.
    package = broken_copy(
        "llama", [("self.variance_epsilon = eps", f"self.variance_epsilon = {DEFAULT_EPS!r}")]
    )
    key = catalogue_variant("llama/gqa", rms_norm_eps=10 * DEFAULT_EPS)
    (result,) = CHECK.run(package, [ParityConfig(key, 1)], settings)
    assert result.status is Status.FAIL
    expected = (
        f"model.layers.0.input_layernorm.variance_epsilon is {DEFAULT_EPS:g} in the model but "
        f"{10 * DEFAULT_EPS:g} in transformers' (config.rms_norm_eps = {10 * DEFAULT_EPS:g}): a constant "
        "written in the code where the config's value belongs"
    )
    assert expected in result.reasons
    assert f"model.norm.variance_epsilon is {DEFAULT_EPS:g} in the model" in _reasons(result)
    assert result.figures["logits_max_abs_diff"] > 1e-5  # and it shows in the numbers


def test_a_lost_padding_row_is_named(
    broken_copy: BrokenCopy, catalogue_variant: Callable[..., str], settings: RunSettings
) -> None:
    # The embedding built without padding_idx: the pad token's row then trains, where transformers'
    # nn.Embedding(padding_idx=...) keeps it frozen. The config needs a pad token (5: not 0, which NxD
    # drops anyway, deviation NXD-05).
    package = broken_copy("llama", [("            self.padding_idx,\n", "            None,\n")])
    key = catalogue_variant("llama/gqa", pad_token_id=5)
    (result,) = CHECK.run(package, [ParityConfig(key, 1)], settings)
    assert result.status is Status.FAIL
    assert result.figures["logits_max_abs_diff"] <= 1e-5  # the forward is right (the row holds zeros)
    (diagnosis,) = [r for r in result.reasons if "padding row" in r]
    assert diagnosis.startswith(
        "gradient of model.embed_tokens.weight differs from transformers' in the padding row only "
        "(pad_token_id = 5: "
    )
    assert "the embedding lost its padding_idx, so the pad token's row trains" in diagnosis


def test_a_dropped_padding_mask_is_named(broken_copy: BrokenCopy, settings: RunSettings) -> None:
    # The model builds its mask without the batch's 2-D attention_mask: padding is attended.
    package = broken_copy(
        "llama",
        [
            (
                "                attention_mask=attention_mask,\n                cache_position=cache_position,",
                "                attention_mask=None,\n                cache_position=cache_position,",
            )
        ],
    )
    recomputed, honoured = CHECK.run(
        package,
        [ParityConfig("llama/gqa", 1), ParityConfig("llama/gqa", 1, recompute_causal_mask=False)],
        settings,
    )
    # With the default recompute_causal_mask=True the mask is ignored by design (optimum-neuron documents
    # it), so only the case that promises to honour it fails.
    assert recomputed.status is Status.PASS, recomputed.reasons
    assert honoured.status is Status.FAIL
    assert honoured.reasons[0].startswith(
        "the padding attention_mask is ignored: the logits equal transformers' given the causal mask only"
    )


def test_ignored_position_ids_are_named(broken_copy: BrokenCopy, settings: RunSettings) -> None:
    # The model always uses positions 0..S-1: packed sequences and left padding get wrong rotary positions.
    package = broken_copy(
        "llama",
        [
            (
                "        if position_ids is None:\n            position_ids = cache_position.unsqueeze(0)",
                "        position_ids = cache_position.unsqueeze(0)",
            )
        ],
    )
    (result,) = CHECK.run(package, [ParityConfig("llama/gqa", 1)], settings)
    assert result.status is Status.FAIL
    assert result.reasons[0].startswith(
        "position_ids are ignored: the logits equal transformers' run without them, i.e. with positions 0..S-1"
    )


def test_a_mask_dropped_only_under_gradient_checkpointing_is_named(
    broken_copy: BrokenCopy, settings: RunSettings
) -> None:
    # Only the checkpointed call of the decoder layers loses the mask (a copy-paste slip between the two
    # branches of the layer loop): right in eval mode, wrong in training with checkpointing on.
    checkpointed_call = (
        "                hidden_states = checkpoint_with_kwargs(\n"
        "                    decoder_layer,\n"
        "                    hidden_states,\n"
        "                    attention_mask=causal_mask,\n"
    )
    package = broken_copy(
        "llama",
        [(checkpointed_call, checkpointed_call.replace("attention_mask=causal_mask", "attention_mask=None"))],
    )
    plain, checkpointed = CHECK.run(
        package,
        [
            ParityConfig("llama/gqa", 1, recompute_causal_mask=False),
            ParityConfig("llama/gqa", 1, recompute_causal_mask=False, gradient_checkpointing=True),
        ],
        settings,
    )
    assert plain.status is Status.PASS, plain.reasons
    assert checkpointed.status is Status.FAIL
    assert checkpointed.figures["logits_without_checkpointing_max_abs_diff"] <= 1e-5
    assert checkpointed.reasons[0].startswith(
        "the forward matches transformers without gradient checkpointing (eval mode"
    )
    assert (
        "the checkpointed call of the decoder layers (checkpoint_with_kwargs) drops"
        in checkpointed.reasons[0]
    )
    assert checkpointed.reasons[1].startswith(
        "the padding attention_mask is ignored with gradient checkpointing on"
    )
