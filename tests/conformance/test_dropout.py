"""Dropout in conformance runs: off where runs are compared, live in training and off in evaluation where
the `dropout` check shows it.

seed_oss's config has `attention_dropout` and `residual_dropout` 0.1. Compared with transformers trained
identically, its generated model used to "depart at step 0" (the two models drew different masks); with
dropout off in compared runs it follows transformers step by step. The `dropout` check on the checkpoint
as it is: the generated model draws masks in train() and none in eval(); a copy that never applies its
dropout, and one that applies it in eval() too, fail naming what is wrong. Oracles: the configs' own
fields, transformers' eval logits, and hand-written broken copies.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from conformance.checks import RunSettings
from conformance.checks.dropout import CHECK, DropoutConfig
from conformance.checks.overfit import CHECK as OVERFIT
from conformance.checks.overfit import OverfitConfig
from conformance.model_runs.compared_checkpoints import nonzero_dropout, switch_off_dropout, without_dropout
from conformance.results import Status
from reference_models import build, variant

NEVER_APPLIED = [
    (
        "down_proj = nn.functional.dropout(down_proj, p=self.residual_dropout, training=self.training)",
        "down_proj = nn.functional.dropout(down_proj, p=self.residual_dropout, training=False)",
    ),
    (
        "dropout=0.0 if not self.training else self.attention_dropout,",
        "dropout=0.0,",
    ),
    (
        "attn_output = nn.functional.dropout(attn_output, p=self.residual_dropout, training=self.training)",
        "attn_output = nn.functional.dropout(attn_output, p=self.residual_dropout, training=False)",
    ),
]
APPLIED_IN_EVAL = [
    (
        "down_proj = nn.functional.dropout(down_proj, p=self.residual_dropout, training=self.training)",
        "down_proj = nn.functional.dropout(down_proj, p=self.residual_dropout, training=True)",
    )
]


@pytest.fixture
def settings(checkpoint_cache: Path) -> RunSettings:
    return RunSettings(cache_dir=checkpoint_cache)


def test_compared_runs_load_a_checkpoint_without_dropout(checkpoint_cache: Path) -> None:
    original = build(variant("seed_oss/gqa"), checkpoint_cache)
    assert nonzero_dropout(json.loads((original / "config.json").read_text())) == {
        "attention_dropout": 0.1,
        "residual_dropout": 0.1,
    }
    compared = without_dropout(original)
    config = json.loads((compared / "config.json").read_text())
    assert compared != original and nonzero_dropout(config) == {}
    assert config["attention_dropout"] == config["residual_dropout"] == 0.0
    assert (compared / "model.safetensors").resolve() == (original / "model.safetensors").resolve()
    assert without_dropout(compared) == compared  # nothing left to switch off
    llama = build(variant("llama/gqa"), checkpoint_cache)
    assert without_dropout(llama) == llama

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.3), torch.nn.Dropout(0.0))
    assert switch_off_dropout(model) == ["1"] and model[1].p == 0.0


def test_seed_oss_follows_transformers_once_dropout_is_off(
    generated: Callable[[str], Path], settings: RunSettings
) -> None:
    (result,) = OVERFIT.run(
        generated("seed_oss"), [OverfitConfig("seed_oss/gqa", 2, True, steps=30)], settings
    )
    assert result.status is Status.PASS, result.reasons
    assert result.figures["first_departing_step"] is None and result.figures["max_step_abs_diff"] < 1e-4


def test_generated_seed_oss_draws_masks_in_training_only(
    generated: Callable[[str], Path], settings: RunSettings
) -> None:
    (result,) = CHECK.run(generated("seed_oss"), [DropoutConfig("seed_oss/gqa", 2)], settings)
    assert result.status is Status.PASS, result.reasons
    figures = result.figures
    assert figures["dropout_fields"] == {"attention_dropout": 0.1, "residual_dropout": 0.1}
    assert figures["train_forwards_max_abs_diff"] > 1e-2
    assert figures["eval_forwards_max_abs_diff"] == 0.0
    assert figures["eval_vs_transformers_max_abs_diff"] <= 1e-5


def test_a_model_that_never_applies_dropout_fails(
    broken_copy: Callable[[str, list[tuple[str, str]]], Path], settings: RunSettings
) -> None:
    (result,) = CHECK.run(
        broken_copy("seed_oss", NEVER_APPLIED), [DropoutConfig("seed_oss/gqa", 2)], settings
    )
    assert result.status is Status.FAIL
    assert result.figures["train_forwards_max_abs_diff"] == 0.0
    (reason,) = result.reasons
    assert reason.startswith(
        "dropout is not live in train(): two training-mode forwards give the same logits"
    )
    assert "attention_dropout=0.1, residual_dropout=0.1" in reason


def test_a_model_that_applies_dropout_in_eval_fails(
    broken_copy: Callable[[str, list[tuple[str, str]]], Path], settings: RunSettings
) -> None:
    (result,) = CHECK.run(
        broken_copy("seed_oss", APPLIED_IN_EVAL), [DropoutConfig("seed_oss/gqa", 2)], settings
    )
    assert result.status is Status.FAIL
    assert any(
        reason.startswith("dropout is not off in eval(): two eval-mode forwards differ")
        for reason in result.reasons
    )
    assert any(reason.startswith("eval-mode logits differ from transformers'") for reason in result.reasons)


def test_a_config_without_dropout_is_skipped_with_the_reason(
    generated: Callable[[str], Path], settings: RunSettings
) -> None:
    (result,) = CHECK.run(generated("llama"), [DropoutConfig("llama/gqa", 2)], settings)
    assert result.status is Status.SKIP
    assert result.reasons == [
        "llama/gqa's config sets no dropout (no non-zero *dropout* field): nothing to show"
    ]


def test_a_dropout_transformers_never_applies_is_skipped_with_the_reason() -> None:
    """gpt_neox's config keeps classifier_dropout 0.1 (its token-classification head's) and its causal LM's
    own dropouts at 0: transformers' causal LM repeats its training-mode logits, so the check has nothing to
    show (it used to FAIL the generated model for "never applying" it)."""
    assert nonzero_dropout(variant("gpt_neox/mha-8").config()) == {"classifier_dropout": 0.1}
    assert CHECK.skip_reason(DropoutConfig("gpt_neox/mha-8", 2)) == (
        "transformers' causal LM of gpt_neox/mha-8 applies none of its config's dropout "
        "(classifier_dropout=0.1): two of its training-mode forwards give the same logits, so there is "
        "nothing to show"
    )
    assert CHECK.skip_reason(DropoutConfig("seed_oss/gqa", 2)) is None
