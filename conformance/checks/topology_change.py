"""Topology change (DESIGN §5): saved at one TP size, consolidated, loaded at another: the same logits.

For each configuration (variant, source size a, target size b):

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

Mixture-of-experts models also change the expert-parallel size (EP, T x EP ranks, each EP rank feeding its
own rows of the batch): the experts saved from EP=a' ranks must load onto EP=b' ranks. Step 4 then applies
only when EP does not change: NxD's seeded build draws, on every EP rank from the same RNG state, the E/EP
experts that rank holds, so at EP=2 experts j and j + E/2 start equal, and the same seed gives another model
at EP=1 by design (`init_compared` false, and why, in the figures). Steps 1-3 compare what is meaningful
across EP. A seeded init has no routing margin guarantee (the catalogue's checkpoints have, `routing`): the
figures give transformers' router margin on the consolidated checkpoint, and a logits difference with a
margin under `MIN_ROUTER_MARGIN` says it may be a near-tie. Tokens whose router input is zero (the seeded
padding embedding is zero, and left padding attends to padding only) tie every expert but route nothing
(bias-free experts map zero to zero): they are left out of the margin, which would else read 0.

Persistent buffers (transformers' xIELU `beta` and `eps`) do not reach the consolidated checkpoint: the
host's consolidation writes parameters only (optimum-neuron 0.4.5, mirrored by the kit's host;
`comparisons.dropped_buffers`). Both loaders then report them missing and keep their constructor's values:
when those are the T=a model's, the row is a WARN naming the buffers (the logits comparisons still decide
whether the reloaded models are the same), otherwise a FAIL.

The seeded model keeps the dtypes its modules choose, as the host's `from_config` does: a parameter that
the source creates in bf16 inside an fp32 model (xIELU's alpha_p/alpha_n) computes in bf16 in transformers
too, and casting the whole model to fp32 would give it other logits than the checkpoint it saves.

Configurations are batched: one launcher call per source (T, EP), then one per target (T, EP).
"""

from __future__ import annotations

import functools
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from conformance.comparisons.bound_text import number
from conformance.comparisons.dropped_buffers import classify, constructor_buffers, persistent_buffer_names
from conformance.comparisons.state_dicts import bias_keys, diff_state_dicts, explain, loading_reasons, names
from conformance.harness.dispatch import run_jobs
from conformance.harness.protocol import (
    Check,
    CheckConfig,
    Exercised,
    RankReport,
    Verdict,
    Workspace,
    size_label,
)
from conformance.harness.rank_steps import is_rank_zero, local_step, rank_step
from conformance.model_runs.attention_layouts import attention_layouts
from conformance.model_runs.checkpoint_io import consolidate, original_state_dict, save_on_every_rank
from conformance.model_runs.fixed_batch import checkpoint_batch
from conformance.model_runs.logits import batch_logits
from conformance.model_runs.parallel_model import load_parallel, training_config
from conformance.results import CheckResult, Status
from reference_models import variant
from reference_models.routing import MIN_ROUTER_MARGIN, layer_margins, transformers_router_logits

if TYPE_CHECKING:
    from conformance.checks import RunSettings
    from conformance.profiles import ModelCatalogue

SEED = 0
LOGITS_RTOL = 1e-5
LOGITS_ATOL = 1e-7
TOLERANCE = (
    f"logits: max |Δ| <= {number(LOGITS_RTOL)} * max |reference logits| + {number(LOGITS_ATOL)}, fp32 on every side. "
    "The same weights at another T (or in transformers) only reorder sums (row-parallel all-reduce, "
    "vocab-parallel gather): a few ulps of the logits' scale, which a random init keeps small (max |logits| "
    "0.5-1.3), hence a relative bound. Measured on llama gqa/mqa/tied/features, 2->1 and 1->2: max |Δ| "
    "<= 2.4e-7, <= 4e-7 of max |logits| (25x margin); a sharding fault is O(1) relative. Checkpoint and "
    "seeded init: bit for bit (no arithmetic)."
)
FULL_PAIRS = ((1, 2), (2, 1), (4, 8), (8, 4), (2, 4), (8, 2))
MOE_PAIRS = ((1, 2), (2, 1), (2, 4), (4, 2))
MOE_EP_CHANGES = ((1, 2, 2, 1), (2, 1, 1, 2), (2, 2, 2, 2), (2, 4, 2, 1))
"""(source T, target T, source EP, target EP): EP changed both ways, EP kept (the seeded init compared), and
EP with another T."""


