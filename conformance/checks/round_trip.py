"""Round trip (DESIGN §5): transformers checkpoint -> `from_pretrained` at TP=T -> `save_pretrained` ->
the host's consolidation == the original state dict, bit for bit, with the same keys.

For each configuration (`{"variant": "llama/gqa", "tp_size": 2, "fuse_qkv": False}`) the package's
`<X>ForCausalLM.from_pretrained(checkpoint, TrainingNeuronConfig(tensor_parallel_size=T, fuse_qkv=...),
output_loading_info=True)` runs on T ranks; every rank calls `save_pretrained` (shards plus the metadata
that drives consolidation); rank 0 consolidates with the host's `checkpointing` and compares with the
tensors transformers wrote. Tied weights need no special case: transformers writes the tied tensor once
and the host consolidates the model's parameters, which hold it once too.

Nothing in the trip does arithmetic (loading slices, saving copies, consolidation concatenates), so any
difference, even one ulp, is a fault. Reasons name the tensors and the likely cause: a missing key whose
module saved an unknown fused tensor (a spec missing from the module), a dropped bias, checkpoint keys
`from_pretrained` left unused or parameters it had to initialise. Configurations of one T run in one
launcher call.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from conformance.results import CheckResult, Status
from reference_models import build, variant

from . import RunSettings
from ._checkpoint_io import (
    consolidate,
    diff_state_dicts,
    explain,
    loading_reasons,
    original_state_dict,
    save_on_every_rank,
)
from .batching import each_job_on_rank, run_by_tp_size, split_unbuildable
from .rank_errors import describe, first_line, first_rank_error

CHECK = "round_trip"
TOLERANCE = (
    "bit for bit (same keys, dtypes, shapes, torch.equal values): loading slices the checkpoint, saving "
    "copies the shards and consolidation concatenates them; no step does arithmetic, so any difference "
    "is a wrong slice, order or name."
)


@dataclass(frozen=True)
class _Job:
    index: int
    configuration: dict[str, Any]
    tp_size: int
    fuse_qkv: bool
    checkpoint: str
    workdir: str


def run(
    package_dir: Path, configurations: Sequence[Mapping[str, Any]], settings: RunSettings
) -> list[CheckResult]:
    """One `CheckResult` per configuration, in order (see the module docstring)."""
    results, buildable = split_unbuildable(
        CHECK, configurations, TOLERANCE, lambda configuration: [int(configuration["tp_size"])]
    )
    with tempfile.TemporaryDirectory(prefix="round-trip-") as scratch:
        jobs = [
            _Job(
                index=index,
                configuration=configuration,
                tp_size=int(configuration["tp_size"]),
                fuse_qkv=bool(configuration.get("fuse_qkv", False)),
                checkpoint=str(build(entry, settings.cache_dir)),
                workdir=str(Path(scratch) / f"case-{index}"),
            )
            for index, configuration, entry in buildable
        ]
        found = run_by_tp_size(
            _run_on_rank, package_dir, jobs, lambda job: job.tp_size, _call_failed, settings
        )
        for job, (result, _) in zip(jobs, found):
            results[job.index] = result
    return [results[index] for index in range(len(configurations))]


def _call_failed(job: _Job, failure: Exception, seconds: float) -> CheckResult:
    return _failed(job, f"the rank call failed: {failure}", str(failure), seconds)


def _failed(job: _Job, reason: str, trace: str | None, seconds: float = 0.0) -> CheckResult:
    return CheckResult(
        CHECK,
        job.configuration,
        Status.FAIL,
        reasons=[first_line(reason)],
        tolerance=TOLERANCE,
        deviations=["ON-11"],
        seconds=seconds,
        traceback=trace,
    )


# --- on the ranks -------------------------------------------------------------------------------------


def _run_on_rank(model_dir: str, jobs: list[_Job]) -> list[CheckResult] | None:
    """Every job on this rank; rank 0 returns the results, the others None."""
    return each_job_on_rank(model_dir, jobs, _round_trip, _mount_failed)


def _mount_failed(job: _Job, error: str) -> CheckResult:
    return _failed(job, f"mounting the package failed: {error}", error)


def _deviations(attention: list[str], fuse_qkv: bool, variant_key: str) -> list[str]:
    """ON-11 (shard format) always; the GQA layer's deviations where this case reached it."""
    touched = {"ON-11"}
    if "gqa" in attention:
        if fuse_qkv:
            touched.add("NXD-10")
        if variant(variant_key).has_attention_biases():
            touched.update({"NXD-09", "ON-10"})
    return sorted(touched)


def _round_trip(package: ModuleType, job: _Job) -> CheckResult | None:
    """Load, save (every rank), consolidate and compare (rank 0). Every rank takes the same branches."""
    import torch.distributed as dist
    from neuronx_distributed.parallel_layers import parallel_state

    from conformance.backends import active
    from conformance.model_package import causal_lm_class

    from .parity import attention_layouts

    start = time.perf_counter()
    host = active()
    # NxD keeps one kv-shared group size per process; each case builds a new model.
    parallel_state.destroy_kv_group()
    model = None
    info: dict[str, Any] = {}
    attention: list[str] = []
    error = None
    try:
        trn_config = host.host_module("config").TrainingNeuronConfig(
            tensor_parallel_size=job.tp_size, fuse_qkv=job.fuse_qkv
        )
        model_cls = causal_lm_class(package, job.checkpoint)
        model, info = model_cls.from_pretrained(
            job.checkpoint, trn_config, dtype=torch.float32, output_loading_info=True
        )
        attention = sorted(set(attention_layouts(model).values()))
    except Exception as exc:
        error = describe(exc)
    if (error := first_rank_error(error)) is not None:
        result = _failed(job, f"from_pretrained at T={job.tp_size} failed: {error}", error)
        result.seconds = time.perf_counter() - start
        return result if dist.get_rank() == 0 else None

    assert model is not None
    error = save_on_every_rank(model, Path(job.workdir))
    del model
    if error is not None:
        result = _failed(job, f"save_pretrained at T={job.tp_size} failed: {error}", error)
        result.seconds = time.perf_counter() - start
        return result if dist.get_rank() == 0 else None
    if dist.get_rank() != 0:
        return None
    return _judge(job, info, attention, start)


def _judge(job: _Job, info: dict[str, Any], attention: list[str], start: float) -> CheckResult:
    """Rank 0: consolidate what was saved and compare it with the checkpoint transformers wrote."""
    original = original_state_dict(Path(job.checkpoint))
    result = CheckResult(
        CHECK,
        job.configuration,
        Status.FAIL,
        tolerance=TOLERANCE,
        deviations=_deviations(attention, job.fuse_qkv, str(job.configuration["variant"])),
    )
    result.figures["attention"] = attention
    result.figures["load_missing_keys"] = sorted(info.get("missing_keys", []))
    result.figures["load_unexpected_keys"] = sorted(info.get("unexpected_keys", []))
    if result.figures["load_missing_keys"]:
        result.deviations = sorted({*result.deviations, "ON-13"})
    result.reasons += loading_reasons(info, Path(job.checkpoint).name)
    try:
        consolidated, metadata = consolidate(Path(job.workdir))
    except Exception as exc:
        error = describe(exc)
        result.reasons.append(f"consolidating the saved checkpoint failed: {error.splitlines()[0]}")
        result.traceback = error
    else:
        diff = diff_state_dicts(consolidated, original)
        result.figures.update(diff.figures())
        result.reasons += explain(diff, metadata)
    result.status = Status.FAIL if result.reasons else Status.PASS
    result.seconds = time.perf_counter() - start
    return result
