"""Routing decisions of a mixture-of-experts checkpoint in transformers: the router margin and the load.

Top-k routing is discontinuous: a token whose k-th and (k+1)-th router logits are nearly equal may pick
another expert after a mere reordering of sums, and two correct implementations then part by O(1) on that
token. The catalogue therefore only keeps MoE checkpoints whose router separates, for every token the checks
compare and in every sparse layer, the k-th from the (k+1)-th logit by at least `MIN_ROUTER_MARGIN` (logits
rank experts as transformers' softmax probabilities do). The margin is read from transformers' own router
logits (`output_router_logits=True`), fp32, on the checks' fixed batch, twice: with the causal mask only
(what the default `recompute_causal_mask=True` is compared with) and with the padding mask, at the attended
positions (`recompute_causal_mask=False`).

What remains after the margin is reordered sums: the parallel model's router logits differ from
transformers' by about 1e-7 (fp32, hidden 64), four orders of magnitude below `MIN_ROUTER_MARGIN`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

MIN_ROUTER_MARGIN = 1e-3
"""Smallest gap, in logits, between a compared token's k-th and (k+1)-th expert in any sparse layer."""


def top_k_margins(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """Per token, the k-th largest router logit minus the (k+1)-th (`(tokens,)`; inf when k = E)."""
    if top_k >= logits.shape[-1]:
        return torch.full(logits.shape[:-1], torch.inf)
    ranked = torch.topk(logits.detach().float(), top_k + 1, dim=-1).values
    return ranked[..., top_k - 1] - ranked[..., top_k]


def layer_margins(
    router_logits: Sequence[torch.Tensor],
    top_k: int,
    positions: torch.Tensor | None = None,
    *,
    skip_zero_inputs: bool = False,
) -> list[float]:
    """Per sparse layer, the smallest margin over the tokens at `positions` (`(B, S)` booleans; every
    token when None). Each layer's logits are `(B * S, E)`, batch-major, as transformers returns them.

    `skip_zero_inputs` leaves out the tokens whose router logits are all equal: a router without bias
    gives that only for a zero input (a seeded init's zero padding embedding, attending to padding only),
    which every bias-free expert maps to zero, so which experts it picks changes neither the output nor a
    gradient."""
    found = []
    for logits in router_logits:
        margins = top_k_margins(logits, top_k)
        keep = torch.ones_like(margins, dtype=torch.bool)
        if positions is not None:
            keep &= positions.reshape(-1)
        if skip_zero_inputs:
            keep &= ~(logits == logits[..., :1]).all(dim=-1)
        margins = margins[keep]
        found.append(float(margins.min()) if margins.numel() else float("inf"))
    return found


def tokens_per_expert(
    router_logits: Sequence[torch.Tensor], top_k: int, positions: torch.Tensor | None = None
) -> list[list[int]]:
    """Per sparse layer, how many of the tokens at `positions` chose each expert among their top k."""
    found = []
    for logits in router_logits:
        chosen = torch.topk(logits.detach().float(), top_k, dim=-1).indices
        if positions is not None:
            chosen = chosen[positions.reshape(-1)]
        counts = torch.bincount(chosen.reshape(-1), minlength=logits.shape[-1])
        found.append([int(count) for count in counts])
    return found


def transformers_router_logits(model: Any, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """transformers' router logits of every sparse layer on `inputs` (a forward without grad)."""
    with torch.no_grad():
        output = model(**inputs, output_router_logits=True)
    logits = getattr(output, "router_logits", None)
    if not logits:
        raise ValueError(f"{type(model).__name__} returned no router_logits with output_router_logits=True")
    return tuple(layer.detach().float() for layer in logits)


def checkpoint_margin(model: Any, config: Any) -> float:
    """The smallest router margin of a transformers MoE model (eval, fp32) on the checks' fixed batch, over
    both masks the checks compare with (see the module docstring)."""
    from conformance.model_runs.fixed_batch import batch_for

    batch = batch_for(config)
    top_k = config.num_experts_per_tok
    margins = []
    for honours_padding in (False, True):
        inputs = batch.reference_inputs(honours_padding, labels=False)
        logits = transformers_router_logits(model, inputs)
        margins += layer_margins(logits, top_k, batch.compared_positions(honours_padding))
    return min(margins)