@dataclass(frozen=True)
class TopologyConfig(CheckConfig):
    """A catalogue variant saved at `source_tp_size` and loaded at `tp_size`."""

    source_tp_size: int
    tp_size: int
    source_ep_size: int = 1
    ep_size: int = 1
    """Expert parallelism on each side (mixture-of-experts models)."""

    HIDDEN_WHEN_DEFAULT: ClassVar[frozenset[str]] = frozenset({"source_ep_size", "ep_size"})

    @property
    def tp_sizes(self) -> tuple[int, ...]:
        return (self.source_tp_size, self.tp_size)

    @property
    def parallel_sizes(self) -> tuple[tuple[int, int], ...]:
        return ((self.source_tp_size, self.source_ep_size), (self.tp_size, self.ep_size))

    def exercised(self) -> Exercised:
        return Exercised(self.tp_sizes, ep_sizes=self.ep_sizes)


@dataclass(frozen=True)
class SourceJob:
    """T=a: seeded init, logits, save and consolidate into `consolidated`."""

    config: TopologyConfig
    checkpoint: str
    """The catalogue checkpoint: its config and the class it names (its weights are not used)."""
    workdir: str
    vocab_size: int

    @property
    def tp_size(self) -> int:
        return self.config.source_tp_size

    @property
    def ep_size(self) -> int:
        return self.config.source_ep_size

    @property
    def consolidated(self) -> str:
        return str(Path(self.workdir) / "consolidated")


@dataclass(frozen=True)
class TargetJob:
    """T=b: load the consolidated checkpoint, its logits; the seeded init at T=b against the T=a one."""

    source: SourceJob

    @property
    def tp_size(self) -> int:
        return self.source.config.tp_size

    @property
    def ep_size(self) -> int:
        return self.source.config.ep_size


@dataclass
class SideOutcome:
    """What one side measured (rank 0)."""

    logits: torch.Tensor | None = None
    attention: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    init_reasons: list[str] = field(default_factory=list)
    """Why the seeded init at T=b differs from the one at T=a (target side only; judged with the layouts)."""
    dropped_buffers: dict[str, torch.Tensor] = field(default_factory=dict)
    """Source side: the model's persistent buffers that the consolidated checkpoint lacks, with their
    values."""


@dataclass
class TopologyOutcome:
    """Both sides and transformers' logits on the consolidated checkpoint."""

    source: SideOutcome
    transformers_logits: torch.Tensor | None
    transformers_reasons: list[str]
    target: SideOutcome
    router_margin: float | None = None
    """transformers' router margin on the consolidated checkpoint (mixture of experts), else None."""


