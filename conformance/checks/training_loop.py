"""Training on one fixed batch, the loop the `overfit` and `bf16_smoke` checks share.

A package's `<X>ForCausalLM.from_pretrained(checkpoint, TrainingNeuronConfig(...), attn_implementation=
"eager", dtype=...)` trains `steps` steps on T ranks with AdamW; after each `loss.backward()` the
gradients of parameters marked `sequence_parallel_enabled` are summed over TP (what optimum-neuron's
optimizer step does when sequence parallelism is on), then every rank steps its own shards. AdamW is
elementwise, so per-rank optimizers over shards equal one optimizer over the whole model as long as every
replicated parameter holds the same full gradient on every rank. transformers' `AutoModelForCausalLM` on the
same checkpoint, batch, dtype and optimizer is trained on rank 0 afterwards, as the reference curve.

No gradient clipping (a global norm needs a TP reduction the model does not own; it would only hide
drift) and no dropout (the catalogue's models have none and the models are put in train mode anyway).
Everything is deterministic: fixed batch, no random draws, one thread per rank.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from conformance.model_package import causal_lm_class
from reference_models import build, variant

from . import RunSettings
from .batching import each_job_on_rank, run_by_tp_size
from .parity import attention_layouts, parity_batch
from .rank_errors import describe, first_rank_error


@dataclass(frozen=True)
class OptimizerSettings:
    """AdamW, fixed learning rate, no schedule, no weight decay (the same on both models)."""

    lr: float = 5e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0

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


@dataclass
class TrainingRun:
    """Per-step losses of the parallel model and of transformers, and what went wrong if anything did."""

    job: TrainingJob
    losses: list[float] = field(default_factory=list)
    reference_losses: list[float] = field(default_factory=list)
    never_updated: list[str] = field(default_factory=list)
    """Parameters of the parallel model that never received a gradient (their `.grad` stayed None)."""
    attention: dict[str, str] = field(default_factory=dict)
    sequence_parallel_effective: bool | None = None
    error: str | None = None
    seconds: float = 0.0


def training_job(configuration: dict[str, Any], dtype: str, cache_dir: str | Path | None) -> TrainingJob:
    """The job a check configuration asks for (`variant`, `tp_size`, `sequence_parallel`, `steps`, ...)."""
    entry = variant(configuration["variant"])
    return TrainingJob(
        variant=entry.key,
        tp_size=int(configuration["tp_size"]),
        sequence_parallel=bool(configuration.get("sequence_parallel", False)),
        fuse_qkv=bool(configuration.get("fuse_qkv", False)),
        steps=int(configuration["steps"]),
        dtype=dtype,
        checkpoint=str(build(entry, cache_dir)),
        vocab_size=entry.config().vocab_size,
    )


def train_on_fixed_batch(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    steps: int,
    after_backward: Callable[[torch.optim.Optimizer], None] | None = None,
) -> tuple[list[float], list[str]]:
    """`steps` optimizer steps on `batch`: the loss before each step, and the parameters never given a
    gradient. `after_backward(optimizer)` runs between backward and step (the SP gradient all-reduce)."""
    model.train()
    losses = []
    touched: set[str] = set()
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        loss = model(**batch).loss
        loss.backward()
        if after_backward is not None:
            after_backward(optimizer)
        touched.update(name for name, param in model.named_parameters() if param.grad is not None)
        optimizer.step()
        losses.append(float(loss.detach()))
    never = [name for name, param in model.named_parameters() if param.requires_grad and name not in touched]
    return losses, never


def run_training_jobs(
    model_dir: str | Path,
    jobs: Sequence[TrainingJob],
    *,
    backend: str = "reference",
    device: str = "cpu",
    timeout: float = 180.0,
) -> list[TrainingRun]:
    """Every job, in order; the jobs of one TP size run in one launcher call. A call that fails as a whole
    (a rank crashed or hung) gives each of its jobs a run whose `error` is the launcher's message."""
    settings = RunSettings(backend=backend, timeout=timeout, device=device)
    found = run_by_tp_size(
        _train_jobs_on_rank, model_dir, jobs, lambda job: job.tp_size, _call_failed, settings
    )
    return [run for run, _ in found]


def _call_failed(job: TrainingJob, failure: Exception, seconds: float) -> TrainingRun:
    return TrainingRun(job=job, error=f"the rank call failed: {failure}")


# --- on the ranks -------------------------------------------------------------------------------------


def _train_jobs_on_rank(model_dir: str, jobs: list[TrainingJob]) -> list[TrainingRun] | None:
    return each_job_on_rank(model_dir, jobs, _train_job, _mount_failed)


def _mount_failed(job: TrainingJob, error: str) -> TrainingRun:
    return TrainingRun(job=job, error=f"mounting the package failed: {error}")


def _train_job(package: ModuleType, job: TrainingJob) -> TrainingRun:
    import torch.distributed as dist

    start = time.perf_counter()
    run = TrainingRun(job=job)
    batch = parity_batch(job.vocab_size)
    error = None
    try:
        _train_parallel(package, job, batch, run)
    except Exception as exc:
        error = describe(exc)
    run.error = first_rank_error(error)
    if run.error is None and dist.get_rank() == 0:
        try:
            run.reference_losses = _train_reference(job, batch)
        except Exception as exc:  # rank 0 alone, after the last collective
            run.error = f"training the transformers model failed: {describe(exc)}"
    run.seconds = time.perf_counter() - start
    return run


def _train_parallel(
    package: ModuleType, job: TrainingJob, batch: dict[str, torch.Tensor], run: TrainingRun
) -> None:
    from neuronx_distributed.parallel_layers import parallel_state
    from neuronx_distributed.parallel_layers.grads import allreduce_sequence_parallel_gradients

    from conformance.backends import active

    # NxD keeps one kv-shared group size per process; each job builds a new model.
    parallel_state.destroy_kv_group()
    trn_config = (
        active()
        .host_module("config")
        .TrainingNeuronConfig(
            tensor_parallel_size=job.tp_size,
            sequence_parallel_enabled=job.sequence_parallel,
            fuse_qkv=job.fuse_qkv,
        )
    )
    model = causal_lm_class(package, job.checkpoint).from_pretrained(
        job.checkpoint, trn_config, attn_implementation="eager", dtype=getattr(torch, job.dtype)
    )
    run.attention = attention_layouts(model)
    run.sequence_parallel_effective = bool(trn_config.sequence_parallel_enabled)
    after = allreduce_sequence_parallel_gradients if trn_config.sequence_parallel_enabled else None
    optimizer = job.optimizer.build(model.parameters())
    run.losses, run.never_updated = train_on_fixed_batch(model, batch, optimizer, job.steps, after)


def _train_reference(job: TrainingJob, batch: dict[str, torch.Tensor]) -> list[float]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        job.checkpoint, attn_implementation="eager", dtype=getattr(torch, job.dtype)
    )
    optimizer = job.optimizer.build(model.parameters())
    losses, _ = train_on_fixed_batch(model, batch, optimizer, job.steps)
    return losses
