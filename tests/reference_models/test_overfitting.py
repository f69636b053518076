"""Every tiny configuration overfits its batch in transformers itself, trained the way the checks train it.

transformers is trained by the checks' own reference loop (`model_runs.training_loop.train_reference`) on
their own fixed batch (padding, packed sequences), steps, optimizer and thresholds, so this test follows
them if they change: a catalogue that transformers cannot learn would make `overfit` judge the curve only.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conformance.checks.bf16_smoke import DEFAULT_STEPS as BF16_STEPS
from conformance.checks.bf16_smoke import MIN_RELATIVE_DROP, Bf16Config, relative_drop
from conformance.checks.overfit import DEFAULT_STEPS as OVERFIT_STEPS
from conformance.checks.overfit import OverfitConfig, threshold
from conformance.model_runs.compared_checkpoints import without_dropout
from conformance.model_runs.training_loop import TrainingConfig, train_reference, training_job
from reference_models import ARCHITECTURES, Variant, build, variant


def _transformers_losses(entry: Variant, config: TrainingConfig, dtype: str, cache: Path) -> list[float]:
    checkpoint = str(without_dropout(build(entry, cache)))
    return train_reference(training_job(config, dtype, checkpoint))


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_the_base_variant_overfits_in_fp32_and_learns_in_bf16(
    model_type: str, checkpoint_cache: Path
) -> None:
    entry = variant(f"{model_type}/gqa")
    fp32 = _transformers_losses(
        entry, OverfitConfig(entry.key, 1, steps=OVERFIT_STEPS), "float32", checkpoint_cache
    )
    assert len(fp32) == OVERFIT_STEPS
    assert fp32[-1] < threshold(entry.config().vocab_size), fp32
    bf16 = _transformers_losses(
        entry, Bf16Config(entry.key, 1, steps=BF16_STEPS), "bfloat16", checkpoint_cache
    )
    assert relative_drop(bf16) >= MIN_RELATIVE_DROP, bf16


def test_cohere2_with_its_default_logit_scale_does_not_overfit(checkpoint_cache: Path) -> None:
    """The catalogue's earlier cohere2 failed every model: logit_scale 0.0625 shrinks the logits 16-fold."""
    catalogue = variant("cohere2/gqa")
    shrunk = Variant("cohere2", "gqa", "default logit_scale", (*catalogue.overrides, ("logit_scale", 0.0625)))
    limit = threshold(catalogue.config().vocab_size)
    final = {
        entry.summary: _transformers_losses(
            entry, OverfitConfig(catalogue.key, 1, steps=OVERFIT_STEPS), "float32", checkpoint_cache
        )[-1]
        for entry in (catalogue, shrunk)
    }
    assert final[catalogue.summary] < limit
    assert final["default logit_scale"] > 5 * limit
