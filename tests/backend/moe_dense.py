"""A dense mixture-of-experts written for the MoE tests: the oracle the parallel modules are held to.

Weights are kept as transformers keeps them (one `nn.Linear` per expert): router `[E, H]`, gate `[E, I, H]`
(Mixtral's w1), up `[E, I, H]` (w3), down `[E, H, I]` (w2). The forward is the plain per-token loop of a
top-k MoE: softmax (or sigmoid) over the router logits, the k best experts, their affinities (optionally
L1-normalised), the gated MLP `down(silu(gate x) * up x)` of each chosen expert (without a gate:
`down(silu(up x))`), the weighted sum. With a capacity factor, each
expert keeps the first C tokens (in the order given) that chose it and the others are dropped for that
expert; the normalisation then runs over the experts a token kept. `test_moe_oracle.py` checks this
against transformers' Mixtral and Qwen3-MoE blocks where their semantics agree (no capacity).

`nxd_expert_shards` is the HF -> NxD layout the tests load into the parallel modules, written from NxD's
checkpoint converters (examples/training/dbrx/convert_checkpoints.py and scripts/checkpoint_converter.py):
per expert, NxD multiplies `x @ W` with W `[in, out]`, so gate/up/down are transposed; the fused
`gate_up_proj` of TP rank r is `[gate^T columns of r | up^T columns of r]`; `down_proj` is `down^T` with
the rows of r; EP rank j holds the experts `j E/EP .. (j+1) E/EP - 1`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class DenseWeights:
    """Per-expert weights in transformers' layout (each requires grad); shared experts optional."""

    router: torch.Tensor
    gate: torch.Tensor | None
    up: torch.Tensor
    down: torch.Tensor
    shared_gate: torch.Tensor | None = None
    shared_up: torch.Tensor | None = None
    shared_down: torch.Tensor | None = None

    def named(self) -> dict[str, torch.Tensor]:
        return {name: value for name, value in vars(self).items() if value is not None}


def make_dense(
    seed: int, experts: int, hidden: int, inter: int, shared_width: int = 0, gated: bool = True
) -> DenseWeights:
    """Random weights (the gate is drawn either way, then dropped when not `gated`)."""
    gen = torch.Generator().manual_seed(seed)

    def draw(*shape: int, scale: float) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen) * scale).requires_grad_()

    weights = DenseWeights(
        router=draw(experts, hidden, scale=1.0),
        gate=draw(experts, inter, hidden, scale=hidden**-0.5),
        up=draw(experts, inter, hidden, scale=hidden**-0.5),
        down=draw(experts, hidden, inter, scale=inter**-0.5),
    )
    if not gated:
        weights.gate = None
    if shared_width:
        weights.shared_gate = draw(shared_width, hidden, scale=hidden**-0.5)
        weights.shared_up = draw(shared_width, hidden, scale=hidden**-0.5)
        weights.shared_down = draw(hidden, shared_width, scale=shared_width**-0.5)
    return weights


@dataclass(frozen=True)
class Routing:
    top_k: int
    normalize: bool = False
    act_fn: str = "softmax"
    over_top_k: bool = False
    capacity_factor: float | None = None


def dense_moe(
    tokens: torch.Tensor, w: DenseWeights, routing: Routing
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(output `[N, H]`, router logits `[N, E]`, number of dropped (token, expert) choices) for `tokens`."""
    experts = w.router.shape[0]
    n, k = tokens.shape[0], routing.top_k
    logits = tokens @ w.router.T
    chosen = torch.topk(logits, k, dim=1).indices
    if routing.over_top_k:
        top_logits = torch.gather(logits, 1, chosen)
        picked = F.softmax(top_logits, dim=1) if routing.act_fn == "softmax" else torch.sigmoid(top_logits)
    else:
        scores = F.softmax(logits, dim=1) if routing.act_fn == "softmax" else torch.sigmoid(logits)
        picked = torch.gather(scores, 1, chosen)

    keep = torch.ones(n, k, dtype=torch.bool)
    if routing.capacity_factor is not None:
        capacity = min(math.ceil(n * k * routing.capacity_factor / experts), n)
        taken = [0] * experts
        for t in range(n):
            for j in range(k):
                e = int(chosen[t, j])
                taken[e] += 1
                keep[t, j] = taken[e] <= capacity
    picked = picked * keep
    if routing.normalize:
        picked = picked / picked.sum(dim=1, keepdim=True).clamp_min(1e-12)

    rows = []
    for t in range(n):
        row = torch.zeros_like(tokens[t])
        for j in range(k):
            if keep[t, j]:
                e = int(chosen[t, j])
                x = tokens[t]
                hidden = F.silu(w.up[e] @ x) if w.gate is None else F.silu(w.gate[e] @ x) * (w.up[e] @ x)
                mlp = hidden @ w.down[e].T
                row = row + picked[t, j] * mlp
        if w.shared_gate is not None:
            x = tokens[t]
            row = row + (F.silu(w.shared_gate @ x) * (w.shared_up @ x)) @ w.shared_down.T
        rows.append(row)
    return torch.stack(rows), logits, int((~keep).sum())


def top_k_margin(logits: torch.Tensor, top_k: int) -> float:
    """Smallest gap, over tokens, between the k-th and (k+1)-th router logit (routing is tie-free above 0)."""
    ordered = torch.sort(logits.detach(), dim=1, descending=True).values
    return float((ordered[:, top_k - 1] - ordered[:, top_k]).min())


def _columns(full: torch.Tensor, rank: int, size: int, dim: int) -> torch.Tensor:
    width = full.shape[dim] // size
    return full.narrow(dim, rank * width, width)


def nxd_expert_shards(
    w: DenseWeights, tp_rank: int, tp: int, ep_rank: int, ep: int
) -> dict[str, torch.Tensor]:
    """This rank's NxD tensors for the dense weights (module names relative to `MoE`)."""
    experts = w.router.shape[0]
    local = slice(ep_rank * experts // ep, (ep_rank + 1) * experts // ep)
    up_t = w.up.transpose(1, 2)[local]  # [E/EP, H, I]
    down_t = w.down.transpose(1, 2)[local]  # [E/EP, I, H]
    shards = {
        "router.linear_router.weight": w.router,
        "expert_mlps.mlp_op.down_proj.weight": _columns(down_t, tp_rank, tp, 1),
    }
    if w.gate is None:
        shards["expert_mlps.mlp_op.up_proj.weight"] = _columns(up_t, tp_rank, tp, 2)
    else:
        gate_t = w.gate.transpose(1, 2)[local]
        shards["expert_mlps.mlp_op.gate_up_proj.weight"] = torch.cat(
            [_columns(gate_t, tp_rank, tp, 2), _columns(up_t, tp_rank, tp, 2)], dim=2
        )
    if w.shared_gate is not None:
        shards["shared_experts.gate_proj.weight"] = _columns(w.shared_gate, tp_rank, tp, 0)
        shards["shared_experts.up_proj.weight"] = _columns(w.shared_up, tp_rank, tp, 0)
        shards["shared_experts.gate_up_proj.weight"] = torch.cat(
            [_columns(w.shared_gate, tp_rank, tp, 0), _columns(w.shared_up, tp_rank, tp, 0)], dim=0
        )
        shards["shared_experts.down_proj.weight"] = _columns(w.shared_down, tp_rank, tp, 1)
    return shards