class TopologyChange(Check[TopologyConfig, Any, Any]):
    name = "topology_change"
    order = 30
    config_type = TopologyConfig
    tolerance = TOLERANCE
    key_figures = (
        "transformers_logits_max_abs_diff",
        "target_logits_max_abs_diff",
        "logits_bound",
        "init_tensors_differing",
    )

    def plan(self, profile: str, catalogue: ModelCatalogue) -> list[TopologyConfig]:
        base = catalogue.base
        if profile == "quick":
            found = [TopologyConfig(base, 2, 1)]
            if catalogue.is_moe:
                found.append(TopologyConfig(base, 1, 2, source_ep_size=2))
            return found
        if catalogue.is_moe:
            return [TopologyConfig(base, source, target) for source, target in MOE_PAIRS] + [
                TopologyConfig(base, *sizes) for sizes in MOE_EP_CHANGES
            ]
        return [TopologyConfig(base, source, target) for source, target in FULL_PAIRS]

    def prepare(self, config: TopologyConfig, workspace: Workspace, index: int) -> SourceJob:
        entry = variant(config.variant)
        return SourceJob(
            config, workspace.checkpoint(entry), str(workspace.folder(index)), entry.config().vocab_size
        )

    def on_rank(self, package: ModuleType, job: SourceJob | TargetJob) -> SideOutcome | None:
        if isinstance(job, TargetJob):
            return _target(package, job.source)
        return _source(package, job)

    def run(
        self, package_dir: Path, configs: Sequence[TopologyConfig], settings: RunSettings
    ) -> list[CheckResult]:
        """Source sizes first (one call each), transformers on each consolidated checkpoint here, then the
        target sizes of the jobs whose source side completed."""
        with tempfile.TemporaryDirectory(prefix=f"{self.name}-") as scratch:
            results, jobs = self.prepare_all(configs, Workspace(settings, Path(scratch)))
            sources = run_jobs(self, package_dir, [job for _, _, job in jobs], settings)
            ready = [position for position, report in enumerate(sources) if report.error is None]
            references = {position: _transformers_run(jobs[position][2]) for position in ready}
            target_reports = run_jobs(self, package_dir, [TargetJob(jobs[p][2]) for p in ready], settings)
            targets = dict(zip(ready, target_reports))
            for position, (index, config, job) in enumerate(jobs):
                report = _combined(sources[position], references.get(position), targets.get(position))
                results[index] = self.finish(config, job, report, settings)
        return [results[index] for index in range(len(configs))]

    def judge(self, job: SourceJob, value: TopologyOutcome) -> Verdict:
        config = job.config
        a, b = (
            size_label(config.source_tp_size, config.source_ep_size),
            size_label(config.tp_size, config.ep_size),
        )
        source, target = value.source, value.target
        figures: dict[str, Any] = {"source_attention": source.attention}
        dropped = set(source.dropped_buffers)
        reasons: list[str] = list(value.transformers_reasons)
        notes: list[str] = []
        if value.router_margin is not None:
            figures["router_margin"] = value.router_margin
        assert source.logits is not None
        figures["max_abs_logits"] = float(source.logits.abs().max())
        reasons += _logits_reason(
            "transformers'",
            value.transformers_logits,
            source.logits,
            figures,
            "transformers_logits_max_abs_diff",
        )
        figures["target_attention"] = target.attention
        figures.update(target.figures)
        info = {kind: keys for kind, keys in target.info.items() if kind != "missing_keys"}
        info["missing_keys"] = [key for key in target.info.get("missing_keys", []) if key not in dropped]
        reasons += [f"{b}: {reason}" for reason in loading_reasons(info, f"the {a} consolidated checkpoint")]
        if config.source_ep_size != config.ep_size:
            figures["init_compared"] = False
            figures["init_not_compared"] = (
                "EP changes: NxD's seeded build draws each EP rank's E/EP experts from the same RNG state, so "
                "the same seed gives another model at another EP"
            )
        elif target.attention == source.attention and "gqa" not in source.attention:
            reasons += [f"{b}: {reason}" for reason in target.init_reasons]
            figures["init_compared"] = True
        else:
            # A seeded init is one model at every T only while no GQA layer is involved: the GQA spec
            # reorders Q heads (and o_proj's columns) by the kv-size multiplier, which changes with T.
            figures["init_compared"] = False
        reasons += _logits_reason(f"{b}", target.logits, source.logits, figures, "target_logits_max_abs_diff")
        if reasons and value.router_margin is not None and value.router_margin < MIN_ROUTER_MARGIN:
            notes.append(
                f"the seeded init's router has a near-tie on the batch (transformers' margin {value.router_margin:.3g} "
                f"< {MIN_ROUTER_MARGIN:g}): a logits difference may be a token taking another expert after a "
                "reordering of sums"
            )
        if not dropped:
            return Verdict(figures=figures, reasons=reasons, notes=notes)
        figures["buffers_dropped_by_consolidation"] = sorted(dropped)
        buffers = classify(dropped, source.dropped_buffers, constructor_buffers(job.checkpoint))
        reasons += buffers.failures()
        warning = buffers.warning()
        if warning is None:
            return Verdict(figures=figures, reasons=reasons, notes=notes)
        if reasons:
            return Verdict(figures=figures, reasons=[*reasons, warning], notes=notes)
        return Verdict(figures=figures, reasons=[warning], notes=notes, status=Status.WARN)


