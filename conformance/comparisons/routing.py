"""Routing figures of a mixture-of-experts run, next to its parity figures: how far from a tie transformers'
router is, how the tokens spread over the experts, whether the parallel model routed them the same way,
and how many token choices NxD's capacity factor dropped.

transformers' router logits are the oracle (`reference_models.routing`); the parallel model's are those it
returns where transformers returns them (`router_logits` of the output, per sparse layer, `(B * S, E)`
batch-major). A token routed to other experts than transformers' while the router margin is at least
`MIN_ROUTER_MARGIN` is no reordering of sums: the router, its input or the choice differ. Dropped choices
are counted per data-parallel rank as NxD's capacity rule drops them (an expert keeps at most
`C = min(ceil(T k cf / E), T)` of the T tokens it sees): what goes beyond C; none without a capacity factor.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from reference_models.routing import MIN_ROUTER_MARGIN, layer_margins, tokens_per_expert

if TYPE_CHECKING:
    from conformance.model_runs.transformers_reference import LossTerms


@dataclass(frozen=True)
class ExpertLayout:
    """What the parallel model's NxD MoE layers are configured with (read from its `ExpertMLPs`)."""

    num_experts: int
    top_k: int
    capacity_factor: float | None


@dataclass
class RoutingFigures:
    """The routing of one run (see the module docstring)."""

    router_margin: float | None = None
    margins: list[float] = field(default_factory=list)
    tokens_per_expert: list[list[int]] = field(default_factory=list)
    """Per sparse layer, transformers' choices at the compared positions."""
    tokens_routed_differently: int | None = None
    router_logits_max_abs_diff: float | None = None
    capacity_factor: float | None = None
    dropped_choices: int = 0
    reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        """One compact line for a report row."""
        loads = " ".join(f"L{i} {counts}" for i, counts in enumerate(self.tokens_per_expert))
        parts = [
            f"margin {self.router_margin:.3g}" if self.router_margin is not None else "margin n/a",
            f"tokens/expert {loads}" if loads else "",
            f"dropped {self.dropped_choices}"
            + (
                " (dropless)"
                if self.capacity_factor is None
                else f" (capacity factor {self.capacity_factor:g})"
            ),
        ]
        if self.tokens_routed_differently is not None:
            parts.append(f"routed differently {self.tokens_routed_differently}")
        return "; ".join(part for part in parts if part)

    def figures(self) -> dict[str, Any]:
        return {
            "routing": self.line(),
            "router_margin": self.router_margin,
            "router_margin_per_layer": list(self.margins),
            "tokens_per_expert": [list(counts) for counts in self.tokens_per_expert],
            "tokens_routed_differently": self.tokens_routed_differently,
            "router_logits_max_abs_diff": self.router_logits_max_abs_diff,
            "capacity_factor": self.capacity_factor,
            "dropped_choices": self.dropped_choices,
        }


def expert_layout(model: torch.nn.Module) -> ExpertLayout | None:
    """The configuration of the model's NxD expert layers (the first one; they share it), or None."""
    for module in model.modules():
        config = getattr(module, "routed_experts_mlp_config", None)
        if config is not None:
            return ExpertLayout(config.num_experts, config.top_k, config.capacity_factor)
    return None


def is_sparse_block(module: torch.nn.Module) -> bool:
    """Whether `module` is a mixture-of-experts block: NxD's `MoE` (a router and routed experts)."""
    return hasattr(module, "router") and hasattr(module, "expert_mlps")


def dropped_choices(router_logits: Sequence[torch.Tensor], layout: ExpertLayout) -> int:
    """Token choices NxD's capacity rule drops over the layers of one rank's tokens (0 when dropless)."""
    factor = layout.capacity_factor
    if factor is None or factor <= 0:
        return 0
    dropped = 0
    for logits in router_logits:
        tokens = logits.shape[0]
        capacity = min(math.ceil(tokens * layout.top_k * factor / layout.num_experts), tokens)
        chosen = torch.topk(logits.detach().float(), layout.top_k, dim=-1).indices
        counts = torch.bincount(chosen.reshape(-1), minlength=layout.num_experts)
        dropped += int((counts - capacity).clamp(min=0).sum())
    return dropped


