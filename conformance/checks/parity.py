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

Mixture of experts (docs/moe-conformance.md): the loss holds the auxiliary load-balancing loss, compared with
transformers' over the tokens the padding mask keeps (`transformers_reference`); a loss that differs while
the logits agree is named by the variant of the auxiliary loss it matches (divided by top_k as NxD's
`load_balancing_loss_func`, without the padding mask, left out...). With expert parallelism (`ep_size`, T x EP
ranks) each EP rank is a data-parallel rank feeding its own rows of the batch: the logits, activations and
router logits are put back together in the batch's order and compared with transformers on the whole
batch, each rank's loss with transformers' on its rows, and the gradients after optimum-neuron's
data-parallel reductions (experts averaged over the ranks holding them) with the mean of transformers'
gradients over the ranks' rows; every non-expert gradient must then be the same on every data-parallel
rank. The routing figures (`comparisons.routing`: transformers' router margin, tokens per expert per
layer, tokens the parallel model routed to other experts, choices a capacity factor dropped) stand beside
the parity figures, and a token routed elsewhere than transformers' is a reason of its own.
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
from conformance.comparisons.gradient_consolidation import consolidate_gradients, data_parallel_disagreement
from conformance.comparisons.gradients import (
    GradientBound,
    GradientFigure,
    compare_gradients,
    kv_replica_reasons,
    replicated_partials,
    replicated_reasons,
)
from conformance.comparisons.input_handling import ForwardMiss, diagnose_inputs
from conformance.comparisons.module_constants import constant_reasons, module_constants
from conformance.comparisons.outputs import compare_outputs
from conformance.comparisons.plots import ratio_bars
from conformance.comparisons.routing import (
    ExpertLayout,
    RoutingFigures,
    auxiliary_loss_diagnosis,
    compare_routing,
    dropped_choices,
    expert_layout,
    is_sparse_block,
)
from conformance.harness.job_errors import JobError
from conformance.harness.protocol import Check, CheckConfig, Exercised, Verdict, Workspace, size_label
from conformance.harness.rank_steps import is_rank_zero, rank_step
from conformance.model_runs.activation_trace import ActivationRecorder, gather_activations
from conformance.model_runs.attention_layouts import attention_layouts
from conformance.model_runs.compared_checkpoints import switch_off_dropout
from conformance.model_runs.data_parallel import gather_rows, gather_values, rank_batch, row_shares
from conformance.model_runs.fixed_batch import FixedBatch, fixed_batch, pad_token_id
from conformance.model_runs.flash_kernel_limits import describe as describe_limits
from conformance.model_runs.flash_kernel_limits import flash_kernel_limits, refusal_names_a_limit
from conformance.model_runs.logits import REPLICATED, LogitsLayoutError, full_vocabulary_logits
from conformance.model_runs.neuron_optimizer import neuron_gradient_step
from conformance.model_runs.parallel_model import load_parallel
from conformance.model_runs.rank_gather import gather_to_rank_0
from conformance.model_runs.transformers_reference import config_values, reference_run
from conformance.results import Status, configuration_label
from reference_models import variant, variants_for
from reference_models.catalogue import PARITY_SEQUENCE_LENGTH, key_value_heads
from reference_models.routing import MIN_ROUTER_MARGIN

if TYPE_CHECKING:
    from conformance.profiles import ModelCatalogue

