"""The auxiliary load-balancing loss of NxD's MoE training models (NxD's `moe/loss_function.py`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def load_balancing_loss_func(router_logits: torch.Tensor, num_experts: int, top_k: int) -> torch.Tensor:
    """Switch-Transformer balance loss over router logits `(tokens, E)` (all layers concatenated on dim 0).

    `(E / top_k) * sum over (k, e) of f[k, e] * P[e]`, with `f[k, e]` the share of tokens whose k-th choice
    is expert e and `P[e]` the mean softmax probability of e. The softmax runs in float64 and the top-k is
    taken on the probabilities.

    transformers' `load_balancing_loss_func` (Mixtral, Qwen2-MoE, Qwen3-MoE, ...) computes the same sum times
    E, so it equals `top_k` times this one; it also takes a per-layer tuple and an optional attention mask,
    this function neither.
    """
    probabilities = F.softmax(router_logits, dim=-1, dtype=torch.float64)
    _, chosen = torch.topk(probabilities, top_k)
    # one_hot: (tokens, top_k, E); its token mean is the share of tokens per (choice rank, expert).
    choices = F.one_hot(chosen, num_experts).to(torch.float32)
    tokens_per_expert = choices.mean(dim=0)
    probability_per_expert = probabilities.to(torch.float32).mean(dim=0)
    balance = torch.sum(tokens_per_expert * probability_per_expert.unsqueeze(0))
    return balance * (num_experts / top_k)