CHECK = TopologyChange()


@dataclass
class TransformersRun:
    """transformers on the consolidated checkpoint: its logits, the reasons it gave, its router margin."""

    logits: torch.Tensor | None
    reasons: list[str]
    seconds: float
    router_margin: float | None = None
    missing_keys: list[str] = field(default_factory=list)
    unexpected_keys: list[str] = field(default_factory=list)


def _combined(source: RankReport, reference: TransformersRun | None, target: RankReport | None) -> RankReport:
    """Both rounds as one report: the first error, every deviation, the seconds of both and of transformers."""
    seconds = source.seconds + (reference.seconds if reference else 0.0) + (target.seconds if target else 0.0)
    deviations = tuple(sorted(set(source.deviations) | set(target.deviations if target else ())))
    error = source.error or (target.error if target else None)
    if error is not None or target is None or reference is None:
        return RankReport(None, error, deviations, seconds)
    dropped = set(source.value.dropped_buffers) if source.value is not None else set()
    reasons = list(reference.reasons)
    for kind, found in (
        ("missing_keys", reference.missing_keys),
        ("unexpected_keys", reference.unexpected_keys),
    ):
        found = [key for key in found if key not in dropped]
        if found:
            reasons.append(f"transformers loading the consolidated checkpoint reports {kind}: {names(found)}")
    outcome = TopologyOutcome(source.value, reference.logits, reasons, target.value, reference.router_margin)
    return RankReport(outcome, None, deviations, seconds)


# --- on the ranks -------------------------------------------------------------------------------------


def _seeded_model(package: ModuleType, job: SourceJob, tp_size: int, ep_size: int = 1) -> torch.nn.Module:
    """The package's causal LM built from the checkpoint's config at `tp_size` (the launcher built the
    `ep_size` groups), seeded: a random init."""
    from neuronx_distributed.parallel_layers import parallel_state
    from transformers import AutoConfig

    from conformance.model_package import causal_lm_class

    def build() -> torch.nn.Module:
        parallel_state.destroy_kv_group()
        trn_config = training_config(tp_size)
        config = AutoConfig.from_pretrained(job.checkpoint, attn_implementation="eager")
        model_cls = causal_lm_class(package, job.checkpoint)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(SEED)
            model = model_cls(config, trn_config)
        return model.eval()

    return rank_step(f"building from config at {size_label(tp_size, ep_size)}", build, construction=True)


def _source(package: ModuleType, job: SourceJob) -> SideOutcome | None:
    """T=a: seeded init, logits, save; rank 0 consolidates into a transformers checkpoint folder."""
    from conformance.backends import active

    a, ea = job.config.source_tp_size, job.config.source_ep_size
    model = _seeded_model(package, job, a, ea)
    buffers = persistent_buffer_names(model)
    outcome = SideOutcome(attention=sorted(set(attention_layouts(model).values())))
    outcome.logits = rank_step(
        f"the forward at {size_label(a, ea)}",
        functools.partial(batch_logits, model, checkpoint_batch(job.checkpoint), job.vocab_size),
    )
    saved = Path(job.workdir) / "source"
    save_on_every_rank(model, saved, a, ea)
    if not is_rank_zero():
        return None

    def consolidate_source() -> None:
        checkpointing = active().host_module("checkpointing")
        checkpointing.consolidate_model_parallel_checkpoints_to_unified_checkpoint(saved, job.consolidated)
        shutil.copy(saved / "config.json", Path(job.consolidated) / "config.json")

    local_step(f"consolidating the {size_label(a, ea)} checkpoint", consolidate_source)
    consolidated = original_state_dict(Path(job.consolidated))
    state = model.state_dict()
    outcome.dropped_buffers = {
        name: state[name].detach().clone() for name in sorted(buffers) if name not in consolidated
    }
    return outcome