COMPARED, REJECTED, ERROR = "compared", "rejected", "error"
FLASH = "flash_attention_2"
FULL_TP_SIZES = (1, 2, 4, 8)
MOE_TP_SIZES = (1, 2, 4)
"""A mixture of experts' full profile: T up to 4, each also at EP=2 (8 ranks at most)."""


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
            "margin). Every sharding bug seen so far is O(1) relative. A gradient of a coarser dtype (a "
            "parameter the source creates in bf16 inside the fp32 model) is rounded at each step on both sides, "
            "so its relative bound is at least (3n - 1 + 3m - 1) * eps/2 of that dtype, n and m the per-rank and "
            "per-share gradients summed into it on each side (n = T for a replicated parameter, times the data-"
            "parallel size): each gradient within 2 roundings, each addition 1 (comparisons.gradients."
            "rounding_rtol); bf16 at T=2: 7 * 2^-8 = 2.7%, measured 0.45% on apertus' xIELU alpha_p/alpha_n "
            f"at T=2, while a missing TP sum or a doubled gradient is O(1). For fp32 it is ~1e-6, below "
            f"{number(self.grad_rtol)}. Mixture of experts: top-k routing is "
            "discontinuous, so the catalogue's MoE checkpoints separate every compared token's k-th and (k+1)-th "
            f"router logit by at least {MIN_ROUTER_MARGIN:g} (reference_models.routing); the parallel router's "
            "logits differ from transformers' by reordered sums, ~1e-7 (measured on mixtral and qwen3_moe at T <= 2, "
            "EP <= 2: max |d logits| 5.4e-7, |d loss| 9.5e-7, gradient error 1e-2 of the bound), so every token takes "
            "transformers' experts and the bounds above apply unchanged."
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
    ep_size: int = 1
    """Expert parallelism (mixture-of-experts models): T x EP ranks, each EP rank feeding its own rows."""

    HIDDEN_WHEN_DEFAULT: ClassVar[frozenset[str]] = frozenset(
        {
            "attn_implementation",
            "recompute_causal_mask",
            "gradient_checkpointing",
            "kv_size_multiplier",
            "transpose_nki_inputs",
            "ep_size",
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
        return Exercised((self.tp_size,), tuple(options), self.attn_implementation, ep_sizes=(self.ep_size,))


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

    @property
    def ep_size(self) -> int:
        return self.config.ep_size


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
    losses: list[float] = field(default_factory=list)
    """Each data-parallel rank's loss (one without data parallelism), and transformers' on its rows."""
    reference_losses: list[float] = field(default_factory=list)
    data_parallel_disagreement: dict[str, float] = field(default_factory=dict)
    routing: RoutingFigures | None = None
    diagnoses: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


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
        "routing",
    )

    def plan(self, profile: str, catalogue: ModelCatalogue) -> list[ParityConfig]:
        moe = moe_cases(catalogue, profile)
        if profile == "quick":
            base = catalogue.base
            gqa, gqa_tp = catalogue.smallest_gqa()
            return list(
                dict.fromkeys(
                    [
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
                        *moe,
                    ]
                )
            )
        flash = [
            ParityConfig(catalogue.base, tp, sp, attn_implementation=FLASH)
            for tp, sp in ((1, False), (2, True), (4, True))
        ]
        flash.append(
            ParityConfig(catalogue.base, 2, True, attn_implementation=FLASH, transpose_nki_inputs=False)
        )
        tp_sizes = MOE_TP_SIZES if catalogue.is_moe else FULL_TP_SIZES
        return matrix(catalogue.model_type, tp_sizes) + moe + flash + option_cases(catalogue)

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
            rejection=entry.unsupported_reason(config.tp_size, config.ep_size),
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
        notes = list(value.notes)
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
                if entry.unsupported_reason(tp_size):
                    continue  # a vocab-parallel model must refuse it: one case per SP setting shows that
                if plain != fused or (plain == "gqa" and sp):
                    cases.append(ParityConfig(entry.key, tp_size, sp, True))
    return cases


def moe_cases(catalogue: ModelCatalogue, profile: str) -> list[ParityConfig]:
    """Expert-parallel cases of a mixture of experts (none for a dense model): the quick profile's one at
    T=2 with SP (the all-to-all, the data-parallel split of the batch and the optimizer's expert-parallel
    reductions together), the full profile's at every T up to 4, SP on and off."""
    if not catalogue.is_moe:
        return []
    base = catalogue.base
    if profile == "quick":
        return [ParityConfig(base, 2, True, ep_size=2)]
    return [
        ParityConfig(base, tp, sp, ep_size=2)
        for tp in MOE_TP_SIZES
        for sp in (False, True)
        if not (sp and tp == 1)
    ]


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
    heads, kv_heads = config.num_attention_heads, key_value_heads(config)
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
    """Load, forward, backward on every rank; rank 0 compares with transformers. Rank 0's measurement.

    With expert parallelism each data-parallel rank feeds its own rows of the batch (`data_parallel`);
    what they computed per row is put back together in the batch's order before rank 0 compares.
    """
    from conformance.backends import active

    host = active()
    config = job.config
    batch = job.batch()
    local = rank_batch(batch)
    batch_size, seq_len = batch.input_ids.shape
    sizes = size_label(config.tp_size, config.ep_size)
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
            f"the forward without gradient checkpointing at {sizes}",
            lambda: _eval_logits(model, local, job, host),
        )
        rank_step("enabling gradient checkpointing", lambda: _train_with_checkpointing(model))
    else:
        # Gradients are what training computes: NxD's layers take other paths in evaluation (an MoE router
        # under SP keeps its shard's logits there, and its backward is not the training one).
        _training_mode(model)
    recorder = ActivationRecorder(model)

    def forward_backward() -> Any:
        try:
            with host.flash_kernel_taking(job.sequence_length):
                output = model(**local.model_inputs())
                output.loss.backward()
        finally:
            recorder.remove()
        return output

    output = rank_step(f"forward and backward at {sizes}", forward_backward)
    # optimum-neuron's optimizer step: under SP only, the TP sum of the gradients of parameters marked
    # `sequence_parallel_enabled`; then the data-parallel mean (experts over the ranks holding them).
    neuron_gradient_step(bool(trn_config.sequence_parallel_enabled), None)(_AllParameters(model))
    found = ParityMeasurement(sequence_parallel_effective=bool(trn_config.sequence_parallel_enabled))
    logits = None
    try:
        full = full_vocabulary_logits(output.logits, job.vocab_size)
        logits = gather_rows(full.logits, batch_size)
        found.logits_layout, found.local_logits_shape = full.layout, full.local_shape
        found.logits_replica_spread = full.replica_spread
    except LogitsLayoutError as error:  # raised on every rank alike (the shapes were exchanged)
        found.local_logits_shape = tuple(output.logits.shape)
        found.reasons.append(str(error))
    layout = expert_layout(model)
    local_router_logits = _router_logits(output)
    dropped = sum(gather_values(dropped_choices(local_router_logits or (), layout) if layout else 0))
    router_logits = _gathered_router_logits(local_router_logits, local, batch_size)
    losses = gather_values(float(output.loss.detach()))
    grads, no_gradient = {}, []
    for name, param in model.named_parameters():
        if param.grad is None:
            no_gradient.append(name)
            grads[name] = torch.zeros_like(param.detach())
        else:
            grads[name] = param.grad.detach().clone()
    local_rows = local.input_ids.shape[0]
    activations = {
        name: gather_rows(value, batch_size) if value.shape[0] == local_rows else value
        for name, value in gather_activations(
            recorder.outputs, local_rows, seq_len, bool(trn_config.sequence_parallel_enabled)
        ).items()
    }
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
        loss=sum(losses) / len(losses),
        activations=activations,
        gathered=gathered,
        metadata=metadata,
        sequence_parallel_flags=sp_flags,
        without_checkpointing=without_checkpointing,
        losses=losses,
        router_logits=router_logits,
        expert_layout=layout,
        dropped_choices=dropped,
    )
    compare(found, job, tolerances, run, model)
    return found


