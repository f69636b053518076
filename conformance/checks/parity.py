"""Parity: a tensor-parallel model package against the transformers model, on the same tiny checkpoint.

For each case (catalogue variant, TP size T, and the `TrainingNeuronConfig` options that change the
computation path: sequence parallelism, `fuse_qkv`, `recompute_causal_mask`, `gradient_checkpointing`, an
explicit `kv_size_multiplier`, `transpose_nki_inputs` on the flash path) the package's
`<X>ForCausalLM.from_pretrained(checkpoint, TrainingNeuronConfig(...), attn_implementation="eager",
dtype=torch.float32)` runs on T ranks through the active backend; on the fixed batch (`fixed_batch`: pad
tokens with padding at the start of one row and the end of the other, two packed sequences whose
`position_ids` restart, labels -100 on padding) its logits — vocab-parallel shards gathered over TP, or the
full vocabulary a replicated `lm_head` returns on every rank — are compared with transformers'
`AutoModelForCausalLM` (eager, fp32) on the same checkpoint, and so are the loss and, after
`loss.backward()` and the sequence-parallel gradient all-reduce the training loop performs, every gradient
consolidated back to transformers names. The attention layout each layer reached is read from the modules
and must be the one the contributing guide prescribes for the case (`reference_models.attention_variant`).
Both models load the checkpoint with dropout switched off; with gradient checkpointing the parallel model
trains as optimum-neuron's trainer sets it up (`gradient_checkpointing_enable`, training mode).

What transformers is given follows what optimum-neuron promises, not transformers' own behaviour: with
`recompute_causal_mask=True` (the default, documented as "the attention mask is ignored") and on the flash
path (causal by construction) the parallel model is compared with transformers given the causal mask only;
with `recompute_causal_mask=False` with transformers given the same padding mask, at the attended positions
(the outputs of padding queries are unspecified). Both get the batch's `position_ids`, and always an
explicit mask, so that transformers does not split the packed sequences it would infer from
`position_ids` (optimum-neuron's masks never do).

A variant the catalogue says cannot be built at T (vocabulary not divisible by T) passes when loading is
refused with an error naming both numbers: no implementation can shard it, so the refusal is the right
answer. A flash-attention case whose config needs what the NKI kernel lacks (a sliding window shorter than
the sequence, logit softcapping: `flash_kernel_limits`) is UNSUPPORTED when the model refuses it naming
flash attention and the feature (the model cannot train that configuration on Trainium: listed, not a
defect), and a FAIL when the refusal names neither. A failure names the first module whose output departs
from transformers', gradients that are partial sums (a missing `sequence_parallel_enabled`), parameters that
received no gradient, a padding row that trains (a lost `padding_idx`), a configuration constant that
differs from transformers' in the same module (`module_constants`: a norm epsilon or rope theta written in
the code), and which input the model does not use (`input_handling`: the padding mask, `position_ids`, or
an argument the checkpointed layer call drops).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from conformance.comparisons.bound_text import number
from conformance.comparisons.diagnosis import (
    locate_forward_divergence,
    missing_gradient_diagnosis,
    padding_row_diagnoses,
    partial_gradients,
)
from conformance.comparisons.expected_refusals import names_tp_rejection, offending_values
from conformance.comparisons.gradient_consolidation import consolidate_gradients
from conformance.comparisons.gradients import (
    GradientBound,
    GradientFigure,
    compare_gradients,
    kv_replica_reasons,
    replicated_reasons,
)
from conformance.comparisons.input_handling import ForwardMiss, diagnose_inputs
from conformance.comparisons.module_constants import constant_reasons, module_constants
from conformance.comparisons.outputs import compare_outputs
from conformance.comparisons.plots import ratio_bars
from conformance.harness.job_errors import JobError
from conformance.harness.protocol import Check, CheckConfig, Exercised, Verdict, Workspace
from conformance.harness.rank_steps import is_rank_zero, rank_step
from conformance.model_runs.activation_trace import ActivationRecorder, gather_activations
from conformance.model_runs.attention_layouts import attention_layouts
from conformance.model_runs.compared_checkpoints import switch_off_dropout
from conformance.model_runs.fixed_batch import FixedBatch, fixed_batch, pad_token_id
from conformance.model_runs.flash_kernel_limits import describe as describe_limits
from conformance.model_runs.flash_kernel_limits import flash_kernel_limits, refusal_names_a_limit
from conformance.model_runs.logits import REPLICATED, LogitsLayoutError, full_vocabulary_logits
from conformance.model_runs.parallel_model import load_parallel
from conformance.model_runs.rank_gather import gather_to_rank_0
from conformance.model_runs.transformers_reference import config_values, reference_run
from conformance.results import Status, configuration_label
from reference_models import variant, variants_for
from reference_models.catalogue import PARITY_SEQUENCE_LENGTH

if TYPE_CHECKING:
    from conformance.profiles import ModelCatalogue

COMPARED, REJECTED, ERROR = "compared", "rejected", "error"
FLASH = "flash_attention_2"
FULL_TP_SIZES = (1, 2, 4, 8)


@dataclass(frozen=True)
class Tolerances:
    """Bounds of the comparisons, with the reason for each (kept in every result)."""

    logits_atol: float = 1e-5
    loss_atol: float = 1e-5
    grad_rtol: float = 1e-4
    grad_atol: float = 1e-7

    @property
    def reason(self) -> str:
        """The bound in words, with the numbers applied (docs/conformance-checks.md)."""
        return (
            "fp32 on both sides with the same weights: the parallel model only reorders sums (row-parallel "
            "all-reduce, vocab-parallel softmax and loss), a few ulps. Measured over the llama/mistral/qwen2/"
            "granite matrices: max |d logits| 3e-7, |d loss| 1e-6 (2 ulps at ~5.5), gradient "
            f"error 4e-6 of the tensor's max |g|. Logits and loss: absolute {number(self.logits_atol)} (30x and "
            "10x margin). Gradients span orders of magnitude between tensors, so each is bounded by its own "
            f"scale: max |d| <= {number(self.grad_rtol)} * max |reference| + {number(self.grad_atol)} (25x "
            "margin). Every sharding bug seen so far is O(1) relative."
        )

    @property
    def gradient(self) -> GradientBound:
        return GradientBound(self.grad_rtol, self.grad_atol)


FP32 = Tolerances()
TOLERANCE = FP32.reason


@dataclass(frozen=True)
class ParityConfig(CheckConfig):
    """A catalogue variant at a TP size, with the `TrainingNeuronConfig` options that change the
    computation path and the attention path."""

    tp_size: int
    sequence_parallel: bool = False
    fuse_qkv: bool = False
    attn_implementation: str = "eager"
    """``eager``, or ``flash_attention_2`` for the Neuron flash path (transformers stays eager)."""
    recompute_causal_mask: bool = True
    """optimum-neuron's default: attention recomputes a causal mask and ignores the padding mask."""
    gradient_checkpointing: bool = False
    """Activation checkpointing of the decoder layers (the forward runs in training mode, dropout off)."""
    kv_size_multiplier: int | None = None
    """None: the model infers it (`auto_kv_size_multiplier`); a number is passed explicitly."""
    transpose_nki_inputs: bool = True
    """The NKI kernel's layout on the flash path (no effect on eager attention)."""

    HIDDEN_WHEN_DEFAULT: ClassVar[frozenset[str]] = frozenset(
        {
            "attn_implementation",
            "recompute_causal_mask",
            "gradient_checkpointing",
            "kv_size_multiplier",
            "transpose_nki_inputs",
        }
    )

    @property
    def honours_padding(self) -> bool:
        """Whether the model must apply the batch's padding mask (eager attention, mask not recomputed)."""
        return not self.recompute_causal_mask and self.attn_implementation != FLASH

    def training_options(self) -> dict[str, Any]:
        """The `TrainingNeuronConfig` keyword arguments of the case (besides the TP size)."""
        return {
            "sequence_parallel_enabled": self.sequence_parallel,
            "fuse_qkv": self.fuse_qkv,
            "recompute_causal_mask": self.recompute_causal_mask,
            "gradient_checkpointing": self.gradient_checkpointing,
            "kv_size_multiplier": self.kv_size_multiplier,
            "transpose_nki_inputs": self.transpose_nki_inputs,
        }

    def exercised(self) -> Exercised:
        options: list[tuple[str, Any]] = [
            ("sequence_parallel_enabled", self.sequence_parallel and self.tp_size > 1),
            ("fuse_qkv", self.fuse_qkv),
            ("recompute_causal_mask", self.recompute_causal_mask),
            ("gradient_checkpointing", self.gradient_checkpointing),
        ]
        if self.attn_implementation == FLASH:
            options.append(("transpose_nki_inputs", self.transpose_nki_inputs))
        if variant(self.variant).attention(self.tp_size, self.fuse_qkv) == "gqa":
            options.append(("kv_size_multiplier", "auto" if self.kv_size_multiplier is None else "explicit"))
        return Exercised((self.tp_size,), tuple(options), self.attn_implementation)


