"""Training on one fixed batch, the loop the `overfit` and `bf16_smoke` checks share.

A package's `<X>ForCausalLM.from_pretrained(checkpoint, TrainingNeuronConfig(...), attn_implementation=
"eager", dtype=...)` trains `steps` steps on T ranks with AdamW; after each `loss.backward()` the gradients
go through optimum-neuron's optimizer step (`neuron_optimizer`: the sequence-parallel sum of parameters
marked `sequence_parallel_enabled`, the data-parallel mean, clipping when the settings ask for it), then
every rank steps its own shards. AdamW is elementwise, so per-rank optimizers over shards equal one
optimizer over the whole model as long as every replicated parameter holds the same full gradient on every
rank. transformers' `AutoModelForCausalLM` on the same checkpoint, batch, dtype and optimizer is trained on
rank 0 afterwards, as the reference curve.

With expert parallelism (mixture-of-experts models, EP > 1) each data-parallel rank trains on its own rows
(`data_parallel`); the reported loss of a step is the mean over the ranks, and transformers' reference step
minimises that same mean (its loss averaged over the ranks' rows), whose gradient the optimizer's data-parallel
mean gives. A mixture of experts' reference loss takes the auxiliary loss over the padding mask
(`transformers_reference.training_loss`), as the parallel model does.

The overfit and bf16 runs do not clip (a global norm would only hide drift); the `replicas` check clips as
optimum-neuron's trainer does by default. No dropout: both models load the dropout-free checkpoint and
every dropout module is switched off (`compared_checkpoints`), while the models are in train mode.
Everything else is deterministic: the fixed batch (padding, packed sequences: `fixed_batch`; the models
recompute the causal mask, so transformers gets the causal mask only), no random draws, one thread per rank.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import ClassVar

import torch

from conformance.harness.protocol import CheckConfig, Exercised, size_label
from conformance.harness.rank_steps import is_rank_zero, rank_step

from .attention_layouts import attention_layouts
from .compared_checkpoints import switch_off_dropout
from .data_parallel import gather_values, rank_batch, row_shares
from .fixed_batch import FixedBatch
from .neuron_optimizer import neuron_gradient_step
from .parallel_model import load_parallel


@dataclass(frozen=True)
class TrainingConfig(CheckConfig):
    """A catalogue variant trained at a TP size, with sequence parallelism and `fuse_qkv` as given."""

    tp_size: int
    sequence_parallel: bool = False
    fuse_qkv: bool = False
    steps: int = 30
    ep_size: int = 1
    """Expert parallelism (mixture-of-experts models): T x EP ranks, each EP rank training on its own rows."""

    HIDDEN_WHEN_DEFAULT: ClassVar[frozenset[str]] = frozenset({"fuse_qkv", "ep_size"})

    def exercised_in(self, dtype: str) -> Exercised:
        return Exercised(
            tp_sizes=(self.tp_size,),
            ep_sizes=(self.ep_size,),
            options=(
                ("sequence_parallel_enabled", self.sequence_parallel and self.tp_size > 1),
                ("fuse_qkv", self.fuse_qkv),
                ("recompute_causal_mask", True),
                ("gradient_checkpointing", False),
            ),
            dtype=dtype,
        )


@dataclass(frozen=True)
class OptimizerSettings:
    """AdamW, fixed learning rate, no schedule, no weight decay (the same on both models); gradients
    clipped to `max_grad_norm` (NxD's `clip_grad_norm`) when it is set."""

    lr: float = 5e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    max_grad_norm: float | None = None

    def build(self, parameters: Sequence[torch.nn.Parameter]) -> torch.optim.AdamW:
        return torch.optim.AdamW(
            list(parameters), lr=self.lr, betas=self.betas, eps=self.eps, weight_decay=self.weight_decay
        )


@dataclass(frozen=True)
class TrainingJob:
    """One training run: a catalogue variant at a TP size and flags, for `steps` steps in `dtype`."""

    variant: str
    tp_size: int
    sequence_parallel: bool
    fuse_qkv: bool
    steps: int
    dtype: str
    """``"float32"`` or ``"bfloat16"``: the dtype both models are loaded and trained in."""
    checkpoint: str
    vocab_size: int
    optimizer: OptimizerSettings = OptimizerSettings()
    pad_token_id: int = 0
    ep_size: int = 1


@dataclass
class TrainingRun:
    """Per-step losses of the parallel model and of transformers."""

    job: TrainingJob
    losses: list[float] = field(default_factory=list)
    reference_losses: list[float] = field(default_factory=list)
    reference_router_margins: list[float] = field(default_factory=list)
    """Mixture of experts: transformers' smallest router margin at each step (every token, every sparse
    layer, every data-parallel share); empty for a dense model."""
    never_updated: list[str] = field(default_factory=list)
    """Parameters of the parallel model that never received a gradient (their `.grad` stayed None)."""
    attention: dict[str, str] = field(default_factory=dict)
    sequence_parallel_effective: bool | None = None


def training_job(config: TrainingConfig, dtype: str, checkpoint: str) -> TrainingJob:
    """The job a configuration asks for, on `checkpoint` (the dropout-free catalogue checkpoint)."""
    from reference_models import variant

    from .fixed_batch import pad_token_id

    model_config = variant(config.variant).config()
    return TrainingJob(
        variant=config.variant,
        tp_size=config.tp_size,
        sequence_parallel=config.sequence_parallel,
        fuse_qkv=config.fuse_qkv,
        steps=config.steps,
        dtype=dtype,
        checkpoint=checkpoint,
        vocab_size=model_config.vocab_size,
        pad_token_id=pad_token_id(model_config),
        ep_size=config.ep_size,
    )


def train_on_fixed_batch(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor] | Callable[[torch.nn.Module], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    steps: int,
    after_backward: Callable[[torch.optim.Optimizer], None] | None = None,
) -> tuple[list[float], list[str]]:
    """`steps` optimizer steps on `batch` (the model's keyword inputs, or a function giving the loss of the
    model): the loss before each step, and the parameters never given a gradient. `after_backward(optimizer)`
    runs between backward and step (optimum-neuron's gradient handling, and whatever a check observes there)."""
    model.train()
    switch_off_dropout(model)
    losses = []
    touched: set[str] = set()
    loss_of = batch if callable(batch) else lambda trained: trained(**batch).loss
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        loss = loss_of(model)
        loss.backward()
        if after_backward is not None:
            after_backward(optimizer)
        touched.update(name for name, param in model.named_parameters() if param.grad is not None)
        optimizer.step()
        losses.append(float(loss.detach()))
    never = [name for name, param in model.named_parameters() if param.requires_grad and name not in touched]
    return losses, never


def train_on_rank(package: ModuleType, job: TrainingJob) -> TrainingRun | None:
    """The parallel model trained on every rank; on rank 0 transformers' too. Rank 0's run, None elsewhere."""
    run = TrainingRun(job=job)
    batch = rank_batch(training_batch(job))
    model, trn_config, _ = load_parallel(
        package,
        job.checkpoint,
        job.tp_size,
        dtype=getattr(torch, job.dtype),
        sequence_parallel_enabled=job.sequence_parallel,
        fuse_qkv=job.fuse_qkv,
    )
    run.attention = attention_layouts(model)
    run.sequence_parallel_effective = bool(trn_config.sequence_parallel_enabled)
    after = neuron_gradient_step(bool(trn_config.sequence_parallel_enabled), job.optimizer.max_grad_norm)
    optimizer = job.optimizer.build(list(model.parameters()))

    def train() -> tuple[list[float], list[str]]:
        return train_on_fixed_batch(model, batch.model_inputs(), optimizer, job.steps, after)

    losses, run.never_updated = rank_step(f"training at {size_label(job.tp_size, job.ep_size)}", train)
    per_rank = gather_values(losses)
    run.losses = [sum(step) / len(step) for step in zip(*per_rank)]
    if not is_rank_zero():
        return None
    run.reference_losses = train_reference(job, run.reference_router_margins)
    return run


def training_batch(job: TrainingJob) -> FixedBatch:
    """The fixed batch of the job's variant."""
    from .fixed_batch import fixed_batch

    return fixed_batch(job.vocab_size, pad_id=job.pad_token_id)


def train_reference(job: TrainingJob, router_margins: list[float] | None = None) -> list[float]:
    """transformers' model trained identically (the causal mask only, as the parallel model recomputes
    it; with data parallelism, on the mean of the ranks' losses): its losses. A mixture of experts' smallest
    router margin of each step is appended to `router_margins` when given."""
    from transformers import AutoModelForCausalLM

    from reference_models.routing import layer_margins

    from .transformers_reference import training_loss

    model = AutoModelForCausalLM.from_pretrained(
        job.checkpoint, attn_implementation="eager", dtype=getattr(torch, job.dtype)
    )
    optimizer = job.optimizer.build(list(model.parameters()))
    limit = job.optimizer.max_grad_norm

    def zero_unused_and_clip(optimizer: torch.optim.Optimizer) -> None:
        # An expert no token chose this step has no .grad in transformers' sparse block, and AdamW would skip
        # it (no momentum step); its gradient is zero, which NxD's dropless experts compute and AdamW applies.
        for parameter in model.parameters():
            if parameter.requires_grad and parameter.grad is None:
                parameter.grad = torch.zeros_like(parameter)
        if limit is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), limit)

    batch = training_batch(job)
    shares = [batch.rows(rows) for rows in row_shares(job.ep_size, batch.input_ids.shape[0])]

    def mean_loss(trained: torch.nn.Module) -> torch.Tensor:
        losses, margins = [], []
        for share in shares:
            output = trained(**share.reference_inputs(honours_padding=False))
            losses.append(training_loss(trained, output, share.attention_mask)[0])
            if getattr(output, "router_logits", None):
                margins += layer_margins(output.router_logits, trained.config.num_experts_per_tok)
        if margins and router_margins is not None:
            router_margins.append(min(margins))
        return sum(losses) / len(losses)

    losses, _ = train_on_fixed_batch(model, mean_loss, optimizer, job.steps, zero_unused_and_clip)
    return losses


def loss_series_names(job: TrainingJob) -> tuple[str, str]:
    """The legend of a loss plot: the parallel model's line, then transformers'."""
    return f"parallel model (T={job.tp_size}, SP={'on' if job.sequence_parallel else 'off'})", "transformers"
