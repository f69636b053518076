"""The full-width norms of `templates/modules/tensor_parallel_norms.py` against the dense norms.

Each rank holds its columns of a full-width tensor `x` (`WIDTH` columns, tiled `m` times as NxD's GQA layer
tiles replicated K/V heads on trn1, then split over T) and of the weight (and bias), runs the norm forward
and back with its part of an upstream gradient over the replicated columns. The oracle is transformers'
`LlamaRMSNorm` and torch's `nn.LayerNorm` on the dense `x`: the gathered outputs are its output tiled `m`
times, and the input, weight and bias gradients summed over the `m` tiles are its gradients for the upstream
gradient summed over the tiles (every replica of a column is the same dense column). A mean whose backward
does not sum over the ranks (an all-reduce in the forward only) gets the input gradient wrong: the negative
case shows the check can fail. With replicas, every copy of a weight column holds the whole gradient (the
module sums them over NxD's kv-shared group): each tile must equal the dense gradient, which a norm without
that sum (the second negative case) misses.

`shard_by_head` is checked the same way on transformers' `CohereLayerNorm` over `(heads, head_dim)` rows and
on stablelm's `StableLmLayerNormPerHead` (a list of one LayerNorm per head): each rank keeps its heads' rows
or norms (tiled `m` times), normalises its heads, and ends with the dense output and gradients of those
heads.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from transformers.models.cohere.modeling_cohere import CohereLayerNorm
from transformers.models.llama.modeling_llama import LlamaRMSNorm
from transformers.models.stablelm.modeling_stablelm import StableLmLayerNormPerHead

from conformance.tensor_parallel_run import run_tensor_parallel

MODULE = Path(__file__).resolve().parents[2] / "templates" / "modules" / "tensor_parallel_norms.py"
B, S, WIDTH = 2, 3, 8
EPS = 1e-5
CLOSE = {"rtol": 1e-5, "atol": 1e-6}  # fp32 sums regrouped over ranks
KINDS = ("rms", "layer", "layer-no-bias", "forward-only-reduce", "no-kv-sum")
CASES = [{"tp": tp, "replicas": m, "kind": kind} for tp in (2, 4) for m in (1, 2) for kind in KINDS]


def _inputs(case: dict[str, Any]) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(10 * case["replicas"] + KINDS.index(case["kind"]))
    m = case["replicas"]
    return {
        "x": torch.randn(B, S, WIDTH, generator=generator) * 3 + 1,
        "weight": torch.rand(WIDTH, generator=generator) + 0.5,
        "bias": torch.randn(WIDTH, generator=generator),
        "grad": torch.randn(B, S, WIDTH * m, generator=generator),
    }


def _run(cases: list[dict[str, Any]], module_path: str) -> list[dict[str, Any]]:
    """On each rank: every case of this TP size, its columns of the outputs and gradients."""
    from neuronx_distributed.parallel_layers import parallel_state as ps

    world, rank = ps.get_tensor_model_parallel_size(), ps.get_tensor_model_parallel_rank()
    results = []
    for case in cases:
        m, kind = case["replicas"], case["kind"]
        data = _inputs(case)
        spec = importlib.util.spec_from_file_location("tensor_parallel_norms", module_path)
        assert spec is not None and spec.loader is not None
        norms = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(norms)  # afresh for each case: the negative cases patch it
        if m > 1:
            ps.initialize_kv_group(m)  # what NxD's GQA layer does for its replicated K/V heads

        def mine(full: torch.Tensor, m: int = m) -> torch.Tensor:
            return full.tile(m).chunk(world, -1)[rank].clone()

        if kind == "rms":
            norm = norms.ColumnParallelRMSNorm(WIDTH, eps=EPS, replicas=m)
        elif kind == "forward-only-reduce":
            norm = norms.ColumnParallelRMSNorm(WIDTH, eps=EPS, replicas=m)
            # the mistake the module avoids: statistics summed in the forward, each rank's own in the backward
            norms.copy_to_tensor_model_parallel_region = lambda tensor: tensor
        elif kind == "no-kv-sum":
            # the other mistake: the copies of a replicated column keep their own partial gradients
            norms.sum_over_kv_replicas = lambda grad: grad
            norm = norms.ColumnParallelRMSNorm(WIDTH, eps=EPS, replicas=m)
        else:
            norm = norms.ColumnParallelLayerNorm(WIDTH, eps=EPS, bias=kind == "layer", replicas=m)
        with torch.no_grad():
            norm.weight.copy_(mine(data["weight"]))
            if getattr(norm, "bias", None) is not None:
                norm.bias.copy_(mine(data["bias"]))
        x = mine(data["x"]).requires_grad_()
        out = norm(x)
        out.backward(data["grad"].chunk(world, -1)[rank])
        bias = getattr(norm, "bias", None)
        results.append(
            {
                "out": out.detach(),
                "x_grad": x.grad,
                "w_grad": norm.weight.grad,
                "b_grad": None if bias is None else bias.grad,
                "tags": (norm.weight.tensor_model_parallel, norm.weight.partition_dim),
            }
        )
        if m > 1:
            ps.destroy_kv_group()
    return results


@functools.cache
def _results(tp: int) -> list[list[dict[str, Any]]]:
    cases = [case for case in CASES if case["tp"] == tp]
    return run_tensor_parallel(_run, tp, cases, str(MODULE), timeout=300)


def _tiles(ranks: list[dict[str, Any]], key: str, m: int) -> torch.Tensor:
    """The ranks' columns put together, one row per tile `(m, WIDTH)`."""
    return torch.cat([rank[key] for rank in ranks], -1).unflatten(-1, (m, WIDTH))


