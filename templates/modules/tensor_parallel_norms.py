"""Norms over the full width of a column-parallel output, computed where each TP rank holds only its columns.

A norm applied to a projection's whole output (olmo2's `q_norm` over all heads: `RMSNorm(H * head_dim)`)
reduces over every column, but under tensor parallelism each rank holds `width / T` of them (and, for K and
V in NxD's GQA layer, `m` replicas of every KV head spread over the ranks). NxD has no such norm. Here the
statistics are summed over the TP group and the weight is sharded with the columns it scales:

- `mean_over_tensor_parallel(x, replicas)` is `x.mean(-1, keepdim=True)` of the full-width tensor: the
  per-rank sums are all-reduced (forward and backward: every rank's output depends on every rank's columns)
  and divided by the full width, each replicated column counted once.
- `ColumnParallelRMSNorm` / `ColumnParallelLayerNorm` compute transformers' `RMSNorm` / `nn.LayerNorm`
  (statistics in fp32, output in the input's dtype) with that mean. Their `weight` (and `bias`) hold the
  rank's columns and are tagged as sharded on dim 0, so checkpoints load and consolidate like a column-
  parallel layer's bias. With `replicas > 1` the rank holds the columns of the replicated heads it serves;
  the copies of a column on different ranks then serve different query heads, so their gradients are
  partial: a hook sums them over NxD's kv-shared group (the ranks holding the same K/V heads), as the GQA
  layer does for its K/V outputs' gradients.
- `shard_by_head(module, heads, replicas)` keeps, of each parameter of a norm applied per head whose rows
  run over the heads (cohere's `q_norm` weight `(num_heads, head_dim)`), the rows of the rank's heads, and
  of a list of one norm per head (stablelm's), the rank's norms, laid out as NxD's GQA layer lays out its
  heads (K/V heads tiled `replicas` times), tagged and hooked likewise.

Under NxD's GQA layer the rank's query heads are not a contiguous block of the checkpoint's: the package's
`attention_norm_weights.HeadRowsSpec` maps such weights when a checkpoint is loaded and consolidated
(`HeadModulesSpec` renames a list's entries, `norms.<head>` to `norms.<rank's index>`).

Dense equivalence (same output, input gradient and summed weight gradient as the dense norm applied to
the gathered tensor) is tested in tests/backend/test_tensor_parallel_norms.py.
"""

from __future__ import annotations

import torch
from neuronx_distributed.parallel_layers.mappings import (
    copy_to_tensor_model_parallel_region,
    reduce_from_tensor_model_parallel_region,
)
from neuronx_distributed.parallel_layers.parallel_state import (
    get_kv_shared_group,
    get_tensor_model_parallel_rank,
    get_tensor_model_parallel_size,
)
from neuronx_distributed.parallel_layers.utils import set_tensor_model_parallel_attributes
from torch import nn


def mean_over_tensor_parallel(x: torch.Tensor, width: int, replicas: int = 1) -> torch.Tensor:
    """The mean over the last dimension of the full-width tensor (`width` columns) whose columns are split over
    the TP ranks, each column held by `replicas` ranks; shape `(..., 1)`, the same on every rank."""
    local = x.sum(-1, keepdim=True)
    # Forward all-reduce (the full sum) and backward all-reduce (every rank's output used this sum).
    total = reduce_from_tensor_model_parallel_region(copy_to_tensor_model_parallel_region(local))
    return total / (width * replicas)


def sum_over_kv_replicas(grad: torch.Tensor) -> torch.Tensor:
    """A replicated K/V column's gradient summed over the ranks holding a copy (NxD's kv-shared group)."""
    return reduce_from_tensor_model_parallel_region(grad, process_group=get_kv_shared_group())


def _tag(parameter: nn.Parameter, replicas: int) -> nn.Parameter:
    """Mark a parameter sharded on dim 0; hook the sum of its replicas' gradients when `replicas > 1`."""
    set_tensor_model_parallel_attributes(parameter, is_parallel=True, dim=0, stride=1)
    if replicas > 1:
        parameter.register_hook(sum_over_kv_replicas)
    return parameter