@dataclass(frozen=True)
class ParityJob:
    config: ParityConfig
    checkpoint: str
    expected_attention: str | None
    rejection: str | None
    """Why the catalogue says the variant cannot be built at this T (a refusal naming it passes), or None."""
    vocab_size: int
    flash_limits: tuple[str, ...] = ()
    """What the flash kernel cannot compute for this config (flash cases only)."""
    sequence_length: int = PARITY_SEQUENCE_LENGTH
    pad_token_id: int = 0
    """The id the fixed batch pads with (`fixed_batch.pad_token_id`)."""

    def batch(self) -> FixedBatch:
        return fixed_batch(self.vocab_size, self.sequence_length, self.pad_token_id)

    @property
    def tp_size(self) -> int:
        return self.config.tp_size


@dataclass
class ParityMeasurement:
    """What rank 0 measured for one case, and the reasons and diagnoses it found."""

    attention: dict[str, str] = field(default_factory=dict)
    sequence_parallel_effective: bool | None = None
    logits_layout: str | None = None
    local_logits_shape: tuple[int, ...] | None = None
    logits_replica_spread: float | None = None
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
    activation_bounds: dict[str, float] = field(default_factory=dict)
    first_divergent_module: str | None = None
    logits_without_checkpointing_max_abs_diff: float | None = None
    """Gradient checkpointing cases: the same model's logits in eval mode (no checkpointing)."""
    partial_gradients: dict[str, float] = field(default_factory=dict)
    diagnoses: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)