def _gathered(ranks: list[dict[str, Any]], key: str, m: int) -> torch.Tensor:
    """The ranks' columns put together, then the `m` tiles summed (or the one tile when m == 1)."""
    full = torch.cat([rank[key] for rank in ranks], -1)
    return full.unflatten(-1, (m, WIDTH)).sum(-2)


def _dense(case: dict[str, Any]) -> dict[str, torch.Tensor | None]:
    data = _inputs(case)
    if case["kind"] in ("rms", "forward-only-reduce", "no-kv-sum"):
        norm: nn.Module = LlamaRMSNorm(WIDTH, eps=EPS)
    else:
        norm = nn.LayerNorm(WIDTH, eps=EPS, bias=case["kind"] == "layer")
    with torch.no_grad():
        norm.weight.copy_(data["weight"])
        if getattr(norm, "bias", None) is not None:
            norm.bias.copy_(data["bias"])
    x = data["x"].clone().requires_grad_()
    out = norm(x)
    out.backward(data["grad"].unflatten(-1, (case["replicas"], WIDTH)).sum(-2))
    bias = getattr(norm, "bias", None)
    return {
        "out": out.detach(),
        "x_grad": x.grad,
        "w_grad": norm.weight.grad,
        "b_grad": None if bias is None else bias.grad,
    }


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"T{c['tp']}-m{c['replicas']}-{c['kind']}")
def test_full_width_norm_split_over_ranks_matches_the_dense_norm(case: dict[str, Any]) -> None:
    index = [c for c in CASES if c["tp"] == case["tp"]].index(case)
    ranks = [rank_results[index] for rank_results in _results(case["tp"])]
    m = case["replicas"]
    dense = _dense(case)
    outputs = torch.cat([rank["out"] for rank in ranks], -1).unflatten(-1, (m, WIDTH))
    x_grad = _gathered(ranks, "x_grad", m)
    if case["kind"] == "forward-only-reduce":
        # the forward is right, the input gradient misses the other ranks' share of the statistic's gradient
        torch.testing.assert_close(outputs, dense["out"].unsqueeze(-2).expand_as(outputs), **CLOSE)
        assert not torch.allclose(x_grad, dense["x_grad"], **CLOSE)
        return
    torch.testing.assert_close(outputs, dense["out"].unsqueeze(-2).expand_as(outputs), **CLOSE)
    torch.testing.assert_close(x_grad, dense["x_grad"], **CLOSE)
    w_tiles = _tiles(ranks, "w_grad", m)
    if case["kind"] == "no-kv-sum":  # each copy holds only its rank's share
        assert m == 1 or not torch.allclose(w_tiles, dense["w_grad"].expand_as(w_tiles), **CLOSE)
        return
    torch.testing.assert_close(w_tiles, dense["w_grad"].expand_as(w_tiles), **CLOSE)
    if dense["b_grad"] is None:
        assert all(rank["b_grad"] is None for rank in ranks)
    else:
        b_tiles = _tiles(ranks, "b_grad", m)
        torch.testing.assert_close(b_tiles, dense["b_grad"].expand_as(b_tiles), **CLOSE)
    assert all(rank["tags"] == (True, 0) for rank in ranks)


HEADS, HEAD_DIM = 4, 3
HEAD_CASES = [
    {"tp": tp, "replicas": m, "hook": hook, "layout": layout}
    for tp in (2, 4)
    for m in (1, 2)
    for hook in (True, False)
    for layout in ("rows", "list")
]


def _head_inputs(case: dict[str, Any]) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(100 + case["replicas"])
    m = case["replicas"]
    return {
        "x": torch.randn(B, S, HEADS, HEAD_DIM, generator=generator) * 2 + 1,
        "weight": torch.rand(HEADS, HEAD_DIM, generator=generator) + 0.5,
        "grad": torch.randn(B, S, HEADS * m, HEAD_DIM, generator=generator),
    }


