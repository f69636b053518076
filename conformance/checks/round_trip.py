"""Round trip (DESIGN §5): transformers checkpoint -> `from_pretrained` at TP=T -> `save_pretrained` ->
the host's consolidation == the original state dict, bit for bit, with the same keys.

For each configuration (variant, T, `fuse_qkv`) the package's `<X>ForCausalLM.from_pretrained(checkpoint,
TrainingNeuronConfig(tensor_parallel_size=T, fuse_qkv=...), output_loading_info=True)` runs on T ranks;
every rank calls `save_pretrained` (shards plus the metadata that drives consolidation); rank 0
consolidates with the host's `checkpointing` and compares with the tensors transformers wrote. Tied
weights need no special case: transformers writes the tied tensor once and the host consolidates the
model's parameters, which hold it once too.

Mixture-of-experts models also run at an expert-parallel size EP > 1 (T x EP ranks): each (EP, TP) rank
saves its own shard file and the consolidation puts the experts of every EP rank back together (the
reference host's EP checkpoints, ON-17).

Nothing in the trip does arithmetic (loading slices, saving copies, consolidation concatenates), so any
difference, even one ulp, is a fault. Reasons name the tensors and the likely cause: a missing key whose
module saved an unknown fused tensor (a spec missing from the module), a dropped bias, checkpoint keys
`from_pretrained` left unused or parameters it had to initialise. Configurations of one T run in one
launcher call.

Persistent buffers are the one exception to "same keys" (`comparisons.dropped_buffers`): optimum-neuron
0.4.5's consolidation writes parameters only, and the kit's host mirrors it, so a model with persistent
buffers (transformers' xIELU `beta` and `eps`) gets a consolidated checkpoint without them on Trainium as
here. When each dropped buffer holds the value transformers' constructor gives it (what a loader keeps for
a missing buffer), the row is a WARN naming the buffers and the host defect; otherwise a FAIL.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, ClassVar

from conformance.comparisons.dropped_buffers import (
    DroppedBuffers,
    classify,
    constructor_buffers,
    persistent_buffer_names,
)
from conformance.comparisons.state_dicts import diff_state_dicts, explain, loading_reasons
from conformance.harness.protocol import Check, CheckConfig, Exercised, Verdict, Workspace
from conformance.harness.rank_steps import is_rank_zero, local_step
from conformance.model_runs.attention_layouts import attention_layouts
from conformance.model_runs.checkpoint_io import consolidate, original_state_dict, save_on_every_rank
from conformance.model_runs.parallel_model import load_parallel
from conformance.results import Status
from reference_models import variant

if TYPE_CHECKING:
    from conformance.profiles import ModelCatalogue

TOLERANCE = (
    "bit for bit (same keys, dtypes, shapes, torch.equal values): loading slices the checkpoint, saving "
    "copies the shards and consolidation concatenates them; no step does arithmetic, so any difference "
    "is a wrong slice, order or name."
)
CHECKED_TP_SIZES = (2, 4)


@dataclass(frozen=True)
class RoundTripConfig(CheckConfig):
    """A catalogue variant loaded and saved at a TP size, with or without `fuse_qkv`."""

    tp_size: int
    fuse_qkv: bool = False
    ep_size: int = 1
    """Expert parallelism (mixture-of-experts models): T x EP ranks, the experts split over EP."""

    HIDDEN_WHEN_DEFAULT: ClassVar[frozenset[str]] = frozenset({"ep_size"})

    def exercised(self) -> Exercised:
        return Exercised((self.tp_size,), (("fuse_qkv", self.fuse_qkv),), ep_sizes=(self.ep_size,))


@dataclass(frozen=True)
class RoundTripJob:
    config: RoundTripConfig
    checkpoint: str
    workdir: str

    @property
    def tp_size(self) -> int:
        return self.config.tp_size

    @property
    def ep_size(self) -> int:
        return self.config.ep_size


@dataclass
class RoundTripOutcome:
    """What rank 0 found: the layouts, the loading info, and the consolidated state dict's difference."""

    attention: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    diff_figures: dict[str, Any] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    dropped_buffers: DroppedBuffers = field(default_factory=DroppedBuffers)
    """Persistent buffers the host's consolidation left out (not counted as missing keys)."""


class RoundTrip(Check[RoundTripConfig, RoundTripJob, RoundTripOutcome | None]):
    name = "round_trip"
    order = 20
    config_type = RoundTripConfig
    tolerance = TOLERANCE
    key_figures = ("tensors_equal", "keys_compared", "keys_missing", "keys_extra", "max_abs_diff")

    def plan(self, profile: str, catalogue: ModelCatalogue) -> list[RoundTripConfig]:
        if profile == "quick":
            found = [RoundTripConfig(catalogue.base, 2)]
            if "tied" in catalogue.variants:
                found.append(RoundTripConfig(catalogue.key("tied"), 2))
            if catalogue.is_moe:
                found.append(RoundTripConfig(catalogue.base, 2, ep_size=2))
            return found
        found = [
            RoundTripConfig(entry.key, tp, entry.attention(tp, True) == "fused")
            for entry, tp in catalogue.buildable(CHECKED_TP_SIZES)
        ]
        if catalogue.is_moe:
            found += [RoundTripConfig(catalogue.base, tp, ep_size=2) for tp in (1, 2)]
        return found

    def prepare(self, config: RoundTripConfig, workspace: Workspace, index: int) -> RoundTripJob:
        return RoundTripJob(
            config, workspace.checkpoint(variant(config.variant)), str(workspace.folder(index) / "saved")
        )

    def on_rank(self, package: ModuleType, job: RoundTripJob) -> RoundTripOutcome | None:
        """Load, save (every rank), consolidate and compare (rank 0)."""
        model, _, info = load_parallel(package, job.checkpoint, job.tp_size, fuse_qkv=job.config.fuse_qkv)
        attention = sorted(set(attention_layouts(model).values()))
        buffers = persistent_buffer_names(model)
        save_on_every_rank(model, Path(job.workdir), job.tp_size, job.ep_size)
        del model
        if not is_rank_zero():
            return None
        outcome = RoundTripOutcome(attention=attention, info=dict(info))
        consolidated, metadata = local_step(
            "consolidating the saved checkpoint", lambda: consolidate(Path(job.workdir))
        )
        original = original_state_dict(Path(job.checkpoint))
        diff = diff_state_dicts(consolidated, original)
        dropped = sorted(set(diff.missing) & buffers)
        if dropped:
            diff.missing = [key for key in diff.missing if key not in dropped]
            outcome.dropped_buffers = classify(dropped, original, constructor_buffers(job.checkpoint))
        outcome.diff_figures = diff.figures()
        outcome.reasons = explain(diff, metadata)
        return outcome

    def judge(self, job: RoundTripJob, value: RoundTripOutcome | None) -> Verdict:
        assert value is not None
        figures: dict[str, Any] = {
            "attention": value.attention,
            "load_missing_keys": sorted(value.info.get("missing_keys", [])),
            "load_unexpected_keys": sorted(value.info.get("unexpected_keys", [])),
            **value.diff_figures,
        }
        dropped = value.dropped_buffers
        if dropped.names:
            figures["buffers_dropped_by_consolidation"] = dropped.names
        reasons = loading_reasons(value.info, Path(job.checkpoint).name) + value.reasons
        reasons += dropped.failures()
        warning = dropped.warning()
        if warning is None:
            return Verdict(figures=figures, reasons=reasons)
        if reasons:
            return Verdict(figures=figures, reasons=[*reasons, warning])
        return Verdict(figures=figures, reasons=[warning], status=Status.WARN)


CHECK = RoundTrip()