class Parity(Check[ParityConfig, ParityJob, ParityMeasurement | None]):
    name = "parity"
    order = 10
    config_type = ParityConfig
    tolerance = TOLERANCE
    tolerances = FP32
    key_figures = (
        "logits_max_abs_diff",
        "loss_abs_diff",
        "tensors_within_bound",
        "tensors_compared",
        "attention_layouts",
    )

    def plan(self, profile: str, catalogue: ModelCatalogue) -> list[ParityConfig]:
        if profile == "quick":
            base = catalogue.base
            gqa, gqa_tp = catalogue.smallest_gqa()
            return [
                ParityConfig(base, 1),
                ParityConfig(base, 2),
                ParityConfig(base, 2, recompute_causal_mask=False),
                ParityConfig(base, 2, sequence_parallel=True),
                ParityConfig(base, 2, True, recompute_causal_mask=False, gradient_checkpointing=True),
                ParityConfig(gqa, gqa_tp, sequence_parallel=True),
                ParityConfig(
                    gqa,
                    gqa_tp,
                    True,
                    fuse_qkv=True,
                    kv_size_multiplier=explicit_kv_size_multiplier(variant(gqa), gqa_tp),
                ),
            ]
        flash = [
            ParityConfig(catalogue.base, tp, sp, attn_implementation=FLASH)
            for tp, sp in ((1, False), (2, True), (4, True))
        ]
        flash.append(
            ParityConfig(catalogue.base, 2, True, attn_implementation=FLASH, transpose_nki_inputs=False)
        )
        return matrix(catalogue.model_type, FULL_TP_SIZES) + flash + option_cases(catalogue)

    def skip_reason(self, config: ParityConfig) -> str | None:
        return None  # a size the catalogue cannot build is run: its refusal is checked

    def prepare(self, config: ParityConfig, workspace: Workspace, index: int) -> ParityJob:
        from conformance.backends import described

        entry = variant(config.variant)
        model_config = entry.config()
        flash = config.attn_implementation == FLASH
        # The flash kernel's length: the reference kernel takes the parity length, the NKI one multiples of 2048.
        length = (
            described(workspace.settings.backend).flash_sequence_length(PARITY_SEQUENCE_LENGTH)
            if flash
            else PARITY_SEQUENCE_LENGTH
        )
        return ParityJob(
            config=config,
            checkpoint=workspace.checkpoint(entry),
            expected_attention=entry.attention(config.tp_size, config.fuse_qkv),
            rejection=entry.unsupported_reason(config.tp_size),
            vocab_size=model_config.vocab_size,
            flash_limits=tuple(flash_kernel_limits(model_config, length)) if flash else (),
            sequence_length=length,
            pad_token_id=pad_token_id(model_config),
        )

    def on_rank(self, package: ModuleType, job: ParityJob) -> ParityMeasurement | None:
        return measure(package, job, self.tolerances)

    def judge(self, job: ParityJob, value: ParityMeasurement | None) -> Verdict:
        assert value is not None
        reasons = list(value.reasons)
        notes = []
        if job.rejection is not None:
            if value.logits_layout == REPLICATED:
                # The model does not shard the vocabulary (a replicated embedding and lm_head): a vocabulary
                # the TP size does not divide is then valid, and the run is compared like any other.
                notes.append(f"built although {job.rejection}: the model keeps the vocabulary replicated")
            else:
                reasons.insert(0, f"expected a refusal ({job.rejection}) but the model was built and ran")
        return Verdict(
            figures=figures(job, value, COMPARED),
            reasons=list(value.diagnoses) + reasons,
            notes=notes,
            plots=plots(job, value),
        )

    def judge_failure(self, job: ParityJob, error: JobError) -> Verdict:
        base = {"outcome": REJECTED, "expected_attention": job.expected_attention}
        if job.flash_limits and job.rejection is None and not error.crashed:
            expected = describe_limits(list(job.flash_limits), job.sequence_length)
            if refusal_names_a_limit(error.message, list(job.flash_limits)):
                return Verdict(
                    status=Status.UNSUPPORTED,
                    figures={**base, "refused_as_expected": expected},
                    reasons=[f"the model refuses the flash-attention path: {expected} ({error.message})"],
                    traceback=error.traceback,
                )
            return Verdict(
                figures=base,
                reasons=[
                    f"a refusal was expected ({expected}), but the error does not name flash attention and "
                    f"the {' or '.join(job.flash_limits)}: {error.message}"
                ],
                traceback=error.traceback,
            )
        if job.rejection is not None and not error.crashed:
            if names_tp_rejection(error.message, job.tp_size, job.rejection):
                return Verdict(
                    status=Status.PASS,
                    figures={**base, "refused_as_expected": job.rejection},
                    notes=[f"refused as expected: {error.message}"],
                    traceback=error.traceback,
                )
            return Verdict(
                figures=base,
                reasons=[
                    f"refused as expected ({job.rejection}), but the error does not name the tensor parallel "
                    f"size {job.tp_size} and the value it does not divide "
                    f"({', '.join(offending_values(job.rejection))}): {error.message}"
                ],
                traceback=error.traceback,
            )
        verdict = super().judge_failure(job, error)
        verdict.figures.update({"outcome": ERROR, "expected_attention": job.expected_attention})
        return verdict


