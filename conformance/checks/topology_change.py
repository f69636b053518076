"""Topology change (DESIGN §5): saved at one TP size, consolidated, loaded at another: the same logits.

For each configuration (`{"variant": "llama/gqa", "source_tp_size": 2, "tp_size": 1}`):

1. at T=a, the package's `<X>ForCausalLM(config, trn_config)` is built *from config* with a fixed seed,
   as the host's `NeuronModelForCausalLM.from_config` does: NxD draws one float32 master per weight and
   hands each rank its slice by `partition_dim` and `stride`, so the init, the strides and the metadata
   are exercised (loading alone cannot see a wrong stride: specs load by name). Its logits on a fixed
   batch are gathered, then `save_pretrained` and the host's consolidation write a transformers
   checkpoint;
2. transformers' model loaded from that checkpoint must give the T=a logits, so a consolidation that is
   self-consistent but wrong for transformers fails;
3. at T=b the package's `from_pretrained` of that checkpoint must give the T=a logits;
4. the same seed at T=b must build the same model as at T=a: the consolidation of the T=b init must equal
   the T=a checkpoint bit for bit. This is what a wrong stride breaks: a fused `gate_up_proj` with
   stride 1 at T=2 hands rank 0 the whole gate rows and rank 1 the up rows, a different model that is
   saved and reloaded consistently (steps 2-3 pass) but is not the model the seed gives at T=1, and its
   recorded stride no longer describes its layout. Step 4 applies when both sizes reach the same attention
   layout and it is not NxD's GQA layer: that layer's spec orders Q heads (and o_proj's input columns) by
   the kv-size multiplier, which depends on T, so there the seed gives another model by design
   (`init_compared` in the figures says whether step 4 ran). On the neuron backend step 4 compares weights
   only: released NxD draws column-parallel biases per rank (NXD-03).

Configurations are batched: one launcher call per source T, then one per target T.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from conformance.results import CheckResult, Status
from reference_models import build, variant
from reference_models.catalogue import kv_size_multiplier

from . import RunSettings
from ._checkpoint_io import (
    bias_keys,
    consolidate,
    diff_state_dicts,
    explain,
    gathered_logits,
    loading_reasons,
    names,
    original_state_dict,
    save_on_every_rank,
)
from .batching import each_job_on_rank, run_by_tp_size, split_unbuildable
from .rank_errors import describe, first_line, first_rank_error

CHECK = "topology_change"
SEED = 0
LOGITS_RTOL = 1e-5
LOGITS_ATOL = 1e-7
TOLERANCE = (
    f"logits: max |Δ| <= {LOGITS_RTOL:g} * max |reference logits| + {LOGITS_ATOL:g}, fp32 on every side. "
    "The same weights at another T (or in transformers) only reorder sums (row-parallel all-reduce, "
    "vocab-parallel gather): a few ulps of the logits' scale, which a random init keeps small (max |logits| "
    "0.5-1.3), hence a relative bound. Measured on llama gqa/mqa/tied/features, 2->1 and 1->2: max |Δ| "
    "<= 2.4e-7, <= 4e-7 of max |logits| (25x margin); a sharding fault is O(1) relative. Checkpoint and "
    "seeded init: bit for bit (no arithmetic)."
)


@dataclass(frozen=True)
class _Job:
    index: int
    configuration: dict[str, Any]
    source_tp_size: int
    tp_size: int
    checkpoint: str
    """The catalogue checkpoint: its config and the class it names (its weights are not used)."""
    workdir: str
    vocab_size: int

    @property
    def consolidated(self) -> str:
        return str(Path(self.workdir) / "consolidated")


@dataclass
class _Outcome:
    """What one side (source or target call) of a job measured, from rank 0."""

    logits: torch.Tensor | None = None
    reasons: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    attention: list[str] = field(default_factory=list)
    init_reasons: list[str] = field(default_factory=list)
    """Why the seeded init at T=b differs from the one at T=a (target side only; judged with the layouts)."""
    seconds: float = 0.0
    traceback: str | None = None

    def record_failure(self, what: str, exc: Exception) -> None:
        """A step that raised: `what: <the error's first line>` as a reason, and its traceback."""
        error = describe(exc)
        self.reasons.append(f"{what}: {error.splitlines()[0]}")
        self.traceback = error


def run(
    package_dir: Path, configurations: Sequence[Mapping[str, Any]], settings: RunSettings
) -> list[CheckResult]:
    """One `CheckResult` per configuration, in order (see the module docstring)."""
    results, buildable = split_unbuildable(
        CHECK,
        configurations,
        TOLERANCE,
        lambda configuration: [int(configuration["source_tp_size"]), int(configuration["tp_size"])],
    )
    with tempfile.TemporaryDirectory(prefix="topology-change-") as scratch:
        jobs = [
            _Job(
                index=index,
                configuration=configuration,
                source_tp_size=int(configuration["source_tp_size"]),
                tp_size=int(configuration["tp_size"]),
                checkpoint=str(build(entry, settings.cache_dir)),
                workdir=str(Path(scratch) / f"case-{index}"),
                vocab_size=entry.config().vocab_size,
            )
            for index, configuration, entry in buildable
        ]
        sources = _by_tp_size(jobs, "source_tp_size", _source_on_rank, package_dir, settings)
        ready = [job for job in jobs if not sources[job.index].reasons]
        references = {job.index: _transformers_logits(job) for job in ready}
        targets = _by_tp_size(ready, "tp_size", _target_on_rank, package_dir, settings)
        for job in jobs:
            results[job.index] = _judge(
                job, sources[job.index], references.get(job.index), targets.get(job.index)
            )
    return [results[index] for index in range(len(configurations))]


def _by_tp_size(
    jobs: list[_Job], size_field: str, on_rank: Any, package_dir: Path, settings: RunSettings
) -> dict[int, _Outcome]:
    """`on_rank` for the jobs of each T in one launcher call; a failed call fails each of its jobs."""

    def call_failed(job: _Job, failure: Exception, seconds: float) -> _Outcome:
        return _Outcome(
            reasons=[f"the rank call at T={getattr(job, size_field)} failed: {first_line(str(failure))}"],
            seconds=seconds,
            traceback=str(failure),
        )

    found = run_by_tp_size(
        on_rank, package_dir, jobs, lambda job: getattr(job, size_field), call_failed, settings
    )
    return {job.index: outcome for job, (outcome, _) in zip(jobs, found)}


# --- on the ranks -------------------------------------------------------------------------------------


def _mount_failed(job: _Job, error: str) -> _Outcome:
    return _Outcome(reasons=[f"mounting the package failed: {error.splitlines()[0]}"], traceback=error)


def _source_on_rank(model_dir: str, jobs: list[_Job]) -> list[_Outcome] | None:
    return each_job_on_rank(model_dir, jobs, _source, _mount_failed)


def _target_on_rank(model_dir: str, jobs: list[_Job]) -> list[_Outcome] | None:
    return each_job_on_rank(model_dir, jobs, _target, _mount_failed)


def _input_ids(job: _Job) -> torch.Tensor:
    from .parity import parity_batch

    return parity_batch(job.vocab_size)["input_ids"]


def _seeded_model(package: ModuleType, job: _Job, tp_size: int) -> torch.nn.Module:
    """The package's causal LM built from the checkpoint's config at `tp_size`, seeded: a random init."""
    from neuronx_distributed.parallel_layers import parallel_state
    from transformers import AutoConfig

    from conformance.backends import active
    from conformance.model_package import causal_lm_class

    parallel_state.destroy_kv_group()
    trn_config = active().host_module("config").TrainingNeuronConfig(tensor_parallel_size=tp_size)
    config = AutoConfig.from_pretrained(job.checkpoint, attn_implementation="eager")
    model_cls = causal_lm_class(package, job.checkpoint)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = model_cls(config, trn_config)
    return model.to(torch.float32).eval()


def _source(package: ModuleType, job: _Job) -> _Outcome | None:
    """T=a: seeded init, logits, save; rank 0 consolidates into a transformers checkpoint folder."""
    import torch.distributed as dist

    from conformance.backends import active

    from .parity import attention_layouts

    start = time.perf_counter()
    outcome = _Outcome()
    model, error = None, None
    try:
        model = _seeded_model(package, job, job.source_tp_size)
        outcome.attention = sorted(set(attention_layouts(model).values()))
        outcome.logits = gathered_logits(model, _input_ids(job))
    except Exception as exc:
        error = describe(exc)
    if (error := first_rank_error(error)) is not None:
        return _stopped(
            outcome, f"building from config at T={job.source_tp_size} failed: {error}", error, start
        )
    assert model is not None
    saved = Path(job.workdir) / "source"
    if (error := save_on_every_rank(model, saved)) is not None:
        return _stopped(outcome, f"save_pretrained at T={job.source_tp_size} failed: {error}", error, start)
    if dist.get_rank() != 0:
        return None
    try:
        checkpointing = active().host_module("checkpointing")
        checkpointing.consolidate_model_parallel_checkpoints_to_unified_checkpoint(saved, job.consolidated)
        shutil.copy(saved / "config.json", Path(job.consolidated) / "config.json")
    except Exception as exc:
        outcome.record_failure(f"consolidating the T={job.source_tp_size} checkpoint failed", exc)
    outcome.seconds = time.perf_counter() - start
    return outcome


def _target(package: ModuleType, job: _Job) -> _Outcome | None:
    """T=b: from_pretrained of the consolidated checkpoint and its logits; the seeded init at T=b against
    the T=a checkpoint (rank 0)."""
    import torch.distributed as dist

    from conformance.backends import active
    from conformance.model_package import causal_lm_class

    from .parity import attention_layouts

    start = time.perf_counter()
    outcome = _Outcome()
    error = None
    info: dict[str, Any] = {}
    try:
        from neuronx_distributed.parallel_layers import parallel_state

        parallel_state.destroy_kv_group()
        trn_config = active().host_module("config").TrainingNeuronConfig(tensor_parallel_size=job.tp_size)
        model_cls = causal_lm_class(package, job.consolidated)
        model, info = model_cls.from_pretrained(
            job.consolidated,
            trn_config,
            attn_implementation="eager",
            dtype=torch.float32,
            output_loading_info=True,
        )
        outcome.attention = sorted(set(attention_layouts(model).values()))
        outcome.logits = gathered_logits(model, _input_ids(job))
        del model
    except Exception as exc:
        error = describe(exc)
    if (error := first_rank_error(error)) is not None:
        return _stopped(
            outcome,
            f"from_pretrained of the consolidated checkpoint at T={job.tp_size} failed: {error}",
            error,
            start,
        )
    outcome.reasons += loading_reasons(info, f"the T={job.source_tp_size} consolidated checkpoint")

    init, error = None, None
    try:
        init = _seeded_model(package, job, job.tp_size)
    except Exception as exc:
        error = describe(exc)
    if (error := first_rank_error(error)) is not None:
        return _stopped(outcome, f"building from config at T={job.tp_size} failed: {error}", error, start)
    assert init is not None
    saved = Path(job.workdir) / "target-init"
    if (error := save_on_every_rank(init, saved)) is not None:
        return _stopped(outcome, f"save_pretrained at T={job.tp_size} failed: {error}", error, start)
    if dist.get_rank() != 0:
        return None
    try:
        state_dict, metadata = consolidate(saved)
        expected = original_state_dict(Path(job.consolidated))
        if active().name != "reference":
            # Released NxD draws column-parallel biases per rank (NXD-03): only weights are one model there.
            state_dict, expected = _weights_only(state_dict), _weights_only(expected)
        diff = diff_state_dicts(state_dict, expected)
    except Exception as exc:
        outcome.record_failure(f"consolidating the T={job.tp_size} init failed", exc)
    else:
        outcome.figures["init_tensors_compared"] = diff.compared
        outcome.figures["init_tensors_differing"] = dict(diff.differing)
        outcome.figures["has_biases"] = bias_keys(state_dict)
        outcome.init_reasons = _init_reasons(job, diff, metadata)
    outcome.seconds = time.perf_counter() - start
    return outcome


def _stopped(outcome: _Outcome, reason: str, error: str, start: float) -> _Outcome | None:
    import torch.distributed as dist

    outcome.reasons.append(reason.splitlines()[0])
    outcome.traceback = error
    outcome.seconds = time.perf_counter() - start
    return outcome if dist.get_rank() == 0 else None


# --- judging ------------------------------------------------------------------------------------------


def _stride_causes(metadata: dict[str, Any]) -> list[str]:
    """Fused column layers whose recorded stride is not the number of linears they fuse.

    A column fusion of n equal linears is laid out [W_1; ...; W_n] in the master, and each rank must hold
    [shard_r(W_1); ...; shard_r(W_n)] (what the spec loads): exactly NxD's slicing with stride n.
    """
    causes = []
    parameters = metadata.get("parameters", {})
    for entry in metadata.get("model_weight_transformation_specs", []):
        module = entry.get("module_fully_qualified_name", "")
        for class_name, fields in entry.get("specs", []):
            if class_name != "FusedLinearsSpec" or fields.get("fuse_axis") not in (0, "column"):
                continue
            if len(set(fields.get("original_dims", []))) != 1:
                continue
            linears = fields["linear_names"]
            fused = f"{module}.{fields['fused_linear_name']}.weight"
            stride = parameters.get(fused, {}).get("partition_stride")
            if stride is not None and stride != len(linears):
                causes.append(
                    f"{fused} is sharded with partition_stride {stride} but fuses {len(linears)} linears "
                    f"({', '.join(linears)}): its stride must be {len(linears)} so that each rank holds its "
                    "shard of each"
                )
    return causes


def _weights_only(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: tensor for name, tensor in state_dict.items() if not name.endswith(".bias")}


def _init_reasons(job: _Job, diff: Any, metadata: dict[str, Any]) -> list[str]:
    """The T=b seeded init against the T=a one (the consolidated checkpoint)."""
    if diff.identical:
        return []
    a, b = job.source_tp_size, job.tp_size
    reasons = [
        f"the seeded random init differs between T={a} and T={b} (the same seed must give the same model at "
        f"every T: NxD slices one master per weight by its stride): "
        + "; ".join(explain(diff, metadata, f"T={b} init", f"the T={a} init"))
    ]
    causes = _stride_causes(metadata)
    if causes:
        reasons.append(
            "likely cause: "
            + "; ".join(causes[:4])
            + (f" and {len(causes) - 4} more" if len(causes) > 4 else "")
        )
    return reasons


def _transformers_logits(job: _Job) -> _Outcome:
    """transformers' model on the consolidated checkpoint (eager, fp32): its logits and loading info."""
    from transformers import AutoModelForCausalLM

    start = time.perf_counter()
    outcome = _Outcome()
    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            job.consolidated, attn_implementation="eager", dtype=torch.float32, output_loading_info=True
        )
        with torch.no_grad():
            outcome.logits = model.eval()(input_ids=_input_ids(job)).logits.float()
        for kind in ("missing_keys", "unexpected_keys"):
            found = sorted(info.get(kind, []))
            if found:
                outcome.reasons.append(
                    f"transformers loading the consolidated checkpoint reports {kind}: {names(found)}"
                )
    except Exception as exc:
        outcome.record_failure("transformers could not load the consolidated checkpoint", exc)
    outcome.seconds = time.perf_counter() - start
    return outcome


