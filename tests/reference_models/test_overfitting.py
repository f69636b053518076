"""Every tiny configuration overfits its batch in transformers itself, trained the way the checks train it.

The batch, steps, optimizer and thresholds are the checks' own (imported, not copied), so this test
follows them if they change.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conformance.checks.bf16_smoke import MIN_RELATIVE_DROP
from conformance.checks.overfit import threshold
from conformance.checks.parity import parity_batch
from conformance.checks.training_loop import OptimizerSettings
from conformance.profiles import BF16_STEPS, OVERFIT_STEPS
from reference_models import ARCHITECTURES, Variant, transformers_overfits, variant
from reference_models.overfitting import train_transformers


def _make_optimizer(parameters) -> torch.optim.Optimizer:
    return OptimizerSettings().build(list(parameters))


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_the_base_variant_overfits_in_fp32_and_learns_in_bf16(
    model_type: str, checkpoint_cache: Path
) -> None:
    entry = variant(f"{model_type}/gqa")
    vocab_size = entry.config().vocab_size
    batch = parity_batch(vocab_size)
    fp32 = transformers_overfits(
        entry, batch, OVERFIT_STEPS, threshold(vocab_size), _make_optimizer, cache_dir=checkpoint_cache
    )
    assert fp32.reached, (fp32.final_loss, fp32.threshold)
    assert len(fp32.losses) == OVERFIT_STEPS
    bf16 = train_transformers(
        entry, batch, BF16_STEPS, _make_optimizer, dtype=torch.bfloat16, cache_dir=checkpoint_cache
    )
    assert (bf16[0] - bf16[-1]) / bf16[0] >= MIN_RELATIVE_DROP, bf16


def test_cohere2_with_its_default_logit_scale_does_not_overfit(checkpoint_cache: Path) -> None:
    """The catalogue's earlier cohere2 failed every model: logit_scale 0.0625 shrinks the logits 16-fold."""
    catalogue = variant("cohere2/gqa")
    shrunk = Variant("cohere2", "gqa", "default logit_scale", (*catalogue.overrides, ("logit_scale", 0.0625)))
    vocab_size = catalogue.config().vocab_size
    batch = parity_batch(vocab_size)
    found = {
        entry.summary: transformers_overfits(
            entry, batch, OVERFIT_STEPS, threshold(vocab_size), _make_optimizer, cache_dir=checkpoint_cache
        )
        for entry in (catalogue, shrunk)
    }
    assert found[catalogue.summary].reached
    assert not found["default logit_scale"].reached
    assert found["default logit_scale"].final_loss > 5 * threshold(vocab_size)
