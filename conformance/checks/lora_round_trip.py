"""LoRA round trip: a PEFT adapter loads, saves and consolidates with the host's documented semantics.

For each configuration (`{"variant": "llama/gqa", "tp_size": 2, "fuse_qkv": False}`):

1. Here, with the `peft` library: a deterministic LoRA adapter on the catalogue checkpoint (seeded values,
   lora_B non-zero, rank `LORA_RANK`, every attention and MLP projection targeted), saved as PEFT does
   (`adapter_model.safetensors`, `adapter_config.json`).
2. On T ranks, through the active backend: the package's causal LM `from_pretrained`, the adapter applied
   with the host's `get_peft_model` and loaded with `load_adapter` (through the transformation specs),
   logits on a fixed batch gathered over TP, the adapter saved (`save_pretrained`, sharded) and, on rank 0,
   consolidated by the host's `consolidate_model_parallel_checkpoints_to_unified_checkpoint`.
3. Here: the consolidated adapter against the original one and against transformers.
   - The same keys, and the saved `adapter_config.json` names the original target modules.
   - Every lora_B and every lora_A outside a fused group comes back bit for bit.
   - The lora_A of a fused group (gate/up always, as DESIGN §3 makes every gated MLP fuse them; q/k/v
     when the attention layout is the fused `qkv_proj` or the GQA layer) is the mean of the group's
     original lora_A (training semantics §2.5(c), §2.6(c), §8.6: loading averages them, consolidation
     copies the average back to each linear).
   - transformers' `PeftModel` with the consolidated adapter gives the parallel model's logits: the
     parallel model ran with the averaged lora_A, which is exactly what the consolidated adapter holds.

The expected fused groups come from the generated-model contract and the catalogue's attention layout,
not from the model's own specs, so a model that drops or renames a fusion spec is caught.
"""

from __future__ import annotations

import importlib
import re
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from conformance.results import CheckResult, Status

from . import RunSettings
from ._checkpoint_io import gathered_logits
from .batching import each_job_on_rank, run_by_tp_size
from .rank_errors import describe, first_rank_error

CHECK = "lora_round_trip"
LORA_RANK = 4
LORA_ALPHA = 8
ADAPTER_SEED = 0
ADAPTER_SCALE = 0.1
TARGET_MODULES = ("down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj")
MLP_GROUP = ("gate_proj", "up_proj")
QKV_GROUP = ("q_proj", "k_proj", "v_proj")
ADAPTER_FILE = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
LISTED = 6  # names listed in a reason before "... and N more"


@dataclass(frozen=True)
class Tolerances:
    """Bounds of the comparisons, with the reason for each (kept in every result)."""

    logits_atol: float = 1e-5
    mean_ulps: float = 4.0
    reason: str = (
        "Adapter tensors: lora_B and unfused lora_A are only sliced, permuted and concatenated on the way "
        "through the ranks, so they must come back bit for bit. A fused lora_A is the mean of 2 or 3 fp32 "
        "tensors; summed in another order it may differ by an ulp, so it is bounded by 4 ulps of its "
        "magnitude (4 * eps32 * max |mean|). Logits: fp32 on both sides with the same (consolidated) "
        "adapter; the parallel model only reorders sums (row-parallel all-reduce, vocab-parallel "
        "logits), a few ulps, as in parity: absolute 1e-5."
    )

    def mean_bound(self, expected: torch.Tensor) -> float:
        return self.mean_ulps * torch.finfo(torch.float32).eps * float(expected.abs().max())


FP32 = Tolerances()
TOLERANCE = FP32.reason


@dataclass(frozen=True)
class _Job:
    configuration: dict[str, Any]
    variant: str
    tp_size: int
    fuse_qkv: bool
    checkpoint: str
    adapter_dir: str
    work_dir: str
    vocab_size: int
    attention: str | None

    @property
    def saved_dir(self) -> str:
        return str(Path(self.work_dir) / "saved")

    @property
    def consolidated_dir(self) -> str:
        return str(Path(self.work_dir) / "consolidated")


# --- entry point ----------------------------------------------------------------------------------------


def run(
    package_dir: Path, configurations: Sequence[Mapping[str, Any]], settings: RunSettings
) -> list[CheckResult]:
    """One `CheckResult` per configuration, in order; the configurations of one TP size share a rank call."""
    with tempfile.TemporaryDirectory(prefix="lora-round-trip-") as scratch:
        jobs = [
            _job(dict(cfg), Path(scratch) / f"case-{i}", settings) for i, cfg in enumerate(configurations)
        ]
        found = run_by_tp_size(
            _run_jobs_on_rank, package_dir, jobs, lambda job: job.tp_size, _call_failed, settings
        )
        return [_judge(job, output, FP32, seconds) for job, (output, seconds) in zip(jobs, found)]