CHECK = Parity()


def matrix(
    model_type: str,
    tp_sizes: tuple[int, ...] = (1, 2, 4),
    sequence_parallel: tuple[bool, ...] = (False, True),
    variants: tuple[str, ...] | list[str] | None = None,
) -> list[ParityConfig]:
    """The cases that cover an architecture: every catalogue variant (or the named ones) at every T and SP.

    `fuse_qkv` is added where it changes what runs: where it selects the fused `qkv_proj` (heads == kv
    heads), at every SP setting, and where the GQA layer is reached (its fused `weight_qkv`), with SP on
    only (SP changes only the layer's input gather, which the unfused GQA cases cover). SP at T=1 is
    skipped: `TrainingNeuronConfig` turns it off there, so it would repeat the SP-off case.
    """
    cases = []
    for entry in variants_for(model_type):
        if variants is not None and entry.name not in variants:
            continue
        for tp_size in tp_sizes:
            plain, fused = entry.attention(tp_size, False), entry.attention(tp_size, True)
            for sp in sequence_parallel:
                if sp and tp_size == 1:
                    continue
                cases.append(ParityConfig(entry.key, tp_size, sp, False))
                if plain != fused or (plain == "gqa" and sp):
                    cases.append(ParityConfig(entry.key, tp_size, sp, True))
    return cases