def compare_routing(
    reference: Sequence[torch.Tensor],
    parallel: Sequence[torch.Tensor] | None,
    top_k: int,
    positions: torch.Tensor,
    layout: ExpertLayout | None,
    dropped: int,
    logits_bound: float,
) -> RoutingFigures:
    """The routing figures, reasons and notes of one parity case (`parallel` None: not returned)."""
    found = RoutingFigures(
        capacity_factor=layout.capacity_factor if layout else None, dropped_choices=dropped
    )
    found.margins = layer_margins(reference, top_k, positions)
    found.router_margin = min(found.margins, default=None)
    found.tokens_per_expert = tokens_per_expert(reference, top_k, positions)
    if found.router_margin is not None and found.router_margin < MIN_ROUTER_MARGIN:
        found.notes.append(
            f"transformers' router has a near-tie (margin {found.router_margin:.3g} < {MIN_ROUTER_MARGIN:g}): "
            "a token may take another expert after a mere reordering of sums"
        )
    if dropped:
        found.notes.append(
            f"NxD's capacity factor {found.capacity_factor:g} dropped {dropped} token choice(s); transformers "
            "drops none, so the outputs of those tokens differ by design"
        )
    if parallel is None:
        found.notes.append("the model returns no router_logits: routing compared through the logits only")
        return found
    if len(parallel) != len(reference) or any(p.shape != r.shape for p, r in zip(parallel, reference)):
        found.reasons.append(
            f"router_logits should be one (batch * sequence, experts) tensor per sparse layer as transformers "
            f"returns them, {[tuple(r.shape) for r in reference]}; got {[tuple(p.shape) for p in parallel]}"
        )
        return found
    mask = positions.reshape(-1)
    differing = []
    error = 0.0
    for layer, (ours, theirs) in enumerate(zip(parallel, reference)):
        error = max(error, float((ours[mask] - theirs[mask]).abs().max()))
        ours_chosen = torch.topk(ours[mask].float(), top_k, dim=-1).indices.sort(dim=-1).values
        theirs_chosen = torch.topk(theirs[mask].float(), top_k, dim=-1).indices.sort(dim=-1).values
        count = int((ours_chosen != theirs_chosen).any(dim=-1).sum())
        if count:
            differing.append((layer, count))
    found.router_logits_max_abs_diff = error
    found.tokens_routed_differently = sum(count for _, count in differing)
    if differing and not dropped:
        where = ", ".join(f"layer {layer}: {count}" for layer, count in differing)
        found.reasons.append(
            f"{found.tokens_routed_differently} compared token(s) are routed to other experts than transformers' "
            f"({where}) although its router margin is {found.router_margin:.3g}: the router, its input or the "
            "top-k choice differ"
        )
    elif error > logits_bound:
        found.reasons.append(
            f"the router logits differ from transformers' (max |d| {error:.3g} > {logits_bound:g}) although "
            "every token picks the same experts: returned in another token order, or computed differently"
        )
    return found


def auxiliary_loss_diagnosis(delta: float, terms: Sequence[LossTerms | None], loss_atol: float) -> list[str]:
    """Why the loss differs from transformers' by `delta` (model minus transformers, averaged over the
    data-parallel shares whose `terms` are given) while the logits agree: the auxiliary load-balancing loss,
    named by the variant of it that accounts for the difference. Empty for a dense model."""
    if not terms or any(term is None for term in terms):
        return []
    known = [term for term in terms if term is not None]

    def mean(value: Any) -> float:
        return sum(value(term) for term in known) / len(known)

    coefficient, top_k = known[0].coefficient, known[0].top_k
    added = mean(lambda t: t.coefficient * t.aux_loss)
    candidates = {
        "left out": -added,
        f"divided by top_k = {top_k} (NxD's load_balancing_loss_func)": added * (1 / top_k - 1),
        "taken over every token, padding included (no attention_mask)": mean(
            lambda t: t.coefficient * (t.aux_loss_every_token - t.aux_loss)
        ),
        f"taken over every token and divided by top_k = {top_k}": mean(
            lambda t: t.coefficient * (t.aux_loss_every_token / t.top_k - t.aux_loss)
        ),
        "added without router_aux_loss_coef": mean(lambda t: t.aux_loss * (1 - t.coefficient)),
    }
    head = (
        f"the loss differs from transformers' by {delta:.3g} while the logits agree: the auxiliary load-balancing "
        f"loss is off (transformers adds router_aux_loss_coef {coefficient:g} x load_balancing_loss_func("
        f"router_logits, experts, top_k {top_k}, attention_mask) = {added:.4g})"
    )
    bound = 10 * loss_atol
    matching = [name for name, expected in candidates.items() if abs(delta - expected) <= bound]
    if matching:
        return [f"{head}: the model's auxiliary loss is transformers' {matching[0]}"]
    return [head]