def _run_heads(cases: list[dict[str, Any]], module_path: str) -> list[dict[str, Any]]:
    """On each rank: every case of this TP size, its heads' outputs and gradients."""
    from neuronx_distributed.parallel_layers import parallel_state as ps

    world, rank = ps.get_tensor_model_parallel_size(), ps.get_tensor_model_parallel_rank()
    results = []
    for case in cases:
        m = case["replicas"]
        data = _head_inputs(case)
        spec = importlib.util.spec_from_file_location("tensor_parallel_norms", module_path)
        assert spec is not None and spec.loader is not None
        norms = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(norms)
        if m > 1:
            ps.initialize_kv_group(m)
        if not case["hook"]:
            norms.sum_over_kv_replicas = lambda grad: grad
        norm = _dense_heads(case["layout"], data["weight"])
        cut = norms.shard_by_head(norm, HEADS, replicas=m)
        x = data["x"].repeat(1, 1, m, 1).chunk(world, 2)[rank].clone().requires_grad_()
        out = norm(x.transpose(1, 2)).transpose(1, 2) if case["layout"] == "list" else norm(x)
        out.backward(data["grad"].chunk(world, 2)[rank])
        weights = [entry.weight for entry in norm.norms] if case["layout"] == "list" else [norm.weight]
        results.append(
            {
                "out": out.detach(),
                "x_grad": x.grad,
                "w_grad": torch.stack([w.grad for w in weights]).reshape(-1, HEAD_DIM),
                "tags": [(w.tensor_model_parallel, w.partition_dim) for w in weights],
                "cut": cut,
            }
        )
        if m > 1:
            ps.destroy_kv_group()
    return results


def _dense_heads(layout: str, weight: torch.Tensor) -> nn.Module:
    """transformers' norm applied per head: cohere's rows `(heads, head_dim)`, or stablelm's list of one
    LayerNorm per head (which takes `(B, heads, S, head_dim)`)."""
    if layout == "rows":
        norm: nn.Module = CohereLayerNorm((HEADS, HEAD_DIM), eps=EPS)
        with torch.no_grad():
            norm.weight.copy_(weight)
        return norm
    norm = StableLmLayerNormPerHead(HEAD_DIM, HEADS, eps=EPS)
    with torch.no_grad():
        for entry, row in zip(norm.norms, weight, strict=True):
            entry.weight.copy_(row)
    return norm


@functools.cache
def _head_results(tp: int) -> list[list[dict[str, Any]]]:
    cases = [case for case in HEAD_CASES if case["tp"] == tp]
    return run_tensor_parallel(_run_heads, tp, cases, str(MODULE), timeout=300)


@pytest.mark.parametrize(
    "case", HEAD_CASES, ids=lambda c: f"T{c['tp']}-m{c['replicas']}-hook{c['hook']}-{c['layout']}"
)
def test_norm_sharded_by_head_matches_the_dense_norm(case: dict[str, Any]) -> None:
    index = [c for c in HEAD_CASES if c["tp"] == case["tp"]].index(case)
    ranks = [rank_results[index] for rank_results in _head_results(case["tp"])]
    m, tp = case["replicas"], case["tp"]
    data = _head_inputs(case)
    dense = _dense_heads(case["layout"], data["weight"])
    x = data["x"].clone().requires_grad_()
    out = dense(x.transpose(1, 2)).transpose(1, 2) if case["layout"] == "list" else dense(x)
    out.backward(data["grad"].unflatten(2, (m, HEADS)).sum(2))
    dense_grad = (
        torch.stack([entry.weight.grad for entry in dense.norms])
        if case["layout"] == "list"
        else dense.weight.grad
    )

    def tiles(key: str) -> torch.Tensor:
        return torch.cat([rank[key] for rank in ranks], 0 if key == "w_grad" else 2)

    # torch's LayerNorm kernel sums in another order on a (B, 1, S, d) slice than on the whole tensor
    close = CLOSE if case["layout"] == "rows" else {"rtol": 1e-4, "atol": 1e-5}
    local = HEADS * m // tp
    tags = [(True, 0)] * (local if case["layout"] == "list" else 1)
    assert [rank["tags"] for rank in ranks] == [tags] * tp
    assert all(rank["w_grad"].shape == (local, HEAD_DIM) for rank in ranks)
    assert all(rank["cut"] == (["norms"] if case["layout"] == "list" else []) for rank in ranks)
    torch.testing.assert_close(tiles("out"), out.detach().repeat(1, 1, m, 1), **close)
    torch.testing.assert_close(tiles("x_grad").unflatten(2, (m, HEADS)).sum(2), x.grad, **close)
    w_tiles = tiles("w_grad").unflatten(0, (m, HEADS))
    expected = dense_grad.expand_as(w_tiles)
    if case["hook"] or m == 1:
        torch.testing.assert_close(w_tiles, expected, **close)
    else:  # without the sum over the kv-shared group each copy holds its rank's share only
        assert not torch.allclose(w_tiles, expected, **close)