def option_cases(catalogue: ModelCatalogue) -> list[ParityConfig]:
    """The full profile's cases of the `TrainingNeuronConfig` options the matrix leaves at their default:
    the padding mask honoured (`recompute_causal_mask=False`) at every layout the base variant reaches and
    on the `features` variant (sliding windows, biases), gradient checkpointing with the mask recomputed and
    honoured, and an explicit `kv_size_multiplier` on the GQA layer (`explicit_kv_size_multiplier`)."""
    base = catalogue.base
    cases = [
        ParityConfig(base, 1, recompute_causal_mask=False),
        ParityConfig(base, 2, recompute_causal_mask=False),
        ParityConfig(base, 2, True, recompute_causal_mask=False),
        ParityConfig(base, 4, True, recompute_causal_mask=False),
        ParityConfig(base, 2, gradient_checkpointing=True),
        ParityConfig(base, 2, True, gradient_checkpointing=True),
        ParityConfig(base, 2, True, recompute_causal_mask=False, gradient_checkpointing=True),
    ]
    features = catalogue.key("features")
    if "features" in catalogue.variants:
        cases.append(ParityConfig(features, 2, True, recompute_causal_mask=False))
    for key, tp_size in ((base, 4), catalogue.smallest_gqa()):
        multiplier = explicit_kv_size_multiplier(variant(key), tp_size)
        if multiplier is not None:
            cases.append(ParityConfig(key, tp_size, True, kv_size_multiplier=multiplier))
    return list(dict.fromkeys(cases))


