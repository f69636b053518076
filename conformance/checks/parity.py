"""Parity: a tensor-parallel model package against the transformers model, on the same tiny checkpoint.

For each case (catalogue variant, TP size T, sequence parallelism on/off, `fuse_qkv` on/off) the package's
`<X>ForCausalLM.from_pretrained(checkpoint, TrainingNeuronConfig(...), attn_implementation="eager",
dtype=torch.float32)` runs on T ranks through the active backend; on a fixed batch (sequence length
divisible by T, some labels -100) its vocab-sharded logits are gathered and compared with transformers'
`AutoModelForCausalLM` (eager, fp32) on the same checkpoint, and so are the loss and, after
`loss.backward()` and the sequence-parallel gradient all-reduce the training loop performs, every gradient
consolidated back to transformers names (`gradient_consolidation`). The attention layout each layer reached
is read from the modules and must be the one the contributing guide prescribes for the case
(`reference_models.attention_variant`). A variant the catalogue says cannot be built at T (vocabulary not
divisible by T) passes when loading is refused with an error naming both numbers; a flash-attention case
whose config needs what the NKI kernel lacks (a sliding window shorter than the sequence, logit
softcapping: `flash_kernel_limits`) passes when the model refuses it naming flash attention and the feature.

Every case gives a `ParityResult` with its figures, whether it passes or not. Cases are batched: one
`run_tensor_parallel` call per T runs all the cases of that T.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from conformance.backends import described
from conformance.model_package import causal_lm_class
from conformance.results import CheckResult, Plot, Series, Status
from reference_models import build, variant
from reference_models.catalogue import PARITY_SEQUENCE_LENGTH, kv_size_multiplier

from . import RunSettings
from .batching import each_job_on_rank, run_by_tp_size
from .flash_kernel_limits import describe as describe_limits
from .flash_kernel_limits import flash_kernel_limits, refusal_names_a_limit
from .rank_errors import describe, first_line, first_rank_error

PASS, FAIL = "pass", "fail"
COMPARED, REJECTED, ERROR = "compared", "rejected", "error"
BATCH_SIZE = 2


@dataclass(frozen=True)
class Tolerances:
    """Bounds of the comparisons, with the reason for each (kept in every result)."""

    logits_atol: float = 1e-5
    loss_atol: float = 1e-5
    grad_rtol: float = 1e-4
    grad_atol: float = 1e-7
    reason: str = (
        "fp32 on both sides with the same weights: the parallel model only reorders sums (row-parallel "
        "all-reduce, vocab-parallel softmax and loss), a few ulps. Measured over the llama/mistral/qwen2/"
        "granite matrices: max |d logits| 3e-7, |d loss| 1e-6 (2 ulps at ~5.5), gradient "
        "error 4e-6 of the tensor's max |g|. Logits and loss: absolute 1e-5 (30x and 10x margin). Gradients "
        "span orders of magnitude between tensors, so each is bounded by its own scale: max |d| <= 1e-4 * "
        "max |reference| + 1e-7 (25x margin). Every sharding bug seen so far is O(1) relative."
    )

    def gradient_bound(self, reference_max_abs: float) -> float:
        return self.grad_rtol * reference_max_abs + self.grad_atol


FP32 = Tolerances()
TOLERANCE = FP32.reason


@dataclass(frozen=True)
class ParityCase:
    """One configuration to check: a catalogue variant (`<model_type>/<name>`) at a TP size and flags."""

    variant: str
    tp_size: int
    sequence_parallel: bool = False
    fuse_qkv: bool = False
    attn_implementation: str = "eager"
    """``eager``, or ``flash_attention_2`` for the Neuron flash path (transformers stays eager)."""

    @property
    def label(self) -> str:
        sp = "on" if self.sequence_parallel else "off"
        fused = "on" if self.fuse_qkv else "off"
        flash = "" if self.attn_implementation == "eager" else f" attn={self.attn_implementation}"
        return f"{self.variant} T={self.tp_size} SP={sp} fuse_qkv={fused}{flash}"


@dataclass(frozen=True)
class GradientFigure:
    """One consolidated gradient against the transformers one."""

    max_abs_diff: float
    reference_max_abs: float
    bound: float

    @property
    def within(self) -> bool:
        return self.max_abs_diff <= self.bound


@dataclass
class ParityResult:
    """The outcome of one case, with every figure that was measured."""

    case: ParityCase
    model_dir: str
    checkpoint: str
    status: str = FAIL
    outcome: str = ERROR
    reasons: list[str] = field(default_factory=list)
    expected_attention: str | None = None
    refused: str | None = None
    """The expected refusal this case passed as (a TP size the config does not divide, a flash-kernel limit)."""
    attention: dict[str, str] = field(default_factory=dict)
    sequence_parallel_effective: bool | None = None
    logits_max_abs_diff: float | None = None
    loss: float | None = None
    reference_loss: float | None = None
    loss_abs_diff: float | None = None
    gradients: dict[str, GradientFigure] = field(default_factory=dict)
    missing_gradients: list[str] = field(default_factory=list)
    unexpected_gradients: list[str] = field(default_factory=list)
    no_gradient: list[str] = field(default_factory=list)
    kv_replica_disagreement: dict[str, float] = field(default_factory=dict)
    replicated_disagreement: dict[str, float] = field(default_factory=dict)
    missing_keys: list[str] = field(default_factory=list)
    unexpected_keys: list[str] = field(default_factory=list)
    activation_errors: dict[str, float] = field(default_factory=dict)
    """Per module of the forward (embedding, each layer's attention, MLP and output, final norm), in the
    order they ran: max |parallel output - transformers output| (gathered, batch-first)."""
    first_divergent_module: str | None = None
    partial_gradients: dict[str, float] = field(default_factory=dict)
    """Replicated parameters whose per-rank gradients, summed over the ranks, give transformers' gradient
    (max |sum - reference| of each): partial sums nothing reduced."""
    diagnoses: list[str] = field(default_factory=list)
    """The likely causes behind the reasons, as far as the figures tell (first in the CheckResult)."""
    tolerances: Tolerances = FP32
    seconds: float = 0.0
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.status == PASS

    def worst_gradients(self, count: int = 3) -> list[tuple[str, GradientFigure]]:
        """The gradients furthest over (or closest to) their bound, worst first."""
        ranked = sorted(
            self.gradients.items(),
            key=lambda item: item[1].max_abs_diff / max(item[1].bound, 1e-30),
            reverse=True,
        )
        return ranked[:count]

    def summary(self) -> str:
        """One paragraph: the case, the verdict, the reasons and the figures."""
        lines = [f"{self.case.label}: {self.status.upper()} ({self.outcome}, {self.seconds:.2f}s)"]
        lines += [f"  - {reason}" for reason in self.diagnoses + self.reasons]
        if self.attention:
            reached = sorted(set(self.attention.values()))
            lines.append(f"  attention reached {reached}, expected {self.expected_attention}")
        if self.logits_max_abs_diff is not None:
            lines.append(
                f"  max |d logits| {self.logits_max_abs_diff:.3g} (atol {self.tolerances.logits_atol:g}); "
                f"loss {self.loss:.6f} vs {self.reference_loss:.6f}, |d| {self.loss_abs_diff:.3g}"
            )
        for name, figure in self.worst_gradients():
            lines.append(
                f"  grad {name}: max |d| {figure.max_abs_diff:.3g}, bound {figure.bound:.3g} "
                f"(max |ref| {figure.reference_max_abs:.3g})"
            )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for reports (`results.json`)."""
        data = dataclasses.asdict(self)
        data["label"] = self.case.label
        data["passed"] = self.passed
        return data


# --- the fixed batch ----------------------------------------------------------------------------------


def parity_batch(
    vocab_size: int, seq_len: int = PARITY_SEQUENCE_LENGTH, seed: int = 0
) -> dict[str, torch.Tensor]:
    """`input_ids` (B=2, S) from a seeded generator and `labels` = ids with some positions set to -100."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, vocab_size, (BATCH_SIZE, seq_len), generator=generator)
    labels = input_ids.clone()
    labels[0, : seq_len // 4] = -100
    labels[1, -3:] = -100
    return {"input_ids": input_ids, "labels": labels}


# --- public entry points ------------------------------------------------------------------------------


def check_parity(
    model_dir: str | Path,
    variant_key: str,
    tp_size: int,
    *,
    sequence_parallel: bool = False,
    fuse_qkv: bool = False,
    cache_dir: str | Path | None = None,
    tolerances: Tolerances = FP32,
    timeout: float = 300.0,
) -> ParityResult:
    """Check one case; see `check_parity_cases`."""
    case = ParityCase(variant_key, tp_size, sequence_parallel, fuse_qkv)
    (result,) = check_parity_cases(
        model_dir, [case], cache_dir=cache_dir, tolerances=tolerances, timeout=timeout
    )
    return result


def check_parity_cases(
    model_dir: str | Path,
    cases: Sequence[ParityCase],
    *,
    cache_dir: str | Path | None = None,
    tolerances: Tolerances = FP32,
    timeout: float = 300.0,
    backend: str = "reference",
    device: str = "cpu",
) -> list[ParityResult]:
    """Check every case against transformers; results in the order of `cases`.

    `model_dir` is a model package folder (its `__init__.py` imports the host relatively and registers
    the classes). Checkpoints come from `reference_models.build` (cache `cache_dir`). The cases of one TP
    size run in one call on T ranks (`timeout` seconds for that call); a call that fails as a whole (a rank
    crashed or hung) marks each of its cases as an error with the launcher's message.
    """
    model_dir = Path(model_dir).resolve()
    jobs = [_job(case, cache_dir, backend) for case in cases]

    def call_failed(job: _Job, failure: Exception, seconds: float) -> ParityResult:
        return _failed(job, str(model_dir), tolerances, f"the rank call failed: {failure}")

    settings = RunSettings(backend=backend, timeout=timeout, device=device)
    found = run_by_tp_size(
        _run_jobs_on_rank, model_dir, jobs, lambda job: job.case.tp_size, call_failed, settings, tolerances
    )
    return [result for result, _ in found]


def parity_matrix(
    model_type: str,
    tp_sizes: Sequence[int] = (1, 2, 4),
    sequence_parallel: Sequence[bool] = (False, True),
    variants: Sequence[str] | None = None,
) -> list[ParityCase]:
    """The cases that cover an architecture: every catalogue variant (or the named ones) at every T and SP.

    `fuse_qkv` is added where it changes what runs: where it selects the fused `qkv_proj` (heads == kv
    heads), at every SP setting, and where the GQA layer is reached (its fused `weight_qkv`), with SP on
    only (SP changes only the layer's input gather, which the unfused GQA cases cover). SP at T=1 is
    skipped: `TrainingNeuronConfig` turns it off there, so it would repeat the SP-off case.
    """
    from reference_models import variants_for

    cases = []
    for entry in variants_for(model_type):
        if variants is not None and entry.name not in variants:
            continue
        for tp_size in tp_sizes:
            plain, fused = entry.attention(tp_size, False), entry.attention(tp_size, True)
            for sp in sequence_parallel:
                if sp and tp_size == 1:
                    continue
                cases.append(ParityCase(entry.key, tp_size, sp, False))
                if plain != fused or (plain == "gqa" and sp):
                    cases.append(ParityCase(entry.key, tp_size, sp, True))
    return cases


# --- jobs ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Job:
    case: ParityCase
    checkpoint: str
    expected_attention: str | None
    rejection: str | None
    vocab_size: int
    flash_limits: tuple[str, ...] = ()
    """What the flash kernel cannot compute for this config (flash cases only): a refusal naming it passes."""
    sequence_length: int = PARITY_SEQUENCE_LENGTH


def _job(case: ParityCase, cache_dir: str | Path | None, backend: str = "reference") -> _Job:
    entry = variant(case.variant)
    config = entry.config()
    flash = case.attn_implementation == "flash_attention_2"
    # The flash kernel's length: the reference kernel takes the parity length, the NKI one multiples of 2048.
    length = (
        described(backend).flash_sequence_length(PARITY_SEQUENCE_LENGTH) if flash else PARITY_SEQUENCE_LENGTH
    )
    return _Job(
        sequence_length=length,
        case=case,
        checkpoint=str(build(entry, cache_dir)),
        expected_attention=entry.attention(case.tp_size, case.fuse_qkv),
        rejection=entry.unsupported_reason(case.tp_size),
        vocab_size=config.vocab_size,
        flash_limits=tuple(flash_kernel_limits(config, length)) if flash else (),
    )


def _failed(job: _Job, model_dir: str, tolerances: Tolerances, error: str) -> ParityResult:
    return ParityResult(
        case=job.case,
        model_dir=model_dir,
        checkpoint=job.checkpoint,
        expected_attention=job.expected_attention,
        tolerances=tolerances,
        reasons=[first_line(error)],
        error=error,
    )


# --- on the ranks -------------------------------------------------------------------------------------


def _run_jobs_on_rank(model_dir: str, jobs: list[_Job], tolerances: Tolerances) -> list[ParityResult] | None:
    """Every job on this rank; rank 0 returns the results, the others None."""
    references: dict[str, dict[str, Any]] = {}

    def step(package: ModuleType, job: _Job) -> ParityResult:
        return _run_job(package, job, model_dir, tolerances, references)

    def mount_failed(job: _Job, error: str) -> ParityResult:
        return _failed(job, model_dir, tolerances, f"mounting the package failed: {error}")

    return each_job_on_rank(model_dir, jobs, step, mount_failed)


def _gather_to_rank_0(grads: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]] | None:
    """Every rank's gradient dict on rank 0 (rank order), None elsewhere.

    One flat tensor gather when all ranks hold the same names and shapes (NxD layers shard evenly);
    pickled objects otherwise, which is several times slower.
    """
    import torch.distributed as dist

    layout = [(name, tuple(grad.shape)) for name, grad in grads.items()]
    layouts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(layouts, layout)
    root = dist.get_rank() == 0
    if any(other != layout for other in layouts):
        found: list[Any] | None = [None] * dist.get_world_size() if root else None
        dist.gather_object(grads, found, dst=0)
        return found
    flat = torch.cat([grad.reshape(-1) for grad in grads.values()]) if grads else torch.zeros(0)
    buffers = [torch.empty_like(flat) for _ in layouts] if root else None
    dist.gather(flat, buffers, dst=0)
    if buffers is None:
        return None
    sizes = [grad.numel() for grad in grads.values()]
    return [
        {name: part.view(shape) for (name, shape), part in zip(layout, buffer.split(sizes))}
        for buffer in buffers
    ]


def attention_layouts(model: torch.nn.Module) -> dict[str, str]:
    """Per attention module: "gqa" (NxD's GQA QKV layer), "fused" (one `qkv_proj`) or "separate" q/k/v."""
    from neuronx_distributed.modules.qkv_linear import GQAQKVColumnParallelLinear

    found = {}
    for name, module in model.named_modules():
        children = dict(module.named_children())
        if "qkv_proj" in children:
            found[name] = "gqa" if isinstance(children["qkv_proj"], GQAQKVColumnParallelLinear) else "fused"
        elif {"q_proj", "k_proj", "v_proj"} <= set(children):
            found[name] = "separate"
    return found


# Modules whose outputs are compared with transformers', to find where a wrong forward first departs.
_TRACED_MODULE = re.compile(r"^model\.(embed_tokens|norm|layers\.\d+(\.(self_attn|mlp))?)$")


class _ActivationRecorder:
    """Records the output of every traced module during one forward, in the order the modules ran."""

    def __init__(self, model: torch.nn.Module):
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles = [
            module.register_forward_hook(self._hook(name))
            for name, module in model.named_modules()
            if _TRACED_MODULE.match(name)
        ]

    def _hook(self, name: str) -> Any:
        def record(module: torch.nn.Module, args: Any, output: Any) -> None:
            value = output[0] if isinstance(output, tuple) else output
            if isinstance(value, torch.Tensor) and name not in self.outputs:
                self.outputs[name] = value.detach()

        return record

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def _gather_activations(
    outputs: dict[str, torch.Tensor], batch_size: int, seq_len: int, sequence_parallel: bool
) -> dict[str, torch.Tensor]:
    """Batch-first full-sequence activations: sequence-sharded (S/T, B, D) outputs are gathered over TP
    (a collective: every rank holds the same names and shapes, so every rank takes the same branches)."""
    from neuronx_distributed.parallel_layers.mappings import gather_from_sequence_parallel_region
    from neuronx_distributed.parallel_layers.parallel_state import get_tensor_model_parallel_size

    tp_size = get_tensor_model_parallel_size()
    gathered = {}
    for name, value in outputs.items():
        sharded = value.dim() == 3 and value.shape[0] * tp_size == seq_len and value.shape[1] == batch_size
        if sequence_parallel and sharded:
            value = gather_from_sequence_parallel_region(value.contiguous(), 0).transpose(0, 1)
        gathered[name] = value.contiguous()
    return gathered


class _AllParameters:
    """What the sequence-parallel gradient all-reduce reads from an optimizer: its parameter groups."""

    def __init__(self, model: torch.nn.Module):
        self.param_groups = [{"params": list(model.parameters())}]


def _run_parallel(package: ModuleType, job: _Job, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Load, forward, backward on this rank; the figures every rank needs to hand to rank 0."""
    from neuronx_distributed.parallel_layers import parallel_state
    from neuronx_distributed.parallel_layers.grads import allreduce_sequence_parallel_gradients
    from neuronx_distributed.parallel_layers.mappings import gather_from_tensor_model_parallel_region

    from conformance.backends import active

    host = active()
    # NxD keeps one kv-shared group size per process (until destroy_kv_group); each case builds a new model.
    parallel_state.destroy_kv_group()
    trn_config = host.host_module("config").TrainingNeuronConfig(
        tensor_parallel_size=job.case.tp_size,
        sequence_parallel_enabled=job.case.sequence_parallel,
        fuse_qkv=job.case.fuse_qkv,
    )
    model_cls = causal_lm_class(package, job.checkpoint)
    model, info = model_cls.from_pretrained(
        job.checkpoint,
        trn_config,
        attn_implementation=job.case.attn_implementation,
        dtype=torch.float32,
        output_loading_info=True,
    )
    recorder = _ActivationRecorder(model)
    try:
        with host.flash_kernel_taking(job.sequence_length):
            output = model(**batch)
            output.loss.backward()
    finally:
        recorder.remove()
    # optimum-neuron's optimizer step sums the gradients of parameters marked `sequence_parallel_enabled`
    # over TP, and only when sequence parallelism is on; the check sees what that step would use.
    if trn_config.sequence_parallel_enabled:
        allreduce_sequence_parallel_gradients(_AllParameters(model))
    logits = gather_from_tensor_model_parallel_region(output.logits.detach().contiguous())
    grads = {}
    no_gradient = []
    for name, param in model.named_parameters():
        if param.grad is None:
            no_gradient.append(name)
            grads[name] = torch.zeros_like(param.detach())
        else:
            grads[name] = param.grad.detach().clone()
    batch_size, seq_len = batch["input_ids"].shape
    activations = _gather_activations(
        recorder.outputs, batch_size, seq_len, bool(trn_config.sequence_parallel_enabled)
    )
    transformations = host.host_module("transformations_utils")
    return {
        "activations": activations,
        "sequence_parallel_flags": {
            name: bool(getattr(param, "sequence_parallel_enabled", False))
            for name, param in model.named_parameters()
        },
        "logits": logits,
        "local_logits_shape": tuple(output.logits.shape),
        "loss": output.loss.detach(),
        "grads": grads,
        "no_gradient": no_gradient,
        "metadata": transformations.create_parameter_metadata(model),
        "attention": attention_layouts(model),
        "sequence_parallel": trn_config.sequence_parallel_enabled,
        "info": info,
    }


def _reference(checkpoint: str, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
    """transformers' model on the same checkpoint (eager, fp32): logits, loss and gradients."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(checkpoint, attn_implementation="eager", dtype=torch.float32)
    model.eval()
    recorder = _ActivationRecorder(model)
    try:
        output = model(**batch)
    finally:
        recorder.remove()
    output.loss.backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}
    return {
        "logits": output.logits.detach(),
        "loss": output.loss.detach(),
        "grads": grads,
        "activations": recorder.outputs,
    }


def _run_job(
    package: ModuleType,
    job: _Job,
    model_dir: str,
    tolerances: Tolerances,
    references: dict[str, dict[str, Any]],
) -> ParityResult | None:
    import torch.distributed as dist

    start = time.perf_counter()
    result = ParityResult(
        case=job.case,
        model_dir=model_dir,
        checkpoint=job.checkpoint,
        expected_attention=job.expected_attention,
        tolerances=tolerances,
    )
    batch = parity_batch(job.vocab_size, job.sequence_length)
    local: dict[str, Any] | None = None
    error = None
    try:
        local = _run_parallel(package, job, batch)
    except Exception as exc:
        error = describe(exc)
    error = first_rank_error(error)
    if error is not None:
        _judge_failure(result, job, error)
        result.seconds = time.perf_counter() - start
        return result

    assert local is not None
    gathered = _gather_to_rank_0(local["grads"])
    if dist.get_rank() != 0:
        return None
    assert gathered is not None
    try:
        _compare(result, job, local, gathered, references, batch)
    except Exception as exc:  # rank 0 alone: record it, never leave the other ranks waiting
        result.reasons.append(f"the comparison itself failed: {describe(exc).splitlines()[0]}")
        result.error = describe(exc)
    result.status = PASS if not result.reasons else FAIL
    result.seconds = time.perf_counter() - start
    return result


def _compare(
    result: ParityResult,
    job: _Job,
    local: dict[str, Any],
    gathered: list[dict[str, torch.Tensor]],
    references: dict[str, dict[str, Any]],
    batch: dict[str, torch.Tensor],
) -> None:
    """Rank 0: every judgement of a case whose parallel run completed on all ranks."""
    from .gradient_consolidation import consolidate_gradients

    if job.rejection is not None:
        result.reasons.append(f"expected a refusal ({job.rejection}) but the model was built and ran")
    key = f"{job.checkpoint}:{job.sequence_length}"
    if key not in references:
        references[key] = _reference(job.checkpoint, batch)
    reference = references[key]
    result.outcome = COMPARED
    result.sequence_parallel_effective = local["sequence_parallel"]
    result.missing_keys = list(local["info"].get("missing_keys", []))
    result.unexpected_keys = list(local["info"].get("unexpected_keys", []))
    if result.missing_keys or result.unexpected_keys:
        result.reasons.append(
            f"checkpoint keys not loaded: missing {result.missing_keys}, unexpected {result.unexpected_keys}"
        )
    _judge_attention(result, local["attention"])
    _judge_outputs(result, local, reference)
    _locate_forward_divergence(result, local["activations"], reference["activations"])
    try:
        consolidated, kv_spread, replicated_spread = consolidate_gradients(gathered, local["metadata"])
    except Exception as exc:
        result.reasons.append(f"gradient consolidation failed: {describe(exc).splitlines()[0]}")
        result.error = describe(exc)
        return
    result.no_gradient = list(local["no_gradient"])
    _judge_gradients(result, consolidated, reference["grads"])
    _judge_kv_replicas(result, kv_spread)
    _judge_replicated(result, replicated_spread)
    _diagnose_missing_gradients(result)
    _diagnose_partial_gradients(
        result,
        gathered,
        reference["grads"],
        local["metadata"]["parameters"],
        local["sequence_parallel_flags"],
    )


def _judge_failure(result: ParityResult, job: _Job, error: str) -> None:
    result.error = error
    if job.flash_limits and job.rejection is None:
        result.outcome = REJECTED
        first = error.splitlines()[0]
        expected = describe_limits(list(job.flash_limits), job.sequence_length)
        if refusal_names_a_limit(first, list(job.flash_limits)):
            result.status, result.refused = PASS, expected
        else:
            result.reasons.append(
                f"a refusal was expected ({expected}), but the error does not name flash attention and "
                f"the {' or '.join(job.flash_limits)}: {first}"
            )
        return
    if job.rejection is not None:
        result.outcome = REJECTED
        first = error.splitlines()[0]
        offending = _offending_values(job.rejection)
        if _names(first, job.case.tp_size) and any(_names(first, value) for value in offending):
            result.status, result.refused = PASS, job.rejection
        else:
            result.reasons.append(
                f"refused as expected ({job.rejection}), but the error does not name the tensor parallel "
                f"size {job.case.tp_size} and the value it does not divide ({', '.join(offending)}): {first}"
            )
        return
    result.outcome = ERROR
    result.reasons.append(f"the parallel model failed: {error.splitlines()[0]}")


def _offending_values(rejection: str) -> list[str]:
    """The config value each problem of a rejection is about: the first number of each `; ` part."""
    found = (re.search(r"\d+", problem) for problem in rejection.split("; "))
    return [match.group() for match in found if match]


def _names(text: str, value: object) -> bool:
    return re.search(rf"(?<!\d){value}(?!\d)", text) is not None


def _judge_attention(result: ParityResult, attention: dict[str, str]) -> None:
    result.attention = dict(attention)
    if not attention:
        result.reasons.append("no attention module found (no qkv_proj, nor q_proj/k_proj/v_proj children)")
        return
    wrong = {name: found for name, found in attention.items() if found != result.expected_attention}
    if wrong:
        result.reasons.append(f"attention layout should be {result.expected_attention!r}, got {wrong}")


def _judge_outputs(result: ParityResult, local: dict[str, Any], reference: dict[str, Any]) -> None:
    logits, expected = local["logits"], reference["logits"]
    if logits.shape != expected.shape:
        result.reasons.append(
            f"gathered logits have shape {tuple(logits.shape)} (local {local['local_logits_shape']}), "
            f"transformers' {tuple(expected.shape)}: logits must be (batch, sequence, vocab/T) on each rank"
        )
    else:
        result.logits_max_abs_diff = float((logits - expected).abs().max())
        if result.logits_max_abs_diff > result.tolerances.logits_atol:
            result.reasons.append(
                f"logits differ: max |delta| {result.logits_max_abs_diff:.3g} > {result.tolerances.logits_atol:g}"
            )
    result.loss, result.reference_loss = float(local["loss"]), float(reference["loss"])
    result.loss_abs_diff = abs(result.loss - result.reference_loss)
    if not result.loss_abs_diff <= result.tolerances.loss_atol:
        result.reasons.append(
            f"loss differs: |delta| {result.loss_abs_diff:.3g} > {result.tolerances.loss_atol:g}"
        )


def _judge_gradients(
    result: ParityResult, consolidated: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]
) -> None:
    result.missing_gradients = sorted(set(expected) - set(consolidated))
    result.unexpected_gradients = sorted(set(consolidated) - set(expected))
    if result.missing_gradients or result.unexpected_gradients:
        result.reasons.append(
            f"gradient names differ from transformers': missing {result.missing_gradients}, "
            f"unexpected {result.unexpected_gradients}"
        )
    over = []
    for name in sorted(set(expected) & set(consolidated)):
        mine, theirs = consolidated[name], expected[name]
        if mine.shape != theirs.shape:
            result.reasons.append(f"gradient {name}: shape {tuple(mine.shape)} != {tuple(theirs.shape)}")
            continue
        scale = float(theirs.abs().max())
        figure = GradientFigure(
            max_abs_diff=float((mine - theirs).abs().max()),
            reference_max_abs=scale,
            bound=result.tolerances.gradient_bound(scale),
        )
        result.gradients[name] = figure
        if not figure.within:
            over.append(name)
    if over:
        worst = max(over, key=lambda n: result.gradients[n].max_abs_diff / result.gradients[n].bound)
        figure = result.gradients[worst]
        result.reasons.append(
            f"{len(over)} gradient(s) out of bounds, worst {worst}: max |delta| {figure.max_abs_diff:.3g} > "
            f"{figure.bound:.3g}"
        )


def _judge_kv_replicas(result: ParityResult, disagreement: dict[str, float]) -> None:
    """Every replica of a K/V head must hold the full (kv-group all-reduced) gradient."""
    result.kv_replica_disagreement = dict(disagreement)
    for name, spread in sorted(disagreement.items()):
        figure = result.gradients.get(name)
        bound = figure.bound if figure is not None else result.tolerances.grad_atol
        if spread > bound:
            result.reasons.append(
                f"K/V replicas of {name} hold different gradients (max |replica - replica 0| {spread:.3g} > "
                f"{bound:.3g}): the kv-shared group all-reduce is missing, replicas would drift apart"
            )


def _judge_replicated(result: ParityResult, spread: dict[str, float]) -> None:
    """A replicated parameter must hold the same full gradient on every rank (after the SP all-reduce)."""
    result.replicated_disagreement = dict(spread)
    differing = {}
    for name, value in sorted(spread.items()):
        figure = result.gradients.get(name)
        if value > (figure.bound if figure is not None else result.tolerances.grad_atol):
            differing[name] = value
    if differing:
        worst = max(differing, key=differing.get)
        result.reasons.append(
            f"{len(differing)} replicated parameter(s) have different gradients on different ranks, worst "
            f"{worst} (max |rank r - rank 0| {differing[worst]:.3g}): each rank holds a partial gradient "
            "that nothing sums over TP (per-head q/k norms on rank-local heads, or norms in the sequence-"
            "parallel region without `sequence_parallel_enabled`)"
        )


# --- diagnoses: from the figures to a likely cause ------------------------------------------------------

_MODULE_HINTS = {
    "self_attn": "its q/k/v/o projections, the head layout (head order, K/V head per query head, q/k/v split) "
    "or the rotary embedding",
    "mlp": "its gate/up/down projections and the gate/up split",
    "embed_tokens": "the token embedding",
    "norm": "the final norm",
}


def _locate_forward_divergence(
    result: ParityResult, parallel: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]
) -> None:
    """The first module (in the order the parallel model ran them) whose output departs from transformers'.

    Bound: the logits tolerance scaled by the activation's size (activations are O(1), a few ulps of drift
    like the logits); a wrong module is off by O(its output).
    """
    for name, value in parallel.items():
        expected = reference.get(name)
        if expected is None or expected.shape != value.shape:
            continue
        error = float((value.float() - expected.float()).abs().max())
        result.activation_errors[name] = error
        bound = result.tolerances.logits_atol * max(1.0, float(expected.abs().max()))
        if result.first_divergent_module is None and not error <= bound:
            result.first_divergent_module = name
    name = result.first_divergent_module
    if name is None:
        return
    kind = name.rsplit(".", 1)[-1]
    hint = _MODULE_HINTS.get(kind, "the decoder layer's own code (residuals, norms)")
    result.diagnoses.append(
        f"the forward first departs from transformers at {name} (max |d output| "
        f"{result.activation_errors[name]:.3g}; every module that ran before it agrees): look at {hint}"
    )


def _diagnose_missing_gradients(result: ParityResult) -> None:
    if not result.no_gradient:
        return
    forward_right = (
        result.logits_max_abs_diff is not None and result.logits_max_abs_diff <= result.tolerances.logits_atol
    )
    why = (
        "the forward matches transformers, so something detaches them from the loss (a .detach(), "
        "torch.no_grad, an in-place or non-differentiable op)"
        if forward_right
        else "they are cut off from the loss"
    )
    result.diagnoses.append(
        f"{len(result.no_gradient)} parameter(s) received no gradient: {', '.join(result.no_gradient)}; {why}"
    )


def _diagnose_partial_gradients(
    result: ParityResult,
    per_rank: list[dict[str, torch.Tensor]],
    expected: dict[str, torch.Tensor],
    parameters: dict[str, dict[str, Any]],
    sequence_parallel_flags: dict[str, bool],
) -> None:
    """A replicated parameter whose gradient is out of bounds but whose per-rank gradients sum to
    transformers' holds partial sums: each rank saw only its sequence shard (or its own heads)."""
    tp_size = len(per_rank)
    if tp_size < 2:
        return
    for name, figure in sorted(result.gradients.items()):
        meta = parameters.get(name, {})
        if figure.within or meta.get("tensor_model_parallel") or name not in per_rank[0]:
            continue
        total = sum(grads[name] for grads in per_rank)
        if total.shape != expected[name].shape:
            continue
        error = float((total - expected[name]).abs().max())
        if not error <= figure.bound:
            continue
        result.partial_gradients[name] = error
        ratio = float(per_rank[0][name].flatten() @ expected[name].flatten()) / max(
            float(expected[name].flatten() @ expected[name].flatten()), 1e-30
        )
        if result.sequence_parallel_effective and not sequence_parallel_flags.get(name, False):
            cause = (
                f"each rank holds only its sequence shard's part (rank 0's is {ratio:.2f} of transformers' "
                f"gradient, the sum over the {tp_size} ranks matches to {error:.1e}): is the parameter missing "
                "its sequence_parallel_enabled flag?"
            )
        else:
            cause = (
                f"each rank holds only the part of its own heads or shard (rank 0's is {ratio:.2f} of "
                f"transformers' gradient, the sum over the {tp_size} ranks matches to {error:.1e}) and nothing "
                "sums it over TP"
            )
        result.diagnoses.append(f"gradient of {name} is partial: {cause}")


# --- the check entry point (conformance.checks.run contract) ---------------------------------------------

CHECK = "parity"
GRADIENT_PLOT_FLOOR = 1e-6
"""Bars of the gradient plot are drawn at no less than this (a log axis has no zero); figures keep the
true ratios."""


def touched_deviations(
    variant_key: str,
    tp_size: int,
    sequence_parallel: bool,
    layouts: Sequence[str],
    dtype: str = "float32",
    fuse_qkv: bool = False,
) -> list[str]:
    """Ids of the reference-backend deviations (docs/backend-deviations.md) that a run of this configuration
    goes through: where the reference backend does what the released stack does not."""
    config = variant(variant_key).config()
    found = set()
    if "gqa" in layouts:
        found.add("NXD-12")  # the GQA backward's collectives
        if 1 < kv_size_multiplier(config.num_key_value_heads, tp_size) < tp_size:
            # K/V replicas in TRN1's tile layout with strided kv groups; TRN2 groups other ranks (with m == T
            # both platforms form one group of every rank)
            found.add("NXD-11")
        if fuse_qkv:
            found.add("NXD-10")  # weight_qkv keeps its tensor-parallel attributes here
        if variant(variant_key).has_attention_biases():
            found |= {"NXD-09", "ON-10"}
    pad = getattr(config, "pad_token_id", None)
    if pad == 0 or (pad is not None and dtype == "float16"):
        found.add("NXD-05")  # NxD drops padding_idx 0 (its row gets gradient); fp16 embeddings return bf16
    if dtype != "float32" and tp_size > 1 and not sequence_parallel:
        found.add("NXD-07")  # column layers' input-gradient all-reduce in bf16
    return sorted(found)


def parity_case(configuration: dict[str, Any]) -> ParityCase:
    """The case a configuration dict names (`variant`, `tp_size`, `sequence_parallel`, `fuse_qkv`)."""
    return ParityCase(
        variant=str(configuration["variant"]),
        tp_size=int(configuration["tp_size"]),
        sequence_parallel=bool(configuration.get("sequence_parallel", False)),
        fuse_qkv=bool(configuration.get("fuse_qkv", False)),
        attn_implementation=str(configuration.get("attn_implementation", "eager")),
    )


def run(
    package_dir: Path, configurations: Sequence[dict[str, Any]], settings: RunSettings
) -> list[CheckResult]:
    """Parity of `package_dir` in each configuration, one `CheckResult` each, in order (all the
    configurations of one TP size run in one launcher call)."""
    cases = [parity_case(configuration) for configuration in configurations]
    results = check_parity_cases(
        package_dir,
        cases,
        cache_dir=settings.cache_dir,
        timeout=settings.timeout,
        backend=settings.backend,
        device=settings.device,
    )
    return [to_check_result(result) for result in results]


def to_check_result(result: ParityResult) -> CheckResult:
    """A `ParityResult` as the reports see it: status, figures, reasons (diagnoses first) and plots."""
    case = result.case
    layouts = sorted(set(result.attention.values()))
    ratios = {
        name: figure.max_abs_diff / figure.bound if figure.bound > 0 else math.inf
        for name, figure in result.gradients.items()
    }
    worst = sorted(ratios.items(), key=lambda item: (-item[1], item[0]))[:5]
    figures: dict[str, Any] = {
        "outcome": result.outcome,
        "refused_as_expected": result.refused,
        "expected_attention": result.expected_attention,
        "attention_layouts": layouts,
        "sequence_parallel_effective": result.sequence_parallel_effective,
        "logits_max_abs_diff": result.logits_max_abs_diff,
        "loss": result.loss,
        "reference_loss": result.reference_loss,
        "loss_abs_diff": result.loss_abs_diff,
        "tensors_compared": len(result.gradients),
        "tensors_within_bound": sum(figure.within for figure in result.gradients.values()),
        "worst_gradient_ratios": dict(worst),
        "missing_gradients": list(result.missing_gradients),
        "unexpected_gradients": list(result.unexpected_gradients),
        "no_gradient": list(result.no_gradient),
        "partial_gradients": sorted(result.partial_gradients),
        "max_kv_replica_disagreement": max(result.kv_replica_disagreement.values(), default=None),
        "max_replicated_disagreement": max(result.replicated_disagreement.values(), default=None),
        "first_divergent_module": result.first_divergent_module,
        "activation_errors": dict(result.activation_errors),
    }
    plots = []
    if ratios:
        plots.append(
            _bar_plot(
                f"gradient error relative to its bound, {case.label}",
                "tensor (transformers name)",
                f"max |d grad| / bound (drawn at >= {GRADIENT_PLOT_FLOOR:g}; > 1 fails)",
                "gradient error / bound",
                {name: ratios[name] for name in sorted(ratios)},
            )
        )
    if result.activation_errors:
        plots.append(
            _bar_plot(
                f"forward error per module (in execution order), {case.label}",
                "module",
                f"max |d output| (drawn at >= {GRADIENT_PLOT_FLOOR:g})",
                "max |parallel - transformers|",
                result.activation_errors,
            )
        )
    return CheckResult(
        check=CHECK,
        configuration={
            "variant": case.variant,
            "tp_size": case.tp_size,
            "sequence_parallel": case.sequence_parallel,
            "fuse_qkv": case.fuse_qkv,
            # Flash cases name their attention, so that they do not share a label with the eager case.
            **(
                {}
                if case.attn_implementation == "eager"
                else {"attn_implementation": case.attn_implementation}
            ),
        },
        status=Status.PASS if result.passed else Status.FAIL,
        figures=figures,
        reasons=list(result.diagnoses) + list(result.reasons),
        tolerance=result.tolerances.reason,
        deviations=touched_deviations(
            case.variant, case.tp_size, case.sequence_parallel, layouts, fuse_qkv=case.fuse_qkv
        ),
        plots=plots,
        seconds=result.seconds,
        traceback=result.error,
    )


def _bar_plot(title: str, x_label: str, y_label: str, name: str, values: dict[str, float]) -> Plot:
    """One log-scale bar per entry of `values`, in its order, drawn at least at `GRADIENT_PLOT_FLOOR`."""
    names = list(values)
    series = Series(
        name=name,
        x=[float(i) for i in range(len(names))],
        y=[max(values[label], GRADIENT_PLOT_FLOOR) for label in names],
    )
    return Plot(
        title=title,
        x_label=x_label,
        y_label=y_label,
        series=[series],
        log_y=True,
        kind="bar",
        x_labels=names,
    )
