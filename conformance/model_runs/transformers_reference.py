"""transformers' model on a catalogue checkpoint and the fixed batch: the oracle of the parity check.

`reference_run` loads `AutoModelForCausalLM` (eager attention, fp32, eval mode: no dropout) and runs one
forward and backward on the batch as `FixedBatch.reference_inputs` gives it (the padding mask, or the
causal mask only, for the model it is compared with); it returns the logits, the loss, every gradient,
the traced module outputs and the model's configuration constants. Runs are cached: every parity case of a
variant shares them, and the diagnoses that ask "what would transformers give with the mask dropped"
only pay for a forward when a case fails.
"""

from __future__ import annotations

import functools
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


@functools.lru_cache(maxsize=8)
def reference_run(
    checkpoint: str,
    vocab_size: int,
    sequence_length: int,
    pad_token_id: int,
    honours_padding: bool,
    default_positions: bool = False,
    backward: bool = True,
) -> ReferenceRun:
    """transformers on the batch (see the module docstring); `default_positions` leaves `position_ids`
    out and `backward=False` gives the forward only (both for diagnoses)."""
    from transformers import AutoModelForCausalLM

    batch = fixed_batch(vocab_size, sequence_length, pad_token_id)
    inputs = batch.reference_inputs(honours_padding, default_positions=default_positions)
    model = AutoModelForCausalLM.from_pretrained(checkpoint, attn_implementation="eager", dtype=torch.float32)
    model.eval()
    if not backward:
        with torch.no_grad():
            output = model(**inputs)
        return ReferenceRun(output.logits.detach(), float(output.loss))
    recorder = ActivationRecorder(model)
    try:
        output = model(**inputs)
    finally:
        recorder.remove()
    output.loss.backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}
    return ReferenceRun(
        logits=output.logits.detach(),
        loss=float(output.loss.detach()),
        grads=grads,
        activations=recorder.outputs,
        constants=module_constants(model),
    )


def config_values(checkpoint: str) -> dict[str, Any]:
    """The checkpoint's config as a flat dict (to name the field a constant should come from)."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(checkpoint).to_dict()