def _sharded_parameter(size: int, value: float, replicas: int) -> nn.Parameter:
    return _tag(nn.Parameter(torch.full((size,), value)), replicas)


def _local_width(width: int, replicas: int) -> int:
    tp_size = get_tensor_model_parallel_size()
    if (width * replicas) % tp_size:
        raise ValueError(
            f"a norm over {width} columns ({replicas} replicas) cannot be split over {tp_size} TP ranks"
        )
    return width * replicas // tp_size


class ColumnParallelRMSNorm(nn.Module):
    """RMSNorm over `width` columns split over the TP ranks: `weight * x / sqrt(mean(x^2) + eps)`."""

    def __init__(self, width: int, eps: float = 1e-6, replicas: int = 1) -> None:
        super().__init__()
        self.width, self.replicas, self.variance_epsilon = width, replicas, eps
        self.weight = _sharded_parameter(_local_width(width, replicas), 1.0, replicas)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        variance = mean_over_tensor_parallel(hidden_states.pow(2), self.width, self.replicas)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states.to(input_dtype)


class ColumnParallelLayerNorm(nn.Module):
    """LayerNorm over `width` columns split over the TP ranks: `(x - mean) / sqrt(var + eps) * weight + bias`."""

    def __init__(self, width: int, eps: float = 1e-5, bias: bool = True, replicas: int = 1) -> None:
        super().__init__()
        self.width, self.replicas, self.eps = width, replicas, eps
        local = _local_width(width, replicas)
        self.weight = _sharded_parameter(local, 1.0, replicas)
        self.bias = _sharded_parameter(local, 0.0, replicas) if bias else None

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        mean = mean_over_tensor_parallel(hidden_states, self.width, self.replicas)
        centered = hidden_states - mean
        variance = mean_over_tensor_parallel(centered.pow(2), self.width, self.replicas)
        normed = (centered * torch.rsqrt(variance + self.eps)).to(input_dtype)
        return normed * self.weight if self.bias is None else normed * self.weight + self.bias


def shard_by_head(module: nn.Module, heads: int, replicas: int = 1) -> list[str]:
    """Keep the rank's heads of `module`: of each of its own parameters whose first dimension runs over
    `heads` heads (`(heads, ...)` rows, or `heads * n` values), and of each `nn.ModuleList` child holding
    one module per head (stablelm's per-head LayerNorms). The heads are tiled `replicas` times (K/V heads
    under NxD's GQA layer) and split over the TP ranks; the kept parameters are tagged as sharded. Returns
    the names of the lists it cut (their checkpoint entries need `HeadModulesSpec`)."""
    tp_size, tp_rank = get_tensor_model_parallel_size(), get_tensor_model_parallel_rank()
    if (heads * replicas) % tp_size:
        raise ValueError(f"{heads} heads ({replicas} replicas) cannot be split over {tp_size} TP ranks")
    lists = []
    for name, child in list(module.named_children()):
        if isinstance(child, nn.ModuleList) and len(child) == heads:
            lists.append(name)
            kept = [
                child[head] for head in torch.arange(heads).repeat(replicas).chunk(tp_size)[tp_rank].tolist()
            ]
            for parameter in (parameter for entry in kept for parameter in entry.parameters()):
                _tag(parameter, replicas)
            setattr(module, name, nn.ModuleList(kept))
    for name, parameter in list(module.named_parameters(recurse=False)):
        if parameter.shape[0] % heads:
            raise ValueError(f"{name} of shape {tuple(parameter.shape)} does not run over {heads} heads")
        rows = parameter.detach().reshape(heads, -1).repeat(replicas, 1).chunk(tp_size)[tp_rank]
        local = rows.reshape(-1, *parameter.shape[1:]).clone()
        setattr(module, name, _tag(nn.Parameter(local, requires_grad=parameter.requires_grad), replicas))
    return lists