def explicit_kv_size_multiplier(entry: Any, tp_size: int) -> int | None:
    """A `kv_size_multiplier` to pass explicitly where `entry` reaches the GQA layer at `tp_size`: twice
    the inferred one where NxD's layer takes it (it divides T, every rank holds whole K/V heads and can
    pair its query heads with them), so that a model ignoring the option builds a different layer; else
    the inferred one; None off the GQA layer."""
    if entry.attention(tp_size) != "gqa":
        return None
    config = entry.config()
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    inferred = max(1, tp_size // kv_heads)
    doubled = 2 * inferred
    if tp_size % doubled == 0 and (kv_heads * doubled) % tp_size == 0 and heads % (kv_heads * doubled) == 0:
        return doubled
    return inferred


# --- on the ranks -------------------------------------------------------------------------------------


class _AllParameters:
    """What the sequence-parallel gradient all-reduce reads from an optimizer: its parameter groups."""

    def __init__(self, model: torch.nn.Module):
        self.param_groups = [{"params": list(model.parameters())}]


def measure(package: ModuleType, job: ParityJob, tolerances: Tolerances) -> ParityMeasurement | None:
    """Load, forward, backward on every rank; rank 0 compares with transformers. Rank 0's measurement."""
    from neuronx_distributed.parallel_layers.grads import allreduce_sequence_parallel_gradients

    from conformance.backends import active

    host = active()
    config = job.config
    batch = job.batch()
    model, trn_config, info = load_parallel(
        package,
        job.checkpoint,
        config.tp_size,
        attn_implementation=config.attn_implementation,
        **config.training_options(),
    )
    without_checkpointing = None
    if config.gradient_checkpointing:
        without_checkpointing = rank_step(
            f"the forward without gradient checkpointing at T={config.tp_size}",
            lambda: _eval_logits(model, batch, job, host),
        )
        rank_step("enabling gradient checkpointing", lambda: _train_with_checkpointing(model))
    recorder = ActivationRecorder(model)

    def forward_backward() -> Any:
        try:
            with host.flash_kernel_taking(job.sequence_length):
                output = model(**batch.model_inputs())
                output.loss.backward()
        finally:
            recorder.remove()
        return output

    output = rank_step(f"forward and backward at T={config.tp_size}", forward_backward)
    # optimum-neuron's optimizer step sums the gradients of parameters marked `sequence_parallel_enabled`
    # over TP, and only when sequence parallelism is on; the check sees what that step would use.
    if trn_config.sequence_parallel_enabled:
        allreduce_sequence_parallel_gradients(_AllParameters(model))
    found = ParityMeasurement(sequence_parallel_effective=bool(trn_config.sequence_parallel_enabled))
    logits = None
    try:
        full = full_vocabulary_logits(output.logits, job.vocab_size)
        logits = full.logits
        found.logits_layout, found.local_logits_shape = full.layout, full.local_shape
        found.logits_replica_spread = full.replica_spread
    except LogitsLayoutError as error:  # raised on every rank alike (the shapes were exchanged)
        found.local_logits_shape = tuple(output.logits.shape)
        found.reasons.append(str(error))
    grads, no_gradient = {}, []
    for name, param in model.named_parameters():
        if param.grad is None:
            no_gradient.append(name)
            grads[name] = torch.zeros_like(param.detach())
        else:
            grads[name] = param.grad.detach().clone()
    batch_size, seq_len = batch.input_ids.shape
    activations = gather_activations(
        recorder.outputs, batch_size, seq_len, bool(trn_config.sequence_parallel_enabled)
    )
    gathered = gather_to_rank_0(grads)
    metadata = host.host_module("transformations_utils").create_parameter_metadata(model)
    if not is_rank_zero():
        return None
    assert gathered is not None
    found.attention = attention_layouts(model)
    found.no_gradient = no_gradient
    found.missing_keys = sorted(info.get("missing_keys", []))
    found.unexpected_keys = sorted(info.get("unexpected_keys", []))
    sp_flags = {
        name: bool(getattr(p, "sequence_parallel_enabled", False)) for name, p in model.named_parameters()
    }
    run = RankRun(
        logits=logits,
        loss=float(output.loss.detach()),
        activations=activations,
        gathered=gathered,
        metadata=metadata,
        sequence_parallel_flags=sp_flags,
        without_checkpointing=without_checkpointing,
    )
    compare(found, job, tolerances, run, model)
    return found


def _eval_logits(model: torch.nn.Module, batch: FixedBatch, job: ParityJob, host: Any) -> torch.Tensor | None:
    """The model's full-vocabulary logits in eval mode, no grad (a collective); None for an unknown layout."""
    model.eval()
    with torch.no_grad(), host.flash_kernel_taking(job.sequence_length):
        local = model(**batch.model_inputs()).logits
    try:
        return full_vocabulary_logits(local, job.vocab_size).logits
    except LogitsLayoutError:
        return None


def _train_with_checkpointing(model: torch.nn.Module) -> None:
    """What optimum-neuron's trainer does with `gradient_checkpointing=True` (PP = 1): the model's
    `gradient_checkpointing_enable`, then training mode (here with dropout off: the runs are compared)."""
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={})
    model.train()
    switch_off_dropout(model)


@dataclass
class RankRun:
    """What rank 0 holds of the parallel run when it compares."""

    logits: torch.Tensor | None
    loss: float
    activations: dict[str, torch.Tensor]
    gathered: list[dict[str, torch.Tensor]]
    metadata: dict[str, Any]
    sequence_parallel_flags: dict[str, bool]
    without_checkpointing: torch.Tensor | None = None


