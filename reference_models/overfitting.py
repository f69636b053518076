"""Whether transformers' own model of a catalogue variant memorises a fixed batch.

The overfit check blames a model whose loss stays above its threshold. That is only fair when
transformers' model, trained the same way, goes below it: a tiny configuration that cannot overfit (cohere2
with its default `logit_scale` of 0.0625 shrinks the logits 16-fold, and 30 AdamW steps at lr 5e-3 cannot
grow the LM head enough to make up for it) would fail every model. The catalogue picks configurations that
do overfit (its tests train each built-in architecture's base variant the check's way); this module is the
evidence a check can ask for.

The check keeps its batch, optimizer, steps and threshold; they are arguments here, so that this package
does not depend on the checks.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from .builder import DEFAULT_SEED, build
from .catalogue import Variant, variant

OptimizerFactory = Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]


@dataclass(frozen=True)
class ReferenceTraining:
    """transformers' per-step losses on the batch (before each step) and the threshold they were held to."""

    variant: str
    losses: tuple[float, ...]
    threshold: float

    @property
    def final_loss(self) -> float | None:
        return self.losses[-1] if self.losses else None

    @property
    def reached(self) -> bool:
        """Whether the last step's loss is finite and below the threshold."""
        final = self.final_loss
        return final is not None and final < self.threshold


def train_transformers(
    entry: Variant | str,
    batch: Mapping[str, torch.Tensor],
    steps: int,
    make_optimizer: OptimizerFactory,
    *,
    dtype: torch.dtype = torch.float32,
    config_overrides: Mapping[str, Any] | None = None,
    cache_dir: str | os.PathLike | None = None,
    seed: int = DEFAULT_SEED,
) -> list[float]:
    """transformers' `AutoModelForCausalLM` from the variant's checkpoint (eager attention, `dtype`, train
    mode, `config_overrides` applied, e.g. dropout fields set to 0.0), trained `steps` steps on `batch`:
    the loss before each optimizer step."""
    from transformers import AutoModelForCausalLM

    checkpoint = build(entry, cache_dir, seed)
    model = AutoModelForCausalLM.from_pretrained(
        checkpoint, attn_implementation="eager", dtype=dtype, **dict(config_overrides or {})
    )
    model.train()
    optimizer = make_optimizer(model.parameters())
    losses = []
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


def transformers_overfits(
    entry: Variant | str,
    batch: Mapping[str, torch.Tensor],
    steps: int,
    threshold: float,
    make_optimizer: OptimizerFactory,
    **options: Any,
) -> ReferenceTraining:
    """Train transformers' model as `train_transformers` does (same keyword options) and hold the last loss
    to `threshold`: `.reached` says whether transformers itself memorises the batch."""
    entry = variant(entry) if isinstance(entry, str) else entry
    losses = train_transformers(entry, batch, steps, make_optimizer, **options)
    return ReferenceTraining(entry.key, tuple(losses), threshold)
