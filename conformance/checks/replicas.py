"""Replicas: after a few optimizer steps as optimum-neuron takes them, every replicated parameter is
bit-identical on every TP rank.

The package's model is loaded at TP = T from the catalogue checkpoint (fp32, dropout off) and trains
`steps` steps on the fixed batch through the overfit check's loop (`training_loop`) with optimum-neuron's
gradient handling (`neuron_optimizer`: under SP the sum over TP of the gradients of parameters marked
`sequence_parallel_enabled` and nothing else over TP, the data-parallel mean, NxD's `clip_grad_norm` at
`MAX_GRAD_NORM`), then AdamW. Every parameter that is not `tensor_model_parallel` is replicated: each rank
holds a copy, and the copies must stay equal bit for bit, since nothing ever re-synchronises them. K/V heads
replicated by NxD's GQA layer (`kv_size_multiplier` > 1) must stay equal too.

With expert parallelism (mixture-of-experts models, EP > 1) the EP ranks are data-parallel ranks, each
training on its own rows of the batch: every parameter that is not an expert weight (`expert_model_parallel`)
must also stay bit-identical over the data-parallel group — the router and the norms, and each TP shard of
the attention — which optimum-neuron's data-parallel mean guarantees as long as nothing marks a shared
parameter as an expert or skips it. Expert weights differ over EP by design (each rank holds its experts);
they are told apart by the module holding them (NxD's `ExpertMLPs`), not by their mark, so a shared
parameter marked `expert_model_parallel` is compared and named.

A copy that drifts got a different gradient on its rank: a per-rank partial gradient that the optimizer
never sums. The failure names the parameter, the first step its gradients differed, and why, from what its
module was applied to on each rank (`replica_inputs`): the rank's sequence shard under SP (the parameter
lacks `sequence_parallel_enabled`) or a column-sharded activation (the rank's own heads or columns: the
model must sum its gradient over TP itself, as the `sequence_parallel_enabled` mark only helps under SP).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from conformance.comparisons.gradient_consolidation import kv_replica_disagreement
from conformance.harness.protocol import Check, CheckConfig, Exercised, Verdict, Workspace, size_label
from conformance.harness.rank_steps import is_rank_zero, rank_step
from conformance.model_runs.data_parallel import data_parallel_position, rank_batch
from conformance.model_runs.fixed_batch import fixed_batch, pad_token_id
from conformance.model_runs.neuron_optimizer import neuron_gradient_step
from conformance.model_runs.parallel_model import load_parallel
from conformance.model_runs.rank_gather import gather_to_rank_0
from conformance.model_runs.replica_inputs import ModuleInput, ModuleInputRecorder
from conformance.model_runs.replica_spread import replica_spreads
from conformance.model_runs.training_loop import OptimizerSettings, train_on_fixed_batch
from reference_models import variant

if TYPE_CHECKING:
    from conformance.profiles import ModelCatalogue

DEFAULT_STEPS = 3
MAX_GRAD_NORM = 1.0
"""optimum-neuron's default `max_grad_norm` (the trainer clips with NxD's `clip_grad_norm`)."""
TOLERANCE = (
    "Bit-identical: max |rank r - rank 0| must be exactly 0 for every replicated parameter after the steps. "
    "Every rank computes a replicated parameter's full gradient from the same values (all-reduced or "
    "all-gathered activations, or the optimizer's TP sum of sequence-parallel gradients), then takes the same "
    "AdamW step; any difference, however small, means a rank held another gradient, and copies that differ "
    "are never re-synchronised. Measured on the generated llama/mistral/qwen2/qwen3/granite: 0.0 everywhere."
)


@dataclass(frozen=True)
class ReplicasConfig(CheckConfig):
    """A catalogue variant trained at a TP size, sequence parallelism on or off."""

    tp_size: int
    sequence_parallel: bool = False
    steps: int = DEFAULT_STEPS
    ep_size: int = 1
    """Expert parallelism (mixture-of-experts models): T x EP ranks, each EP rank training on its own rows."""

    HIDDEN_WHEN_DEFAULT: ClassVar[frozenset[str]] = frozenset({"ep_size"})

    def exercised(self) -> Exercised:
        return Exercised(
            tp_sizes=(self.tp_size,),
            ep_sizes=(self.ep_size,),
            options=(
                ("sequence_parallel_enabled", self.sequence_parallel and self.tp_size > 1),
                ("fuse_qkv", False),
                ("recompute_causal_mask", True),
                ("gradient_checkpointing", False),
            ),
        )


@dataclass(frozen=True)
class ReplicasJob:
    config: ReplicasConfig
    checkpoint: str
    vocab_size: int
    pad_token_id: int
    optimizer: OptimizerSettings = field(
        default_factory=lambda: OptimizerSettings(max_grad_norm=MAX_GRAD_NORM)
    )

    @property
    def tp_size(self) -> int:
        return self.config.tp_size

    @property
    def ep_size(self) -> int:
        return self.config.ep_size


@dataclass
class ReplicasRun:
    """What rank 0 measured: per replicated parameter, the spread of its copies after the steps and of its
    gradients at each step; the inputs of the modules holding them; K/V replica spreads."""

    sequence_parallel_effective: bool = False
    losses: list[float] = field(default_factory=list)
    parameter_spread: dict[str, float] = field(default_factory=dict)
    gradient_spread: list[dict[str, float]] = field(default_factory=list)
    """Per step, per replicated parameter: max |rank r's gradient - rank 0's| (after the optimizer's reductions)."""
    sequence_parallel_flags: dict[str, bool] = field(default_factory=dict)
    owners: dict[str, str] = field(default_factory=dict)
    """Parameter name -> the module that holds it."""
    inputs: dict[str, ModuleInput] = field(default_factory=dict)
    kv_replica_spread: dict[str, float] = field(default_factory=dict)
    data_parallel_spread: dict[str, float] = field(default_factory=dict)
    """With data parallelism, per non-expert parameter: max |data-parallel rank d - rank 0| after the steps."""
    data_parallel_gradient_spread: list[dict[str, float]] = field(default_factory=list)
    shared_marked_as_expert: list[str] = field(default_factory=list)
    """Parameters outside the routed experts that carry the `expert_model_parallel` mark."""


class Replicas(Check[ReplicasConfig, ReplicasJob, ReplicasRun | None]):
    name = "replicas"
    order = 55
    config_type = ReplicasConfig
    tolerance = TOLERANCE
    key_figures = (
        "replicated_parameters",
        "parameters_differing",
        "max_parameter_spread",
        "data_parallel_parameters",
        "data_parallel_differing",
        "steps",
    )

    def plan(self, profile: str, catalogue: ModelCatalogue) -> list[ReplicasConfig]:
        base = catalogue.base
        gqa, gqa_tp = catalogue.smallest_gqa()
        cases = [
            ReplicasConfig(base, 2, True),
            ReplicasConfig(base, 2, False),
            ReplicasConfig(gqa, gqa_tp, True),
        ]
        if catalogue.is_moe:
            # EP ranks are data-parallel ranks: what is not an expert must stay equal over them too.
            cases.append(ReplicasConfig(base, 2, True, ep_size=2))
        if profile == "quick":
            return list(dict.fromkeys(cases))
        cases += [ReplicasConfig(gqa, gqa_tp, False), ReplicasConfig(base, 4, True)]
        if catalogue.is_moe:
            cases += [ReplicasConfig(base, 1, ep_size=2), ReplicasConfig(base, 2, False, ep_size=2)]
        for name in ("features", "tied"):
            if name in catalogue.variants:
                cases.append(ReplicasConfig(catalogue.key(name), 2, True))
        return list(dict.fromkeys(cases))

    def prepare(self, config: ReplicasConfig, workspace: Workspace, index: int) -> ReplicasJob:
        entry = variant(config.variant)
        model_config = entry.config()
        return ReplicasJob(
            config, workspace.checkpoint(entry), model_config.vocab_size, pad_token_id(model_config)
        )

    def on_rank(self, package: ModuleType, job: ReplicasJob) -> ReplicasRun | None:
        return train_and_compare_replicas(package, job)

    def judge(self, job: ReplicasJob, value: ReplicasRun | None) -> Verdict:
        assert value is not None
        return judge_run(job, value)


CHECK = Replicas()


# --- on the ranks -------------------------------------------------------------------------------------


def train_and_compare_replicas(package: ModuleType, job: ReplicasJob) -> ReplicasRun | None:
    """Train on every rank with optimum-neuron's optimizer step; measure how far replicas drift."""
    from conformance.backends import active

    config = job.config
    batch = rank_batch(fixed_batch(job.vocab_size, pad_id=job.pad_token_id))
    model, trn_config, _ = load_parallel(
        package, job.checkpoint, config.tp_size, sequence_parallel_enabled=config.sequence_parallel
    )
    sequence_parallel = bool(trn_config.sequence_parallel_enabled)
    parameters = dict(model.named_parameters())
    replicated = [
        name
        for name, p in parameters.items()
        if not getattr(p, "tensor_model_parallel", False) and not getattr(p, "expert_model_parallel", False)
    ]
    experts = routed_expert_parameters(model)
    shared = [name for name in parameters if name not in experts]
    data_parallel = data_parallel_position()[1] > 1
    run = ReplicasRun(sequence_parallel_effective=sequence_parallel)
    run.shared_marked_as_expert = [
        name for name in shared if getattr(parameters[name], "expert_model_parallel", False)
    ]
    recorder = ModuleInputRecorder(model, set(replicated))
    optimizer = job.optimizer.build(list(parameters.values()))
    reduce_and_clip = neuron_gradient_step(sequence_parallel, job.optimizer.max_grad_norm)

    def after_backward(optimizer: torch.optim.Optimizer) -> None:
        reduce_and_clip(optimizer)
        grads = {
            name: parameters[name].grad
            if parameters[name].grad is not None
            else torch.zeros_like(parameters[name])
            for name in replicated
        }
        run.gradient_spread.append(replica_spreads(grads))
        if data_parallel:
            shared_grads = {
                name: parameters[name].grad
                if parameters[name].grad is not None
                else torch.zeros_like(parameters[name])
                for name in shared
            }
            run.data_parallel_gradient_spread.append(replica_spreads(shared_grads, over_data_parallel=True))

    def train() -> list[float]:
        try:
            losses, _ = train_on_fixed_batch(
                model, batch.model_inputs(), optimizer, config.steps, after_backward
            )
        finally:
            recorder.remove()
        return losses

    run.losses = rank_step(f"training at {size_label(config.tp_size, config.ep_size)}", train)
    batch_size, seq_len = batch.input_ids.shape
    run.inputs = recorder.observed(batch_size, seq_len, sequence_parallel)
    run.parameter_spread = replica_spreads({name: parameters[name] for name in replicated})
    if data_parallel:
        run.data_parallel_spread = replica_spreads(
            {name: parameters[name] for name in shared}, over_data_parallel=True
        )
    gathered = gather_to_rank_0({name: p.detach() for name, p in parameters.items()})
    metadata = active().host_module("transformations_utils").create_parameter_metadata(model)
    if not is_rank_zero():
        return None
    assert gathered is not None
    sharded = {name: [params[name] for params in gathered[: config.tp_size]] for name in gathered[0]}
    run.kv_replica_spread = kv_replica_disagreement(sharded, metadata["model_weight_transformation_specs"])
    run.sequence_parallel_flags = {
        name: bool(getattr(parameters[name], "sequence_parallel_enabled", False)) for name in replicated
    }
    run.owners = {name: name.rpartition(".")[0] for name in replicated}
    return run


def routed_expert_parameters(model: torch.nn.Module) -> set[str]:
    """The parameters of the model's routed experts (NxD's `ExpertMLPs`, known by their
    `routed_experts_mlp_config`): the only ones that may differ over EP. Found by the module that holds
    them, not by their `expert_model_parallel` mark, so that a shared parameter wrongly marked is still
    compared."""
    names: set[str] = set()
    for prefix, module in model.named_modules():
        if getattr(module, "routed_experts_mlp_config", None) is not None:
            names.update(f"{prefix}.{name}" if prefix else name for name, _ in module.named_parameters())
    return names


# --- the verdict ----------------------------------------------------------------------------------------


def judge_run(job: ReplicasJob, run: ReplicasRun) -> Verdict:
    differing = {name: spread for name, spread in run.parameter_spread.items() if spread != 0.0}
    kv_differing = {name: spread for name, spread in run.kv_replica_spread.items() if spread != 0.0}
    dp_differing = {name: spread for name, spread in run.data_parallel_spread.items() if spread != 0.0}
    figures: dict[str, Any] = {
        "steps": job.config.steps,
        "lr": job.optimizer.lr,
        "max_grad_norm": job.optimizer.max_grad_norm,
        "losses": list(run.losses),
        "sequence_parallel_effective": run.sequence_parallel_effective,
        "replicated_parameters": len(run.parameter_spread),
        "parameters_differing": len(differing),
        "max_parameter_spread": max(run.parameter_spread.values(), default=0.0),
        "parameter_spread": dict(sorted(run.parameter_spread.items())),
        "kv_replica_spread": dict(sorted(run.kv_replica_spread.items())),
        "first_gradient_step_differing": {
            name: step for name in sorted(differing) if (step := _first_step(run, name)) is not None
        },
    }
    if job.config.ep_size > 1:
        figures["data_parallel_parameters"] = len(run.data_parallel_spread)
        figures["data_parallel_differing"] = len(dp_differing)
        figures["max_data_parallel_spread"] = max(run.data_parallel_spread.values(), default=0.0)
        figures["data_parallel_spread"] = dict(sorted(dp_differing.items()))
    reasons = [_reason(job, run, name, spread) for name, spread in sorted(differing.items())]
    reasons += [
        f"K/V replicas of {name} differ after {job.config.steps} optimizer steps (max |replica - replica 0| "
        f"{spread:.3g}): the sum of their gradients over the kv-shared group is missing (the GQA layer's "
        "for K/V, the norm's for a key norm's entries)"
        for name, spread in sorted(kv_differing.items())
    ]
    reasons += [
        _data_parallel_reason(job, run, name, spread) for name, spread in sorted(dp_differing.items())
    ]
    return Verdict(figures=figures, reasons=reasons)


def _data_parallel_reason(job: ReplicasJob, run: ReplicasRun, name: str, spread: float) -> str:
    steps = job.config.steps
    step = next(
        (i for i, spreads in enumerate(run.data_parallel_gradient_spread) if spreads.get(name, 0.0) != 0.0),
        None,
    )
    head = (
        f"{name} is not the same on every data-parallel (expert-parallel) rank after {steps} optimizer steps "
        f"(max |rank d - rank 0| {spread:.3g}); it is no expert weight, so every EP rank must hold it"
    )
    if step is None:
        return f"{head}, although its gradient was the same on every data-parallel rank: the update differs per rank"
    head = (
        f"{head}: from step {step + 1} its gradient differs between the data-parallel ranks, which each train on "
        "their own rows, so the optimizer's data-parallel mean skipped it"
    )
    if name in run.shared_marked_as_expert:
        return (
            f"{head}: it is marked expert_model_parallel outside the routed experts (a shared parameter marked "
            "expert_model_parallel is averaged only over the ranks holding the same experts); remove the mark"
        )
    return (
        f"{head} (a shared parameter marked expert_model_parallel is averaged only over the ranks holding the "
        "same experts)"
    )


def _first_step(run: ReplicasRun, name: str) -> int | None:
    return next((i for i, spreads in enumerate(run.gradient_spread) if spreads.get(name, 0.0) != 0.0), None)


def _reason(job: ReplicasJob, run: ReplicasRun, name: str, spread: float) -> str:
    steps = job.config.steps
    head = (
        f"{name} is not the same on every TP rank after {steps} optimizer steps (max |rank r - rank 0| "
        f"{spread:.3g})"
    )
    step = _first_step(run, name)
    if step is None:
        return (
            f"{head}, although its gradient was the same on every rank at every step: the update itself "
            "differs per rank (a rank-dependent optimizer state or parameter update)"
        )
    gradient = run.gradient_spread[step][name]
    return (
        f"{head}: per-rank partial gradient never summed (from step {step + 1} each rank holds a different "
        f"gradient, max |rank r - rank 0| {gradient:.3g}, which optimum-neuron's optimizer does not sum over "
        f"TP); {_cause(run, name)}"
    )


def _cause(run: ReplicasRun, name: str) -> str:
    owner = run.owners.get(name, "")
    seen = run.inputs.get(owner)
    flagged = run.sequence_parallel_flags.get(name, False)
    if seen is None:
        return (
            f"its module {owner or '(the model)'} was not called with a tensor input, so what it is applied to "
            "is unknown: sum its gradient over TP in the model, or mark it sequence_parallel_enabled if it "
            "sees the sequence shard under SP"
        )
    where = f"{owner} is applied to {tuple(seen.shape)}"
    if seen.sequence_sharded and not flagged:
        return (
            f"applied to the rank's sequence shard under SP ({where}, S/T of the tokens on each rank): mark it "
            "sequence_parallel_enabled so that the optimizer sums its gradient over TP"
        )
    unused_flag = (
        " (its sequence_parallel_enabled mark is only used under SP)"
        if flagged and not run.sequence_parallel_effective
        else ""
    )
    if seen.differs_between_ranks:
        return (
            f"applied to a column-sharded activation ({where}, different values on each rank: the rank's own "
            f"heads or columns){unused_flag}: sum its gradient over TP in the model (e.g. a gradient hook with "
            "reduce_from_tensor_model_parallel_region); sequence_parallel_enabled would only help under SP"
        )
    return (
        f"its module's input is the same on every rank ({where}) but what uses its output is rank-local (a "
        f"column-sharded activation, or a replicated K/V head serving the rank's own query heads){unused_flag}, "
        "so each rank's gradient is partial: sum its gradient over TP in the model"
    )