def compare(
    found: ParityMeasurement,
    job: ParityJob,
    tolerances: Tolerances,
    run: RankRun,
    model: torch.nn.Module,
) -> None:
    """Rank 0: every judgement of a case whose parallel run completed on all ranks."""
    honours = job.config.honours_padding
    reference = reference_run(job.checkpoint, job.vocab_size, job.sequence_length, job.pad_token_id, honours)
    positions = job.batch().compared_positions(honours)
    if found.missing_keys or found.unexpected_keys:
        found.reasons.append(
            f"checkpoint keys not loaded: missing {found.missing_keys}, unexpected {found.unexpected_keys}"
        )
    found.reasons += attention_reasons(found.attention, job.expected_attention)
    found.reasons += kv_multiplier_reasons(model, job.config.kv_size_multiplier)
    assert reference.constants is not None
    found.reasons += constant_reasons(
        module_constants(model), reference.constants, config_values(job.checkpoint)
    )
    logits = run.logits
    if logits is not None:
        shapes_match = logits.shape == reference.logits.shape
        outputs = compare_outputs(
            logits[positions] if shapes_match else logits,
            reference.logits[positions] if shapes_match else reference.logits,
            run.loss,
            reference.loss,
            tolerances.logits_atol,
            tolerances.loss_atol,
        )
        found.logits_max_abs_diff = outputs.logits_max_abs_diff
        found.reasons += outputs.reasons
        if found.logits_replica_spread and found.logits_replica_spread > tolerances.logits_atol:
            found.reasons.append(
                f"the full-vocabulary logits differ between ranks (max |rank r - rank 0| "
                f"{found.logits_replica_spread:.3g} > {tolerances.logits_atol:g})"
            )
        key = (job.checkpoint, job.vocab_size, job.sequence_length, job.pad_token_id)
        diagnosed = diagnose_inputs(
            ForwardMiss(logits, found.logits_max_abs_diff, run.without_checkpointing, positions),
            lambda honours, default_positions: (
                reference_run(*key, honours, default_positions=default_positions, backward=False).logits
            ),
            job.config.honours_padding,
            job.config.gradient_checkpointing,
            tolerances.logits_atol,
        )
        found.logits_without_checkpointing_max_abs_diff = diagnosed.without_checkpointing_error
        found.diagnoses += diagnosed.diagnoses
    found.loss, found.reference_loss = run.loss, reference.loss
    found.loss_abs_diff = abs(run.loss - reference.loss)
    if logits is None and not found.loss_abs_diff <= tolerances.loss_atol:
        found.reasons.append(f"loss differs: |delta| {found.loss_abs_diff:.3g} > {tolerances.loss_atol:g}")
    divergence = locate_forward_divergence(
        run.activations, reference.activations, tolerances.logits_atol, positions
    )
    found.activation_errors = divergence.errors
    found.activation_bounds = {
        name: tolerances.logits_atol * max(1.0, float(reference.activations[name].abs().max()))
        for name in divergence.errors
    }
    found.first_divergent_module = divergence.first_divergent_module
    if divergence.diagnosis:
        found.diagnoses.append(divergence.diagnosis)
    consolidated, kv_spread, replicated_spread = consolidate_gradients(run.gathered, run.metadata)
    gradients = compare_gradients(consolidated, reference.grads, tolerances.gradient)
    found.gradients = gradients.figures
    found.missing_gradients, found.unexpected_gradients = gradients.missing, gradients.unexpected
    found.reasons += gradients.reasons
    found.kv_replica_disagreement, found.replicated_disagreement = dict(kv_spread), dict(replicated_spread)
    found.reasons += kv_replica_reasons(kv_spread, found.gradients, tolerances.grad_atol)
    found.reasons += replicated_reasons(replicated_spread, found.gradients, tolerances.grad_atol)
    found.diagnoses += padding_row_diagnoses(
        found.gradients, consolidated, reference.grads, job.pad_token_id, job.vocab_size
    )
    forward_right = (
        found.logits_max_abs_diff is not None and found.logits_max_abs_diff <= tolerances.logits_atol
    )
    missing = missing_gradient_diagnosis(found.no_gradient, forward_right)
    if missing:
        found.diagnoses.append(missing)
    found.partial_gradients, diagnoses = partial_gradients(
        found.gradients,
        run.gathered,
        reference.grads,
        run.metadata["parameters"],
        run.sequence_parallel_flags,
        bool(found.sequence_parallel_effective),
    )
    found.diagnoses += diagnoses


