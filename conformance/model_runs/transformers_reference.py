"""transformers' model on a catalogue checkpoint and the fixed batch: the oracle of the parity check.

`reference_run` loads `AutoModelForCausalLM` (eager attention, fp32, eval mode: no dropout) and runs one
forward and backward on the batch as `FixedBatch.reference_inputs` gives it (the padding mask, or the
causal mask only, for the model it is compared with); it returns the logits, the loss, every gradient,
the traced module outputs and the model's configuration constants. Runs are cached: every parity case of a
variant shares them, and the diagnoses that ask "what would transformers give with the mask dropped"
only pay for a forward when a case fails. `rows` runs a data-parallel rank's share of the batch.

Mixture of experts: the loss holds the auxiliary load-balancing loss, which transformers computes over the
tokens its `attention_mask` keeps. A model compared with the causal mask only (`recompute_causal_mask=True`)
ignores the padding mask in attention, as optimum-neuron promises, but still receives it and must leave the
padding tokens out of the load balance as transformers does given that mask: the reference loss is then
transformers' cross entropy with the causal mask only plus `router_aux_loss_coef` times transformers' own
`load_balancing_loss_func` of those router logits with the batch's padding mask.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass, field
from typing import Any

import torch

from conformance.comparisons.module_constants import ModuleConstants, module_constants

from .activation_trace import ActivationRecorder
from .fixed_batch import fixed_batch


@dataclass(frozen=True)
class ReferenceRun:
    logits: torch.Tensor
    loss: float
    grads: dict[str, torch.Tensor] = field(default_factory=dict)
    activations: dict[str, torch.Tensor] = field(default_factory=dict)
    constants: ModuleConstants | None = None
    router_logits: tuple[torch.Tensor, ...] = ()
    """Mixture of experts: each sparse layer's router logits `(B * S, E)` (empty for a dense model)."""
    loss_terms: LossTerms | None = None
    """Mixture of experts: the auxiliary loss and its variants (to name what a differing loss did)."""


@dataclass(frozen=True)
class LossTerms:
    """The auxiliary load-balancing loss of a transformers MoE run: over the tokens the padding mask keeps
    (what the loss holds), over every token, its coefficient and the model's top k."""

    aux_loss: float
    aux_loss_every_token: float
    coefficient: float
    top_k: int


@functools.lru_cache(maxsize=16)
def reference_run(
    checkpoint: str,
    vocab_size: int,
    sequence_length: int,
    pad_token_id: int,
    honours_padding: bool,
    default_positions: bool = False,
    backward: bool = True,
    rows: tuple[int, ...] | None = None,
) -> ReferenceRun:
    """transformers on the batch (see the module docstring); `default_positions` leaves `position_ids`
    out and `backward=False` gives the forward only (both for diagnoses); `rows` takes those rows only."""
    from transformers import AutoModelForCausalLM

    batch = fixed_batch(vocab_size, sequence_length, pad_token_id)
    if rows is not None:
        batch = batch.rows(rows)
    inputs = batch.reference_inputs(honours_padding, default_positions=default_positions)
    model = AutoModelForCausalLM.from_pretrained(checkpoint, attn_implementation="eager", dtype=torch.float32)
    model.eval()
    if not backward:
        with torch.no_grad():
            output = model(**inputs)
            loss, terms = training_loss(model, output, batch.attention_mask)
        return ReferenceRun(
            output.logits.detach(), float(loss), router_logits=_router_logits(output), loss_terms=terms
        )
    recorder = ActivationRecorder(model)
    try:
        output = model(**inputs)
    finally:
        recorder.remove()
    loss, terms = training_loss(model, output, batch.attention_mask)
    loss.backward()
    # A parameter the forward never used has a zero gradient (an expert no token chose: transformers' MoE
    # blocks skip it, while NxD's dropless experts see every token with a zero affinity).
    grads = {
        name: p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p.detach())
        for name, p in model.named_parameters()
        if p.requires_grad
    }
    return ReferenceRun(
        logits=output.logits.detach(),
        loss=float(loss.detach()),
        grads=grads,
        activations=recorder.outputs,
        constants=module_constants(model),
        router_logits=_router_logits(output),
        loss_terms=terms,
    )


def training_loss(
    model: Any, output: Any, padding_mask: torch.Tensor
) -> tuple[torch.Tensor, LossTerms | None]:
    """transformers' loss, its auxiliary load-balancing loss (if any) taken over the tokens `padding_mask`
    keeps, whatever mask the forward was given (see the module docstring); and that loss's terms."""
    aux_loss = getattr(output, "aux_loss", None)
    if aux_loss is None or not isinstance(aux_loss, torch.Tensor) or output.loss is None:
        return output.loss, None
    balance = sys.modules[type(model).__module__].load_balancing_loss_func
    top_k = model.num_experts_per_tok
    masked = balance(output.router_logits, model.num_experts, top_k, padding_mask)
    every_token = balance(output.router_logits, model.num_experts, top_k, None)
    coefficient = float(model.router_aux_loss_coef)
    terms = LossTerms(float(masked.detach()), float(every_token.detach()), coefficient, int(top_k))
    return output.loss + coefficient * (masked - aux_loss), terms


def _router_logits(output: Any) -> tuple[torch.Tensor, ...]:
    found = getattr(output, "router_logits", None) or ()
    return tuple(layer.detach().float() for layer in found)


def config_values(checkpoint: str) -> dict[str, Any]:
    """The checkpoint's config as a flat dict (to name the field a constant should come from)."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(checkpoint).to_dict()
