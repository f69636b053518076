"""From a parity run's figures to the likely cause: where a wrong forward first departs from transformers,
why parameters got no gradient, and which replicated gradients are partial sums nothing reduced."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from .gradients import GradientFigure

SPARSE_BLOCK_HINT = (
    "its router (gate), the top-k choice and the normalisation of the chosen affinities, or the experts' "
    "gate/up/down layout"
)
"""The hint for a mixture-of-experts block (Mixtral's `block_sparse_moe`, or an `mlp` that is one)."""

MODULE_HINTS = {
    "self_attn": "its q/k/v/o projections, the head layout (head order, K/V head per query head, q/k/v split) "
    "or the rotary embedding",
    "mlp": "its gate/up/down projections and the gate/up split",
    "embed_tokens": "the token embedding",
    "norm": "the final norm",
}


@dataclass
class ForwardDivergence:
    """max |parallel - transformers| per traced module in execution order, and the first one off."""

    errors: dict[str, float] = field(default_factory=dict)
    first_divergent_module: str | None = None
    diagnosis: str | None = None


def locate_forward_divergence(
    parallel: Mapping[str, torch.Tensor],
    reference: Mapping[str, torch.Tensor],
    atol: float,
    positions: torch.Tensor | None = None,
    sparse_blocks: frozenset[str] = frozenset(),
) -> ForwardDivergence:
    """The first module (in the order the parallel model ran them) whose output departs from transformers'.

    Bound: `atol` (the logits tolerance) scaled by the activation's size (activations are O(1), a few ulps
    of drift like the logits); a wrong module is off by O(its output). `positions` ((B, S) booleans)
    limits the comparison of batch-first outputs to the positions whose values are specified (not the
    padding queries of a model that honours the padding mask). `sparse_blocks` names the modules that are
    mixture-of-experts blocks (their hint is the router's and the experts').
    """
    found = ForwardDivergence()
    for name, value in parallel.items():
        expected = reference.get(name)
        if expected is None or expected.shape != value.shape:
            continue
        if positions is not None and tuple(value.shape[:2]) == tuple(positions.shape):
            value, expected = value[positions], expected[positions]
        error = float((value.float() - expected.float()).abs().max())
        found.errors[name] = error
        bound = atol * max(1.0, float(expected.abs().max()))
        if found.first_divergent_module is None and not error <= bound:
            found.first_divergent_module = name
    name = found.first_divergent_module
    if name is not None:
        kind = name.rsplit(".", 1)[-1]
        hint = (
            SPARSE_BLOCK_HINT
            if name in sparse_blocks or kind == "block_sparse_moe"
            else MODULE_HINTS.get(kind, "the decoder layer's own code (residuals, norms)")
        )
        found.diagnosis = (
            f"the forward first departs from transformers at {name} (max |d output| {found.errors[name]:.3g}; "
            f"every module that ran before it agrees): look at {hint}"
        )
    return found


def missing_gradient_diagnosis(no_gradient: list[str], forward_right: bool) -> str | None:
    """Why parameters received no gradient, as far as the forward tells."""
    if not no_gradient:
        return None
    why = (
        "the forward matches transformers, so something detaches them from the loss (a .detach(), "
        "torch.no_grad, an in-place or non-differentiable op)"
        if forward_right
        else "they are cut off from the loss"
    )
    return f"{len(no_gradient)} parameter(s) received no gradient: {', '.join(no_gradient)}; {why}"


def partial_gradients(
    gradients: Mapping[str, GradientFigure],
    per_rank: list[dict[str, torch.Tensor]],
    expected: Mapping[str, torch.Tensor],
    parameters: Mapping[str, dict[str, Any]],
    sequence_parallel_flags: Mapping[str, bool],
    sequence_parallel_effective: bool,
) -> tuple[dict[str, float], list[str]]:
    """Replicated parameters whose gradient is out of bounds but whose per-rank gradients sum to
    transformers' hold partial sums: each rank saw only its sequence shard (or its own heads).

    Returns `{name: max |sum over ranks - reference|}` and one diagnosis per such parameter.
    """
    tp_size = len(per_rank)
    found: dict[str, float] = {}
    diagnoses: list[str] = []
    if tp_size < 2:
        return found, diagnoses
    for name, figure in sorted(gradients.items()):
        meta = parameters.get(name, {})
        if figure.within or meta.get("tensor_model_parallel") or name not in per_rank[0]:
            continue
        total = sum(grads[name] for grads in per_rank)
        if total.shape != expected[name].shape:
            continue
        error = float((total - expected[name]).abs().max())
        if not error <= figure.bound:
            continue
        found[name] = error
        ratio = float(per_rank[0][name].flatten() @ expected[name].flatten()) / max(
            float(expected[name].flatten() @ expected[name].flatten()), 1e-30
        )
        if sequence_parallel_effective and not sequence_parallel_flags.get(name, False):
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
        diagnoses.append(f"gradient of {name} is partial: {cause}")
    return found, diagnoses


def padding_row_diagnoses(
    gradients: Mapping[str, GradientFigure],
    consolidated: Mapping[str, torch.Tensor],
    expected: Mapping[str, torch.Tensor],
    pad_token_id: int,
    vocab_size: int,
) -> list[str]:
    """Vocabulary-indexed gradients out of bounds in the padding row only: the model's embedding lost its
    `padding_idx`, so the pad token's row trains where transformers' `nn.Embedding(padding_idx=...)` keeps
    it frozen (with tied embeddings transformers' row still gets the LM head's share; the comparison is of
    the rows, so it holds there too)."""
    found = []
    for name, figure in sorted(gradients.items()):
        mine, theirs = consolidated.get(name), expected.get(name)
        if (
            figure.within
            or mine is None
            or theirs is None
            or theirs.dim() != 2
            or theirs.shape[0] != vocab_size
        ):
            continue
        error = (mine - theirs).abs().amax(dim=1)
        others = torch.cat([error[:pad_token_id], error[pad_token_id + 1 :]])
        if (
            float(error[pad_token_id]) <= figure.bound
            or (float(others.max()) if others.numel() else 0.0) > figure.bound
        ):
            continue
        found.append(
            f"gradient of {name} differs from transformers' in the padding row only (pad_token_id = "
            f"{pad_token_id}: max |d| {float(error[pad_token_id]):.3g}, every other row within "
            f"{figure.bound:.3g}; transformers' row gets {float(theirs[pad_token_id].abs().max()):.3g}): the "
            "embedding lost its padding_idx, so the pad token's row trains; pass padding_idx="
            "config.pad_token_id to the embedding"
        )
    return found
