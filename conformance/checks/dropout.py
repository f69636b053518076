"""Dropout: live in training, off in evaluation, in the parallel model.

Every other check compares runs with dropout switched off (both models load the dropout-free checkpoint:
`compared_checkpoints`), so that two correct models never part because they drew different masks. That
would hide a model that lost its dropout altogether. This check loads the catalogue checkpoint as it is,
with the config's dropout probabilities, into the parallel model at TP = T and, on the fixed batch:

- in `train()` mode, two forwards (the RNG advancing between them) must give different logits: dropout
  draws masks (max |Δ| above `LIVE_MIN`);
- in `eval()` mode, two forwards must give the same logits, equal to transformers' model in eval mode on
  the same checkpoint (the parity bound): dropout is off.

A config without any non-zero `*dropout*` field has nothing to show: SKIP, with the reason; so has one
whose non-zero fields transformers' own causal LM never applies (GPT-NeoX's `classifier_dropout` is read
by its token-classification head only): two training-mode forwards of transformers' model give the same
logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

import torch

from conformance.comparisons.bound_text import number
from conformance.harness.protocol import Check, CheckConfig, Exercised, Verdict, Workspace
from conformance.harness.rank_steps import is_rank_zero, rank_step
from conformance.model_runs.compared_checkpoints import nonzero_dropout
from conformance.model_runs.fixed_batch import FixedBatch, fixed_batch
from conformance.model_runs.logits import logits_of
from conformance.model_runs.parallel_model import load_parallel
from reference_models import variant
from reference_models.catalogue import PARITY_SEQUENCE_LENGTH

if TYPE_CHECKING:
    from conformance.profiles import ModelCatalogue

LIVE_MIN = 1e-3
"""Two training-mode forwards whose logits differ by no more than this drew no dropout mask."""
EVAL_ATOL = 1e-5
SEED = 1234
TOLERANCE = (
    f"train mode: two forwards differ by more than {number(LIVE_MIN)} (max |Δ logits|), 100x the fp32 reordering "
    "noise of the parity bound: with the catalogue's probabilities (0.1) a dropped activation moves the "
    "logits by 1e-2 and more (seed_oss T=2: 0.45), while a model whose dropout is never applied repeats its "
    f"logits exactly. eval mode: the two forwards are identical and within {number(EVAL_ATOL)} of transformers' "
    "eval logits (the parity bound: the same weights, sums reordered)."
)


@dataclass(frozen=True)
class DropoutConfig(CheckConfig):
    """A catalogue variant, with its config's dropout, at a TP size."""

    tp_size: int

    def exercised(self) -> Exercised:
        return Exercised((self.tp_size,))


@dataclass(frozen=True)
class DropoutJob:
    config: DropoutConfig
    checkpoint: str
    vocab_size: int
    fields: tuple[tuple[str, float], ...]

    @property
    def tp_size(self) -> int:
        return self.config.tp_size


class Dropout(Check[DropoutConfig, DropoutJob, dict[str, Any] | None]):
    name = "dropout"
    order = 70
    config_type = DropoutConfig
    tolerance = TOLERANCE
    key_figures = (
        "train_forwards_max_abs_diff",
        "eval_forwards_max_abs_diff",
        "eval_vs_transformers_max_abs_diff",
    )

    def plan(self, profile: str, catalogue: ModelCatalogue) -> list[DropoutConfig]:
        return [DropoutConfig(catalogue.base, 2)]

    def skip_reason(self, config: DropoutConfig) -> str | None:
        fields = nonzero_dropout(variant(config.variant).config())
        if not fields:
            return f"{config.variant}'s config sets no dropout (no non-zero *dropout* field): nothing to show"
        if not _live_in_transformers(config.variant):
            named = ", ".join(f"{name}={value:g}" for name, value in fields.items())
            return (
                f"transformers' causal LM of {config.variant} applies none of its config's dropout ({named}): "
                "two of its training-mode forwards give the same logits, so there is nothing to show"
            )
        return super().skip_reason(config)

    def prepare(self, config: DropoutConfig, workspace: Workspace, index: int) -> DropoutJob:
        entry = variant(config.variant)
        model_config = entry.config()
        return DropoutJob(
            config,
            workspace.original_checkpoint(entry),
            model_config.vocab_size,
            tuple(nonzero_dropout(model_config).items()),
        )

    def on_rank(self, package: ModuleType, job: DropoutJob) -> dict[str, Any] | None:
        model, _, _ = load_parallel(package, job.checkpoint, job.tp_size)
        batch = fixed_batch(job.vocab_size)
        inputs = batch.model_inputs(labels=False)

        def forwards(train: bool) -> tuple[torch.Tensor, torch.Tensor]:
            model.train(train)
            torch.manual_seed(SEED)  # the same draws on every rank and every run
            first = logits_of(model, inputs, job.vocab_size)
            return first, logits_of(model, inputs, job.vocab_size)

        train = rank_step(f"the training-mode forwards at T={job.tp_size}", lambda: forwards(True))
        evaluation = rank_step(f"the eval-mode forwards at T={job.tp_size}", lambda: forwards(False))
        if not is_rank_zero():
            return None
        return {"train": train, "eval": evaluation, "transformers": _transformers_eval_logits(job, batch)}

    def judge(self, job: DropoutJob, value: dict[str, Any] | None) -> Verdict:
        assert value is not None
        return judge_logits(job, value["train"], value["eval"], value["transformers"])