def _router_logits(output: Any) -> tuple[torch.Tensor, ...] | None:
    """The router logits the model returned (per sparse layer), detached; None when it returned none."""
    found = getattr(output, "router_logits", None)
    if not found:
        return None
    return tuple(layer.detach().float() for layer in found)


def _gathered_router_logits(
    local: tuple[torch.Tensor, ...] | None, batch: FixedBatch, batch_size: int
) -> tuple[torch.Tensor, ...] | None:
    """Every data-parallel rank's router logits `(rows * S, E)`, back in the batch's row order (a
    collective); a layer of another shape is kept as this rank returned it (and judged so)."""
    if local is None:
        return None
    rows, seq_len = batch.input_ids.shape
    found = []
    for layer in local:
        if layer.dim() == 2 and layer.shape[0] == rows * seq_len:
            whole = gather_rows(layer.reshape(rows, seq_len, -1), batch_size)
            found.append(whole.reshape(batch_size * seq_len, -1))
        else:
            found.append(layer)
    return tuple(found)


def _eval_logits(model: torch.nn.Module, batch: FixedBatch, job: ParityJob, host: Any) -> torch.Tensor | None:
    """The model's full-vocabulary logits in eval mode, no grad, on this rank's rows `batch`, gathered into
    the whole batch (a collective); None for an unknown layout."""
    model.eval()
    with torch.no_grad(), host.flash_kernel_taking(job.sequence_length):
        local = model(**batch.model_inputs()).logits
    try:
        return gather_rows(
            full_vocabulary_logits(local, job.vocab_size).logits, job.batch().input_ids.shape[0]
        )
    except LogitsLayoutError:
        return None


