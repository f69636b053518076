"""Routers: token -> expert scores and choices (NxD's `moe/routing.py`).

A router is a replicated `linear_router` (`nn.Linear(hidden, E)`, its weight tagged
`sequence_parallel_enabled` with the router's own flag) followed by an activation (softmax or sigmoid,
computed in float64) and a choice of experts. It returns `(router_logits, expert_affinities,
expert_index)`, shaped `(T, E)`, `(T, E)`, `(T, top_k)` with T the flattened tokens.

With `sequence_parallel_enabled` the router runs on the sequence shard; in training its logits are
all-gathered along the sequence (the gather's backward splits, so the weight gradient is partial and the
optimizer's sequence-parallel all-reduce completes it). Out of training the logits stay local and
`ExpertMLPs` gathers the chosen affinities instead, as in NxD. The gather runs over the TP group, also with
expert parallelism (deviation NXD-20: NxD uses the world group there).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F

from ...parallel_layers import mappings
from ...parallel_layers.parallel_state import get_tensor_model_parallel_group


class RouterBase(torch.nn.Module, ABC):
    """What every router shares: the linear router, the SP gather of its logits, and the activation."""

    def __init__(
        self,
        num_experts: int,
        top_k: int,
        hidden_size: int,
        act_fn: str,
        sequence_parallel_enabled: bool,
        sequence_dimension: int | None,
        dtype: torch.dtype,
        device: torch.device,
        bias: bool = False,
        tensor_model_parallel_group=None,
        jitter_eps: float = 0.0,
        store_transposed_weights: bool = False,
        apply_act_fn_over_topk: bool = False,
    ):
        super().__init__()
        if not 0 < top_k <= num_experts:
            raise ValueError(f"Invalid top_k={top_k} for num_experts={num_experts}")
        if act_fn not in {"sigmoid", "softmax"}:
            raise ValueError("act_fn must be either 'sigmoid' or 'softmax'")
        self.num_experts = num_experts
        self.top_k = top_k
        self.hidden_size = hidden_size
        self.act_fn = act_fn
        self.sequence_parallel_enabled = sequence_parallel_enabled
        if sequence_parallel_enabled and sequence_dimension is None:
            sequence_dimension = 0
        self.sequence_dimension = sequence_dimension
        self.dtype = dtype
        self.device = device
        self.bias = bias
        self.jitter_eps = jitter_eps
        self.store_transposed_weights = store_transposed_weights
        self.apply_act_fn_over_topk = apply_act_fn_over_topk
        self.tensor_parallel_group = (
            tensor_model_parallel_group
            if tensor_model_parallel_group is not None
            else get_tensor_model_parallel_group()
        )
        self.linear_router = torch.nn.Linear(hidden_size, num_experts, dtype=dtype, device=device, bias=bias)
        if store_transposed_weights:
            # An inference-kernel copy; the forward pass never reads it.
            self.weight_T = torch.nn.Parameter(self.linear_router.weight.detach().T.clone())
        self.linear_router.weight.sequence_parallel_enabled = sequence_parallel_enabled

    def _if_training_gather_for_sp(self) -> bool:
        """Whether the logits are gathered here (SP training) rather than the affinities later (SP inference)."""
        return self.sequence_parallel_enabled and self.training

    def get_router_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """`(T, E)` logits of the tokens in `hidden_states`; in SP training, of the gathered sequence.

        Jitter (training only) scales the input in place by uniform noise in `1 +- jitter_eps`, as NxD does:
        when the router's dtype is the input's, the caller's tensor is changed too.
        """
        routed = hidden_states.to(dtype=self.linear_router.weight.dtype)
        if self.jitter_eps != 0.0 and self.training:
            routed *= torch.empty_like(routed).uniform_(1.0 - self.jitter_eps, 1.0 + self.jitter_eps)
        router_logits = self.linear_router(routed)
        if self._if_training_gather_for_sp():
            router_logits = mappings.gather_from_sequence_parallel_region(
                router_logits,
                sequence_dimension=self.sequence_dimension,
                to_model_parallel=False,
                process_group=self.tensor_parallel_group,
            )
        return router_logits.view(-1, self.num_experts)

    def apply_activation_fn(self, weights: torch.Tensor) -> torch.Tensor:
        """Affinities from logits, in float64: sigmoid, or softmax over dim 1."""
        if self.act_fn == "sigmoid":
            return torch.sigmoid(weights.to(dtype=torch.float64))
        if self.act_fn == "softmax":
            return F.softmax(weights, dim=1, dtype=torch.float64)
        raise ValueError("act_fn must be either 'sigmoid' or 'softmax'")

    @abstractmethod
    def forward(self, hidden_states: torch.Tensor):
        """`(router_logits, expert_affinities, expert_index)` for `hidden_states` (see the module docstring)."""


class RouterTopK(RouterBase):
    """The k experts with the highest logits. Without `apply_act_fn_over_topk` the affinities are the
    activation over all E logits; with it, over the k chosen logits only (zeros elsewhere). Use it with
    the load-balancing loss: it does no balancing of its own."""

    def __init__(
        self,
        num_experts: int,
        top_k: int,
        hidden_size: int,
        sequence_parallel_enabled: bool = False,
        sequence_dimension: int | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device = torch.device("cpu"),  # noqa: B008 (NxD's default, compared by the API-surface test)
        bias: bool = False,
        tensor_model_parallel_group=None,
        act_fn="softmax",
        apply_act_fn_over_topk: bool = False,
        jitter_eps: float = 0.0,
        store_transposed_weights: bool = False,
    ):
        super().__init__(
            num_experts=num_experts,
            top_k=top_k,
            hidden_size=hidden_size,
            act_fn=act_fn,
            sequence_parallel_enabled=sequence_parallel_enabled,
            sequence_dimension=sequence_dimension,
            dtype=dtype,
            device=device,
            bias=bias,
            tensor_model_parallel_group=tensor_model_parallel_group,
            jitter_eps=jitter_eps,
            store_transposed_weights=store_transposed_weights,
            apply_act_fn_over_topk=apply_act_fn_over_topk,
        )

    def forward(self, hidden_states: torch.Tensor):
        router_logits = self.get_router_logits(hidden_states)
        if self.apply_act_fn_over_topk:
            top_logits, expert_index = torch.topk(router_logits.to(torch.float64), self.top_k, dim=1)
            expert_affinities = torch.zeros_like(router_logits, dtype=torch.float64).scatter(
                1, expert_index, self.apply_activation_fn(top_logits)
            )
        else:
            expert_affinities = self.apply_activation_fn(router_logits)
            _, expert_index = torch.topk(router_logits, self.top_k)
        expert_affinities = expert_affinities.to(dtype=hidden_states.dtype)
        return router_logits, expert_affinities, expert_index.detach().to(dtype=torch.long)


class RouterSinkhorn(RouterBase):
    """Top-1 routing whose choice (in training) comes from Sinkhorn-balanced logits; the affinities are the
    plain activation of the logits. Sinkhorn runs a fixed number of iterations in float32."""

    DEFAULT_SINKHORN_ITERS = 30

    def __init__(
        self,
        num_experts: int,
        top_k: int,
        hidden_size: int,
        act_fn: str = "sigmoid",
        sequence_parallel_enabled: bool = False,
        sequence_dimension: int | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device = torch.device("cpu"),  # noqa: B008 (NxD's default, compared by the API-surface test)
        sinkhorn_iterations: int | None = None,
        sinkhorn_tol: float | None = None,
    ):
        if top_k != 1:
            raise NotImplementedError("RouterSinkhorn only supports Top-1 routing")
        super().__init__(
            num_experts=num_experts,
            top_k=top_k,
            hidden_size=hidden_size,
            act_fn=act_fn,
            sequence_parallel_enabled=sequence_parallel_enabled,
            sequence_dimension=sequence_dimension,
            dtype=dtype,
            device=device,
        )
        self.sinkhorn_iterations = (
            sinkhorn_iterations if sinkhorn_iterations is not None else self.DEFAULT_SINKHORN_ITERS
        )
        self.sinkhorn_tol = sinkhorn_tol

    def forward(self, hidden_states: torch.Tensor):
        router_logits = self.get_router_logits(hidden_states)
        expert_affinities = self.apply_activation_fn(router_logits).to(dtype=hidden_states.dtype)
        with torch.no_grad():
            if self.training:
                scores = self._sinkhorn(
                    router_logits.detach().to(dtype=torch.float32),
                    self.sinkhorn_iterations,
                    self.sinkhorn_tol,
                )
            else:
                scores = router_logits.detach()
            expert_index = torch.argmax(scores, dim=1, keepdim=True)
        return router_logits, expert_affinities, expert_index.to(dtype=torch.long)

    @staticmethod
    def _sinkhorn(cost: torch.Tensor, num_iters: int, tol: float | None = None) -> torch.Tensor:
        """`exp(cost)` rescaled by alternating row and column normalisation, `num_iters` times.

        With `tol`, the mean change of the column scales in the last iteration must be below it (NxD never
        passes its `sinkhorn_tol` here, deviation NXD-24).
        """
        if num_iters == 0:
            return cost
        kernel = torch.exp(cost)
        rows, cols = kernel.shape
        row_scale = torch.ones(rows, device=cost.device, dtype=cost.dtype)
        col_scale = torch.ones(cols, device=cost.device, dtype=cost.dtype)
        eps = 1e-8
        change = torch.tensor(float("inf"))
        for _ in range(num_iters):
            row_scale = 1 / (rows * (torch.sum(col_scale * kernel, 1) + eps))
            new_col_scale = 1 / (cols * (torch.sum(row_scale.unsqueeze(1) * kernel, 0) + eps))
            change = torch.mean(torch.abs(new_col_scale - col_scale))
            col_scale = new_col_scale
        if tol is not None and float(change) >= tol:
            raise AssertionError(f"Sinkhorn error {float(change)} exceeds tolerance {tol}")
        return col_scale * kernel * row_scale.unsqueeze(1)