def _target(package: ModuleType, job: SourceJob) -> SideOutcome | None:
    """T=b: from_pretrained of the consolidated checkpoint and its logits; the seeded init at T=b against
    the T=a checkpoint (rank 0)."""
    from conformance.backends import active

    b, eb = job.config.tp_size, job.config.ep_size
    model, _, info = load_parallel(package, job.consolidated, b)
    outcome = SideOutcome(attention=sorted(set(attention_layouts(model).values())), info=dict(info))
    outcome.logits = rank_step(
        f"the forward at {size_label(b, eb)}",
        functools.partial(batch_logits, model, checkpoint_batch(job.checkpoint), job.vocab_size),
    )
    del model
    if eb != job.config.source_ep_size:
        return outcome if is_rank_zero() else None  # another EP draws another model (see the docstring)
    init = _seeded_model(package, job, b, eb)
    saved = Path(job.workdir) / "target-init"
    save_on_every_rank(init, saved, b, eb)
    if not is_rank_zero():
        return None

    def compare_init() -> None:
        state_dict, metadata = consolidate(saved)
        expected = original_state_dict(Path(job.consolidated))
        if active().name != "reference":
            # Released NxD draws column-parallel biases per rank (NXD-03): only weights are one model there.
            state_dict, expected = _weights_only(state_dict), _weights_only(expected)
        diff = diff_state_dicts(state_dict, expected)
        outcome.figures["init_tensors_compared"] = diff.compared
        outcome.figures["init_tensors_differing"] = dict(diff.differing)
        outcome.figures["has_biases"] = bias_keys(state_dict)
        outcome.init_reasons = _init_reasons(job, diff, metadata)

    local_step(f"consolidating the {size_label(b, eb)} init", compare_init)
    return outcome


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


def _init_reasons(job: SourceJob, diff: Any, metadata: dict[str, Any]) -> list[str]:
    """The T=b seeded init against the T=a one (the consolidated checkpoint)."""
    if diff.identical:
        return []
    a, b = job.config.source_tp_size, job.config.tp_size
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


def _transformers_run(job: SourceJob) -> TransformersRun:
    """transformers' model on the consolidated checkpoint (eager, fp32): its logits, reasons, seconds, and
    for a mixture of experts its router margin on the batch."""
    from transformers import AutoModelForCausalLM

    start = time.perf_counter()
    reasons: list[str] = []
    logits = None
    margin = None
    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            job.consolidated, attn_implementation="eager", dtype=torch.float32, output_loading_info=True
        )
        with torch.no_grad():
            inputs = checkpoint_batch(job.checkpoint).reference_inputs(honours_padding=False, labels=False)
            logits = model.eval()(**inputs).logits.float()
            if getattr(model.config, "num_experts_per_tok", None):
                router_logits = transformers_router_logits(model, inputs)
                margin = min(
                    layer_margins(router_logits, model.config.num_experts_per_tok, skip_zero_inputs=True)
                )
        missing, unexpected = sorted(info.get("missing_keys", [])), sorted(info.get("unexpected_keys", []))
    except Exception as exc:
        reasons.append(
            f"transformers could not load the consolidated checkpoint: {type(exc).__name__}: {exc}"
        )
        missing, unexpected = [], []
    return TransformersRun(logits, reasons, time.perf_counter() - start, margin, missing, unexpected)


def _logits_reason(
    what: str, logits: torch.Tensor | None, expected: torch.Tensor, figures: dict[str, Any], key: str
) -> list[str]:
    if logits is None:
        return []
    if logits.shape != expected.shape:
        return [f"{what} logits have shape {tuple(logits.shape)}, the T=a model's {tuple(expected.shape)}"]
    delta = float((logits - expected).abs().max())
    bound = logits_bound(expected)
    figures[key] = delta
    figures["logits_bound"] = bound
    if delta > bound:
        return [f"{what} logits differ from the T=a model's: max |Δ| {delta:.3g} > {bound:.3g}"]
    return []


def logits_bound(reference: torch.Tensor) -> float:
    """The bound on max |Δ logits|: relative to the reference logits' scale."""
    return LOGITS_RTOL * float(reference.abs().max()) + LOGITS_ATOL