def _train_with_checkpointing(model: torch.nn.Module) -> None:
    """What optimum-neuron's trainer does with `gradient_checkpointing=True` (PP = 1): the model's
    `gradient_checkpointing_enable`, then training mode (here with dropout off: the runs are compared)."""
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={})
    _training_mode(model)


def _training_mode(model: torch.nn.Module) -> None:
    """Training mode, as optimum-neuron's trainer runs the model, with dropout off (the runs are compared)."""
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
    losses: list[float] = field(default_factory=list)
    """Each data-parallel rank's loss, in data-parallel rank order (one without data parallelism)."""
    router_logits: tuple[torch.Tensor, ...] | None = None
    expert_layout: ExpertLayout | None = None
    dropped_choices: int = 0


def compare(
    found: ParityMeasurement,
    job: ParityJob,
    tolerances: Tolerances,
    run: RankRun,
    model: torch.nn.Module,
) -> None:
    """Rank 0: every judgement of a case whose parallel run completed on all ranks.

    The logits, activations and router logits (put back in the batch's order) are compared with
    transformers on the whole batch; each data-parallel rank's loss with transformers' on that rank's rows,
    and the gradients (after the data-parallel mean) with the mean of transformers' gradients over the
    ranks' rows: the gradient of the loss optimum-neuron's training minimises.
    """
    honours = job.config.honours_padding
    key = (job.checkpoint, job.vocab_size, job.sequence_length, job.pad_token_id)
    reference = reference_run(*key, honours)
    batch = job.batch()
    positions = batch.compared_positions(honours)
    shares = row_shares(len(run.losses), batch.input_ids.shape[0]) if len(run.losses) > 1 else []
    share_runs = [reference_run(*key, honours, rows=rows) for rows in shares] or [reference]
    reference_losses = [share.loss for share in share_runs]
    reference_grads = _mean_gradients([share.grads for share in share_runs])
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
    losses = run.losses or [run.loss]
    found.losses, found.reference_losses = list(losses), list(reference_losses)
    worst = max(range(len(losses)), key=lambda d: abs(losses[d] - reference_losses[d]))
    logits = run.logits
    if logits is not None:
        shapes_match = logits.shape == reference.logits.shape
        outputs = compare_outputs(
            logits[positions] if shapes_match else logits,
            reference.logits[positions] if shapes_match else reference.logits,
            losses[worst],
            reference_losses[worst],
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
    found.loss = sum(losses) / len(losses)
    found.reference_loss = sum(reference_losses) / len(reference_losses)
    found.loss_abs_diff = abs(losses[worst] - reference_losses[worst])
    if logits is None and not found.loss_abs_diff <= tolerances.loss_atol:
        found.reasons.append(f"loss differs: |delta| {found.loss_abs_diff:.3g} > {tolerances.loss_atol:g}")
    forward_right = (
        found.logits_max_abs_diff is not None and found.logits_max_abs_diff <= tolerances.logits_atol
    )
    if forward_right and not found.loss_abs_diff <= tolerances.loss_atol:
        found.diagnoses += auxiliary_loss_diagnosis(
            found.loss - found.reference_loss,
            [share.loss_terms for share in share_runs],
            tolerances.loss_atol,
        )
    if reference.router_logits:
        routing = compare_routing(
            reference.router_logits,
            run.router_logits,
            int(config_values(job.checkpoint)["num_experts_per_tok"]),
            positions,
            run.expert_layout,
            run.dropped_choices,
            tolerances.logits_atol,
        )
        found.routing = routing
        found.reasons += routing.reasons
        found.notes += routing.notes
    divergence = locate_forward_divergence(
        run.activations,
        reference.activations,
        tolerances.logits_atol,
        positions,
        frozenset(name for name, module in model.named_modules() if is_sparse_block(module)),
    )
    found.activation_errors = divergence.errors
    found.activation_bounds = {
        name: tolerances.logits_atol * max(1.0, float(reference.activations[name].abs().max()))
        for name in divergence.errors
    }
    found.first_divergent_module = divergence.first_divergent_module
    if divergence.diagnosis:
        found.diagnoses.append(divergence.diagnosis)
    tp_size = job.config.tp_size
    consolidated, kv_spread, replicated_spread = consolidate_gradients(
        run.gathered, run.metadata, tp_size, job.config.ep_size
    )
    gradients = compare_gradients(
        consolidated,
        reference_grads,
        tolerances.gradient,
        replicated_partials(run.metadata["parameters"], tp_size, len(losses)),
        len(share_runs),
    )
    found.gradients = gradients.figures
    found.missing_gradients, found.unexpected_gradients = gradients.missing, gradients.unexpected
    found.reasons += gradients.reasons
    found.kv_replica_disagreement, found.replicated_disagreement = dict(kv_spread), dict(replicated_spread)
    found.reasons += kv_replica_reasons(kv_spread, found.gradients, tolerances.grad_atol)
    found.reasons += replicated_reasons(replicated_spread, found.gradients, tolerances.grad_atol)
    found.data_parallel_disagreement = data_parallel_disagreement(
        run.gathered, run.metadata["parameters"], tp_size
    )
    found.reasons += data_parallel_reasons(found.data_parallel_disagreement)
    found.diagnoses += padding_row_diagnoses(
        found.gradients, consolidated, reference_grads, job.pad_token_id, job.vocab_size
    )
    missing = missing_gradient_diagnosis(found.no_gradient, forward_right)
    if missing:
        found.diagnoses.append(missing)
    found.partial_gradients, diagnoses = partial_gradients(
        found.gradients,
        run.gathered[:tp_size],
        reference_grads,
        run.metadata["parameters"],
        run.sequence_parallel_flags,
        bool(found.sequence_parallel_effective),
    )
    found.diagnoses += diagnoses


def _mean_gradients(per_share: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The mean over data-parallel shares of transformers' gradients (the gradient of the mean loss)."""
    if len(per_share) == 1:
        return per_share[0]
    return {name: sum(grads[name] for grads in per_share) / len(per_share) for name in per_share[0]}


def data_parallel_reasons(spread: dict[str, float]) -> list[str]:
    """After the data-parallel mean every data-parallel (expert-parallel) rank must hold the same gradient
    of a non-expert parameter: the optimizer's all-reduce gives every rank the same sum."""
    differing = {name: value for name, value in spread.items() if value != 0.0}
    if not differing:
        return []
    worst = max(differing, key=differing.__getitem__)
    return [
        f"{len(differing)} non-expert parameter(s) hold different gradients on different data-parallel "
        f"(expert-parallel) ranks after the optimizer's data-parallel mean, worst {worst} (max |rank d - rank 0| "
        f"{differing[worst]:.3g}): a parameter marked expert_model_parallel that is not split over the experts, "
        "or one the optimizer's reductions skip"
    ]


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
        **_parallel_figures(found),
    }


def _parallel_figures(found: ParityMeasurement) -> dict[str, Any]:
    """Data-parallel and routing figures, where the case has them (expert parallelism, a MoE model)."""
    extra: dict[str, Any] = {}
    if len(found.losses) > 1:
        extra["data_parallel_losses"] = list(found.losses)
        extra["data_parallel_reference_losses"] = list(found.reference_losses)
        extra["max_data_parallel_disagreement"] = max(found.data_parallel_disagreement.values(), default=None)
    if found.routing is not None:
        extra.update(found.routing.figures())
    return extra


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