def _logits_reason(
    what: str, logits: torch.Tensor | None, expected: torch.Tensor, figures: dict[str, Any], key: str
) -> list[str]:
    if logits is None:
        return []
    if logits.shape != expected.shape:
        return [f"{what} logits have shape {tuple(logits.shape)}, the T=a model's {tuple(expected.shape)}"]
    delta = float((logits - expected).abs().max())
    bound = LOGITS_RTOL * float(expected.abs().max()) + LOGITS_ATOL
    figures[key] = delta
    figures["logits_bound"] = bound
    if delta > bound:
        return [f"{what} logits differ from the T=a model's: max |Δ| {delta:.3g} > {bound:.3g}"]
    return []


def _judge(job: _Job, source: _Outcome, reference: _Outcome | None, target: _Outcome | None) -> CheckResult:
    a, b = job.source_tp_size, job.tp_size
    result = CheckResult(CHECK, job.configuration, Status.FAIL, tolerance=TOLERANCE)
    result.reasons += [f"T={a}: {reason}" for reason in source.reasons]
    traces = [o.traceback for o in (source, reference, target) if o is not None and o.traceback]
    result.traceback = "\n".join(traces) or None
    result.figures["source_attention"] = source.attention
    result.seconds = source.seconds
    if source.logits is not None:
        result.figures["max_abs_logits"] = float(source.logits.abs().max())
    if reference is not None and source.logits is not None:
        result.reasons += reference.reasons
        result.reasons += _logits_reason(
            "transformers'",
            reference.logits,
            source.logits,
            result.figures,
            "transformers_logits_max_abs_diff",
        )
        result.seconds += reference.seconds
    if target is not None and source.logits is not None:
        result.figures["target_attention"] = target.attention
        result.figures.update(target.figures)
        result.reasons += [f"T={b}: {reason}" for reason in target.reasons]
        if target.attention == source.attention and "gqa" not in source.attention:
            result.reasons += [f"T={b}: {reason}" for reason in target.init_reasons]
            result.figures["init_compared"] = True
        else:
            # A seeded init is one model at every T only while no GQA layer is involved: the GQA spec
            # reorders Q heads (and o_proj's columns) by the kv-size multiplier, which changes with T.
            result.figures["init_compared"] = False
        result.reasons += _logits_reason(
            f"T={b}", target.logits, source.logits, result.figures, "target_logits_max_abs_diff"
        )
        result.seconds += target.seconds
    touched = {"ON-11"}
    if result.figures.get("has_biases"):
        touched.add("NXD-03")
    kv_heads = variant(job.configuration["variant"]).config().num_key_value_heads
    if any(
        kv_size_multiplier(kv_heads, t) > 1 for t in (a, b)
    ) and "gqa" in source.attention + result.figures.get("target_attention", []):
        touched.add("NXD-11")  # from_config: K/V replicas in TRN1's tile layout (TRN2 repeats rows instead)
    result.deviations = sorted(touched)
    result.status = Status.FAIL if result.reasons else Status.PASS
    return result