def kv_multiplier_reasons(model: torch.nn.Module, requested: int | None) -> list[str]:
    """An explicit `kv_size_multiplier` must be the one every GQA layer of the model uses."""
    if requested is None:
        return []
    from neuronx_distributed.modules.qkv_linear import GQAQKVColumnParallelLinear

    used = {
        name: getattr(module, "kv_size_multiplier", None)
        for name, module in model.named_modules()
        if isinstance(module, GQAQKVColumnParallelLinear)
    }
    wrong = {name: value for name, value in used.items() if value != requested}
    if not wrong:
        return []
    return [
        f"TrainingNeuronConfig(kv_size_multiplier={requested}) was given, but the GQA layers use {wrong}: "
        "the model must read trn_config.kv_size_multiplier and infer it only when it is None"
    ]


def attention_reasons(attention: dict[str, str], expected: str | None) -> list[str]:
    """The layout every attention module reached must be the prescribed one."""
    if not attention:
        return ["no attention module found (no qkv_proj, nor q_proj/k_proj/v_proj children)"]
    wrong = {name: found for name, found in attention.items() if found != expected}
    return [f"attention layout should be {expected!r}, got {wrong}"] if wrong else []


# --- the verdict ----------------------------------------------------------------------------------------


def figures(job: ParityJob, found: ParityMeasurement, outcome: str) -> dict[str, Any]:
    """What a parity row shows (every figure, whether it passed or not)."""
    ratios = {name: figure.ratio for name, figure in found.gradients.items()}
    worst = sorted(ratios.items(), key=lambda item: (-item[1], item[0]))[:5]
    return {
        "outcome": outcome,
        "refused_as_expected": None,
        "expected_attention": job.expected_attention,
        "attention_layouts": sorted(set(found.attention.values())),
        "attention_by_module": dict(found.attention),
        "sequence_parallel_effective": found.sequence_parallel_effective,
        "logits_layout": found.logits_layout,
        "local_logits_shape": list(found.local_logits_shape) if found.local_logits_shape else None,
        "logits_max_abs_diff": found.logits_max_abs_diff,
        "logits_without_checkpointing_max_abs_diff": found.logits_without_checkpointing_max_abs_diff,
        "loss": found.loss,
        "reference_loss": found.reference_loss,
        "loss_abs_diff": found.loss_abs_diff,
        "tensors_compared": len(found.gradients),
        "tensors_within_bound": sum(figure.within for figure in found.gradients.values()),
        "worst_gradient_ratios": dict(worst),
        "gradient_ratios": {name: ratios[name] for name in sorted(ratios)},
        "gradients_out_of_bound": sorted(
            name for name, figure in found.gradients.items() if not figure.within
        ),
        "missing_gradients": list(found.missing_gradients),
        "unexpected_gradients": list(found.unexpected_gradients),
        "no_gradient": list(found.no_gradient),
        "partial_gradients": sorted(found.partial_gradients),
        "load_missing_keys": list(found.missing_keys),
        "load_unexpected_keys": list(found.unexpected_keys),
        "max_kv_replica_disagreement": max(found.kv_replica_disagreement.values(), default=None),
        "kv_replica_disagreement": dict(found.kv_replica_disagreement),
        "max_replicated_disagreement": max(found.replicated_disagreement.values(), default=None),
        "replicated_disagreement": dict(found.replicated_disagreement),
        "first_divergent_module": found.first_divergent_module,
        "activation_errors": dict(found.activation_errors),
    }


def plots(job: ParityJob, found: ParityMeasurement) -> list[Any]:
    """Every gradient's error against its bound, and the forward's error per module against its bound."""
    title = configuration_label(job.config.as_dict())
    drawn = []
    if found.gradients:
        ratios = {name: found.gradients[name].ratio for name in sorted(found.gradients)}
        drawn.append(
            ratio_bars(
                f"gradient error relative to its bound, {title}",
                "tensor (transformers name)",
                "max |d grad| / bound",
                "gradient error / bound",
                ratios,
            )
        )
    if found.activation_errors:
        ratios = {
            name: error / found.activation_bounds[name] if found.activation_bounds.get(name) else math.inf
            for name, error in found.activation_errors.items()
        }
        drawn.append(
            ratio_bars(
                f"forward error per module (in execution order), {title}",
                "module",
                "max |d output| / bound",
                "max |parallel - transformers| / bound",
                ratios,
            )
        )
    return drawn