CHECK = Dropout()


def judge_logits(
    job: DropoutJob,
    train: tuple[torch.Tensor, torch.Tensor],
    evaluation: tuple[torch.Tensor, torch.Tensor],
    reference: torch.Tensor,
) -> Verdict:
    """Live in training, off in evaluation (see the module docstring)."""
    train_diff = float((train[0] - train[1]).abs().max())
    eval_diff = float((evaluation[0] - evaluation[1]).abs().max())
    versus = (
        float((evaluation[0] - reference).abs().max()) if evaluation[0].shape == reference.shape else None
    )
    figures: dict[str, Any] = {
        "dropout_fields": dict(job.fields),
        "train_forwards_max_abs_diff": train_diff,
        "live_min": LIVE_MIN,
        "eval_forwards_max_abs_diff": eval_diff,
        "eval_vs_transformers_max_abs_diff": versus,
        "eval_atol": EVAL_ATOL,
    }
    reasons = []
    fields = ", ".join(f"{name}={value:g}" for name, value in job.fields)
    if not train_diff > LIVE_MIN:
        reasons.append(
            f"dropout is not live in train(): two training-mode forwards give the same logits (max |Δ| "
            f"{train_diff:.3g} <= {LIVE_MIN:g}) although the config sets {fields}: the model never applies it"
        )
    if not eval_diff <= EVAL_ATOL:
        reasons.append(
            f"dropout is not off in eval(): two eval-mode forwards differ (max |Δ| {eval_diff:.3g} > {EVAL_ATOL:g})"
        )
    if versus is None:
        reasons.append(
            f"eval logits have shape {tuple(evaluation[0].shape)}, transformers' {tuple(reference.shape)}"
        )
    elif not versus <= EVAL_ATOL:
        reasons.append(
            f"eval-mode logits differ from transformers' eval logits: max |Δ| {versus:.3g} > {EVAL_ATOL:g} "
            "(dropout applied in eval, or another difference the parity check names)"
        )
    return Verdict(figures=figures, reasons=reasons)


def _live_in_transformers(key: str) -> bool:
    """Whether transformers' causal LM of the variant draws dropout masks: two training-mode forwards of
    the tiny model (random init, built in a moment) differ."""
    from transformers import AutoModelForCausalLM

    config = variant(key).config()
    with torch.random.fork_rng():
        torch.manual_seed(SEED)
        model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").train()
        ids = torch.arange(PARITY_SEQUENCE_LENGTH).remainder(config.vocab_size)[None]
        with torch.no_grad():
            return not torch.equal(model(input_ids=ids).logits, model(input_ids=ids).logits)


def _transformers_eval_logits(job: DropoutJob, batch: FixedBatch) -> torch.Tensor:
    """transformers' eval logits on the batch as the parallel model sees it (`recompute_causal_mask`'s
    default: the causal mask only)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        job.checkpoint, attn_implementation="eager", dtype=torch.float32
    )
    with torch.no_grad():
        return model.eval()(**batch.reference_inputs(honours_padding=False, labels=False)).logits.float()