def _call_failed(job: _Job, failure: Exception, seconds: float) -> dict[str, Any]:
    return {"error": f"the rank call failed: {failure}", "seconds": 0.0}


# --- the adapter and the jobs (this process) -----------------------------------------------------------


def make_adapter(checkpoint: str | Path, out_dir: str | Path, seed: int = ADAPTER_SEED) -> Path:
    """A PEFT LoRA adapter for the checkpoint, every value drawn from `seed` (lora_B non-zero), saved."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(checkpoint), dtype=torch.float32)
    config = LoraConfig(
        r=LORA_RANK,
        lora_alpha=LORA_ALPHA,
        lora_dropout=0.0,
        target_modules=list(TARGET_MODULES),
        task_type="CAUSAL_LM",
        init_lora_weights=False,
    )
    model = get_peft_model(base, config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in sorted(model.named_parameters()):
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * ADAPTER_SCALE)
    out_dir = Path(out_dir)
    model.save_pretrained(str(out_dir))
    return out_dir


def _job(configuration: dict[str, Any], work_dir: Path, settings: RunSettings) -> _Job:
    from reference_models import build, variant

    entry = variant(configuration["variant"])
    tp_size = int(configuration["tp_size"])
    fuse_qkv = bool(configuration.get("fuse_qkv", False))
    checkpoint = build(entry, settings.cache_dir)
    work_dir.mkdir(parents=True)
    adapter_dir = make_adapter(checkpoint, work_dir / "adapter")
    return _Job(
        configuration=configuration,
        variant=entry.key,
        tp_size=tp_size,
        fuse_qkv=fuse_qkv,
        checkpoint=str(checkpoint),
        adapter_dir=str(adapter_dir),
        work_dir=str(work_dir),
        vocab_size=entry.config().vocab_size,
        attention=entry.attention(tp_size, fuse_qkv),
    )


# --- on the ranks ---------------------------------------------------------------------------------------


def _run_jobs_on_rank(model_dir: str, jobs: list[_Job]) -> list[dict[str, Any]] | None:
    return each_job_on_rank(model_dir, jobs, _round_trip_job, _mount_failed)


def _mount_failed(job: _Job, error: str) -> dict[str, Any]:
    return {"error": f"mounting the package failed: {error}", "seconds": 0.0}


def _round_trip_job(package: Any, job: _Job) -> dict[str, Any]:
    """`_round_trip_on_rank` with its error (any rank's, exchanged) and seconds recorded in its output."""
    start = time.perf_counter()
    output: dict[str, Any] = {}
    error = None
    try:
        output = _round_trip_on_rank(package, job)
    except Exception as exc:
        error = describe(exc)
    output["error"] = first_rank_error(error)
    output["seconds"] = time.perf_counter() - start
    return output


def _round_trip_on_rank(package: Any, job: _Job) -> dict[str, Any]:
    """Load, apply the adapter, forward, save and (rank 0) consolidate; what rank 0 reports."""
    import torch.distributed as dist
    from neuronx_distributed.parallel_layers import parallel_state
    from peft import LoraConfig
    from peft.tuners.lora import LoraLayer

    from conformance.backends import active
    from conformance.model_package import causal_lm_class

    from .parity import attention_layouts, parity_batch

    host = active()
    parallel_state.destroy_kv_group()  # one kv-shared group size per process; each job builds a new model
    trn_config = host.host_module("config").TrainingNeuronConfig(
        tensor_parallel_size=job.tp_size, fuse_qkv=job.fuse_qkv
    )
    model_cls = causal_lm_class(package, job.checkpoint)
    model, info = model_cls.from_pretrained(
        job.checkpoint, trn_config, attn_implementation="eager", dtype=torch.float32, output_loading_info=True
    )
    attention = attention_layouts(model)  # before PEFT wraps the projections
    peft = importlib.import_module(host.peft_package)
    peft_model = peft.get_peft_model(model, LoraConfig.from_pretrained(job.adapter_dir))
    loaded = peft_model.load_adapter(job.adapter_dir, "default")
    peft_model.eval()
    logits = gathered_logits(peft_model, parity_batch(job.vocab_size)["input_ids"])
    lora_layers = {
        name: type(module).__name__
        for name, module in peft_model.named_modules()
        if isinstance(module, LoraLayer)
    }
    peft_model.save_pretrained(job.saved_dir)
    dist.barrier()
    if dist.get_rank() == 0:
        consolidate = host.host_module(
            "checkpointing"
        ).consolidate_model_parallel_checkpoints_to_unified_checkpoint
        consolidate(job.saved_dir, job.consolidated_dir, save_format="safetensors")
        shutil.copy(Path(job.saved_dir) / "adapter_default" / ADAPTER_CONFIG, Path(job.consolidated_dir))
    dist.barrier()
    return {
        "logits": logits,
        "attention": attention,
        "lora_layers": lora_layers,
        "base_missing_keys": list(info.get("missing_keys", [])),
        "base_unexpected_keys": list(info.get("unexpected_keys", [])),
        "adapter_missing_keys": list(loaded.missing_keys),
        "adapter_unexpected_keys": list(loaded.unexpected_keys),
    }


# --- judging (this process) ----------------------------------------------------------------------------


def _listed(names: Sequence[str]) -> str:
    names = sorted(names)
    shown = ", ".join(names[:LISTED])
    return shown + (f" ... and {len(names) - LISTED} more" if len(names) > LISTED else "")


def expected_fused_groups(keys: Sequence[str], attention: str | None) -> dict[str, list[str]]:
    """`{lora_A key: [the group's original lora_A keys, in fusion order]}` for every fused linear's lora_A.

    gate/up are fused in every gated MLP (DESIGN §3); q/k/v when the layout is "fused" or "gqa".
    """
    groups = [MLP_GROUP] + ([QKV_GROUP] if attention in ("fused", "gqa") else [])
    fused: dict[str, list[str]] = {}
    for key in keys:
        for group in groups:
            match = re.fullmatch(rf"(.*)\.({'|'.join(group)})\.lora_A\.(weight|bias)", key)
            if match:
                prefix, pn = match.group(1), match.group(3)
                fused[key] = [f"{prefix}.{linear}.lora_A.{pn}" for linear in group]
    return fused


def compare_adapters(
    original: Mapping[str, torch.Tensor],
    consolidated: Mapping[str, torch.Tensor],
    attention: str | None,
    tolerances: Tolerances = FP32,
) -> tuple[dict[str, Any], list[str]]:
    """Figures and reasons of the tensor comparison (keys, exact tensors, fused lora_A against the mean)."""
    reasons: list[str] = []
    missing = sorted(set(original) - set(consolidated))
    unexpected = sorted(set(consolidated) - set(original))
    if missing:
        reasons.append(f"{len(missing)} adapter key(s) missing after consolidation: {_listed(missing)}")
    if unexpected:
        reasons.append(
            f"{len(unexpected)} unexpected adapter key(s) after consolidation: {_listed(unexpected)}"
        )
    fused = expected_fused_groups(list(original), attention)
    worst = {"lora_B": 0.0, "lora_A": 0.0, "lora_A_fused_vs_mean": 0.0}
    lossy = 0.0
    differing: dict[str, list[str]] = {group: [] for group in worst}
    for key in sorted(set(original) & set(consolidated)):
        mine = consolidated[key]
        if key in fused and all(name in original for name in fused[key]):
            group = "lora_A_fused_vs_mean"
            expected = torch.mean(torch.stack([original[name] for name in fused[key]]), dim=0)
            bound = tolerances.mean_bound(expected)
        else:
            group = "lora_B" if ".lora_B." in key else "lora_A"
            expected, bound = original[key], 0.0
        if mine.shape != expected.shape or mine.dtype != expected.dtype:
            reasons.append(
                f"{key}: shape {tuple(mine.shape)} {mine.dtype}, expected {tuple(expected.shape)} {expected.dtype}"
            )
            continue
        delta = float((mine - expected).abs().max()) if mine.numel() else 0.0
        worst[group] = max(worst[group], delta)
        if group == "lora_A_fused_vs_mean":
            lossy = max(lossy, float((mine - original[key]).abs().max()))
        if delta > bound:
            differing[group].append(f"{key} (max |delta| {delta:.3g})")
    for group, names in differing.items():
        if names:
            what = "the mean of its group's original lora_A" if group.endswith("mean") else "the original"
            reasons.append(f"{len(names)} {group} tensor(s) differ from {what}: {_listed(names)}")
    figures: dict[str, Any] = {
        "keys_original": len(original),
        "keys_consolidated": len(consolidated),
        "keys_compared": len(set(original) & set(consolidated)),
        "fused_lora_A_keys": len(fused),
    }
    figures.update({f"{group}_max_abs_diff": value for group, value in worst.items()})
    figures["fused_lora_A_vs_original_max_abs_diff"] = lossy
    return figures, reasons


def _transformers_logits(job: _Job, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """transformers' logits: the base model, with the consolidated adapter, with the original adapter."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(
        job.checkpoint, attn_implementation="eager", dtype=torch.float32
    )
    base.eval()
    with torch.no_grad():
        found = {"base": base(input_ids=input_ids).logits}
        model = PeftModel.from_pretrained(base, job.consolidated_dir, adapter_name="consolidated")
        model.load_adapter(job.adapter_dir, adapter_name="original")
        model.eval()
        for name in ("consolidated", "original"):
            model.set_adapter(name)
            found[name] = model(input_ids=input_ids).logits
    return found


def _deviations(job: _Job) -> list[str]:
    from reference_models import variant

    touched = ["ON-11"]  # the adapter shards are plain torch.save files
    if job.attention == "gqa" and job.fuse_qkv:
        touched.append("ON-02")  # the fused GQA lora_B is loaded under its parameter's own name
    if job.attention == "gqa" and variant(str(job.configuration["variant"])).has_attention_biases():
        touched += ["NXD-09", "ON-10"]  # the GQA layer cannot hold q/k/v biases on Trainium
    return touched


def _judge(job: _Job, output: dict[str, Any], tolerances: Tolerances, call_seconds: float) -> CheckResult:
    start = time.perf_counter()
    result = CheckResult(
        check=CHECK,
        configuration=dict(job.configuration),
        status=Status.FAIL,
        tolerance=tolerances.reason,
        deviations=_deviations(job),
    )
    if output.get("error"):
        error = output["error"]
        result.reasons.append(f"the parallel model failed: {error.strip().splitlines()[0]}")
        result.traceback = error
        result.seconds = call_seconds
        return result
    try:
        _judge_completed(result, job, output, tolerances)
    except Exception as exc:  # a fault of the comparison itself, e.g. an unreadable consolidated file
        result.reasons.append(f"the comparison failed: {describe(exc).splitlines()[0]}")
        result.traceback = describe(exc)
    result.status = Status.FAIL if result.reasons else Status.PASS
    result.seconds = call_seconds + time.perf_counter() - start
    return result


def _judge_completed(result: CheckResult, job: _Job, output: dict[str, Any], tolerances: Tolerances) -> None:
    import json

    from safetensors.torch import load_file

    from .parity import parity_batch

    figures = result.figures
    figures["attention"] = sorted(set(output["attention"].values()))
    figures["expected_attention"] = job.attention
    classes = list(output["lora_layers"].values())
    figures["lora_layers"] = ", ".join(f"{cls} x{classes.count(cls)}" for cls in sorted(set(classes)))
    wrong_layout = {name: found for name, found in output["attention"].items() if found != job.attention}
    if wrong_layout:
        result.reasons.append(f"attention layout should be {job.attention!r}, got {wrong_layout}")
    for what, key in (("base checkpoint", "base"), ("adapter", "adapter")):
        missing, unexpected = output[f"{key}_missing_keys"], output[f"{key}_unexpected_keys"]
        if missing or unexpected:
            result.reasons.append(
                f"{what} keys not loaded on the ranks: missing [{_listed(missing)}], "
                f"unexpected [{_listed(unexpected)}]"
            )

    original = load_file(Path(job.adapter_dir) / ADAPTER_FILE)
    consolidated = load_file(Path(job.consolidated_dir) / ADAPTER_FILE)
    tensor_figures, reasons = compare_adapters(original, consolidated, job.attention, tolerances)
    figures.update(tensor_figures)
    result.reasons += reasons

    saved_targets = json.loads((Path(job.consolidated_dir) / ADAPTER_CONFIG).read_text())["target_modules"]
    figures["saved_target_modules"] = sorted(saved_targets)
    if sorted(saved_targets) != sorted(TARGET_MODULES):
        result.reasons.append(
            f"the saved adapter_config.json targets {sorted(saved_targets)}, the original adapter "
            f"{sorted(TARGET_MODULES)}"
        )

    input_ids = parity_batch(job.vocab_size)["input_ids"]
    reference = _transformers_logits(job, input_ids)
    logits = output["logits"]
    if logits.shape != reference["consolidated"].shape:
        result.reasons.append(
            f"gathered logits have shape {tuple(logits.shape)}, transformers' {tuple(reference['consolidated'].shape)}"
        )
        return
    figures["logits_max_abs_diff"] = float((logits - reference["consolidated"]).abs().max())
    figures["logits_vs_original_adapter_max_abs_diff"] = float((logits - reference["original"]).abs().max())
    effect = float((reference["consolidated"] - reference["base"]).abs().max())
    figures["adapter_effect_on_logits"] = effect
    if figures["logits_max_abs_diff"] > tolerances.logits_atol:
        result.reasons.append(
            f"logits differ from transformers' PeftModel with the consolidated adapter: max |delta| "
            f"{figures['logits_max_abs_diff']:.3g} > {tolerances.logits_atol:g}"
        )
    if effect <= 100 * tolerances.logits_atol:
        result.reasons.append(
            f"the adapter changes transformers' logits by only {effect:.3g}: the logits comparison cannot "
            "tell an applied adapter from none"
        )
