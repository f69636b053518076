"""Tensor-parallel layers against the dense torch layers built from their gathered shards.

For each TP size (1, 2, 4) one batch of configurations runs on the ranks (see `_run_cases`): every rank
builds the layer from a fixed seed, feeds its part of a fixed input, back-propagates its part of a fixed
upstream gradient, and returns its shards, outputs and gradients. This process then rebuilds the full
weight with an independent layout rule (`_owned`), runs `nn.Linear` / `nn.Embedding` on the full input
and checks, per rank: the output, the input gradient, and the gathered weight and bias gradients. The
seeded shards must also equal the seeded dense layer's parameters bit for bit (NXD-03 for biases).
"""

from __future__ import annotations

import functools
from typing import Any

import pytest
import torch
from torch import nn

from conformance.tensor_parallel_run import run_tensor_parallel

TP_SIZES = (1, 2, 4)
S, B = 8, 2  # sequence and batch of every input
CPL_IN, CPL_OUT = 8, 16
RPL_IN, RPL_OUT = 16, 8
VOCAB, EMBED = 16, 8

# fp32 sums over ranks are regrouped against the dense matmul, so only ~1 ulp of drift is allowed.
CLOSE = {"rtol": 1e-6, "atol": 1e-6}


def _owned(size: int, world: int, rank: int, stride: int = 1) -> list[int]:
    """Global indices held by `rank`: `stride` blocks of `size / (world * stride)`, block k at `(k*world + rank)`."""
    chunk = size // (world * stride)
    return [(k * world + rank) * chunk + i for k in range(stride) for i in range(chunk)]


def _assemble(shards: list[torch.Tensor], dim: int, size: int, stride: int = 1) -> torch.Tensor:
    """The full tensor whose `_owned` slices along `dim` are `shards` (one per rank)."""
    shape = list(shards[0].shape)
    shape[dim] = size
    full = torch.empty(shape, dtype=shards[0].dtype)
    for rank, shard in enumerate(shards):
        full.index_copy_(dim, torch.tensor(_owned(size, len(shards), rank, stride)), shard)
    return full


def _tensors(seed: int, *shapes: tuple[int, ...]) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator) for shape in shapes]


def _ids(seed: int) -> torch.Tensor:
    ids = torch.randint(0, VOCAB, (B, S), generator=torch.Generator().manual_seed(seed))
    ids[0, 0] = 0  # the padding id always occurs
    ids[1, 1] = VOCAB - 1  # and so does the last row (on the last rank)
    return ids


# --- the configurations ----------------------------------------------------------------------------------


def _linear_cases() -> list[dict[str, Any]]:
    cases = []
    for stride in (1, 2):
        for bias in (True, False):
            for sp, gather in ((False, False), (False, True), (True, False)):
                cases.append({"kind": "cpl", "stride": stride, "bias": bias, "sp": sp, "gather": gather})
    for bias in (True, False):
        for sp, parallel_input in ((False, False), (False, True), (True, True)):
            cases.append({"kind": "rpl", "bias": bias, "sp": sp, "parallel_input": parallel_input})
    return cases


def _embedding_cases() -> list[dict[str, Any]]:
    base = {"kind": "embedding", "padding_idx": None, "sp": False, "seq_dim": None, "collect": True}
    return [
        base,
        {**base, "padding_idx": 0},
        {**base, "padding_idx": VOCAB - 1, "sp": True},
        {**base, "sp": True, "seq_dim": 1},  # deviation NXD-06
        {**base, "collect": False},
        {**base, "kind": "embedding_dim_sharded", "padding_idx": 0},
    ]


CASES = [{**case, "seed": 100 + i} for i, case in enumerate(_linear_cases() + _embedding_cases())]


def _case_id(case: dict[str, Any]) -> str:
    return "-".join(f"{k}={v}" for k, v in case.items() if k not in ("seed",))


# --- what each rank runs ---------------------------------------------------------------------------------


def _detach(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach().clone()


def _tags(param: torch.Tensor | None) -> dict[str, Any] | None:
    if param is None:
        return None
    names = ("tensor_model_parallel", "partition_dim", "partition_stride", "num_partitions", "rank_ordering")
    tags = {name: getattr(param, name) for name in names if hasattr(param, name)}
    if hasattr(param, "sequence_parallel_enabled"):
        tags["sequence_parallel_enabled"] = param.sequence_parallel_enabled
    return tags


def _run_linear(case: dict[str, Any], world: int, rank: int) -> dict[str, Any]:
    from neuronx_distributed.parallel_layers.layers import ColumnParallelLinear, RowParallelLinear

    seq_dim = 0 if case["sp"] else None
    torch.manual_seed(case["seed"])
    if case["kind"] == "cpl":
        layer = ColumnParallelLinear(
            CPL_IN,
            CPL_OUT,
            bias=case["bias"],
            gather_output=case["gather"],
            stride=case["stride"],
            sequence_parallel_enabled=case["sp"],
            sequence_dimension=seq_dim,
        )
        x_full, g_full = _tensors(case["seed"], (S, B, CPL_IN), (S, B, CPL_OUT))
        x = x_full.chunk(world, 0)[rank] if case["sp"] else x_full
        g = g_full if case["gather"] else g_full[..., _owned(CPL_OUT, world, rank, case["stride"])]
    else:
        layer = RowParallelLinear(
            RPL_IN,
            RPL_OUT,
            bias=case["bias"],
            input_is_parallel=case["parallel_input"],
            sequence_parallel_enabled=case["sp"],
            sequence_dimension=seq_dim,
        )
        x_full, g_full = _tensors(case["seed"], (S, B, RPL_IN), (S, B, RPL_OUT))
        x = x_full[..., _owned(RPL_IN, world, rank)] if case["parallel_input"] else x_full
        g = g_full.chunk(world, 0)[rank] if case["sp"] else g_full
    x = x.clone().requires_grad_()
    out = layer(x)
    out.backward(g)
    return {
        "out": _detach(out),
        "x_grad": _detach(x.grad),
        "weight": _detach(layer.weight),
        "bias": _detach(layer.bias),
        "w_grad": _detach(layer.weight.grad),
        "b_grad": None if layer.bias is None else _detach(layer.bias.grad),
        "w_tags": _tags(layer.weight),
        "b_tags": _tags(layer.bias),
    }


def _run_embedding(case: dict[str, Any], world: int, rank: int) -> dict[str, Any]:
    from neuronx_distributed.parallel_layers.layers import ParallelEmbedding

    torch.manual_seed(case["seed"])
    layer = ParallelEmbedding(
        VOCAB,
        EMBED,
        padding_idx=case["padding_idx"],
        shard_across_embedding=case["kind"] != "embedding",
        sequence_parallel_enabled=case["sp"],
        sequence_dimension=case["seq_dim"],
        collect_output=case["collect"],
    )
    (g_full,) = _tensors(case["seed"], (B, S, EMBED))
    if case["sp"] and case["seq_dim"]:
        g = g_full.chunk(world, case["seq_dim"])[rank]
    elif case["sp"]:
        g = g_full.transpose(0, 1).chunk(world, 0)[rank]
    else:
        g = g_full
    out = layer(_ids(case["seed"]))
    out.backward(g)
    return {
        "out": _detach(out),
        "weight": _detach(layer.weight),
        "w_grad": _detach(layer.weight.grad),
        "w_tags": _tags(layer.weight),
        "range": (layer.vocab_start_index, layer.vocab_end_index, layer.num_embeddings_per_partition),
        "padding_idx": layer.padding_idx,
    }


def _run_uneven_vocab() -> str | int:
    """A vocabulary of 10: the per-rank size, or the error message when T does not divide it."""
    from neuronx_distributed.parallel_layers.layers import ParallelEmbedding

    try:
        return ParallelEmbedding(10, 4).num_embeddings_per_partition
    except AssertionError as exc:
        return str(exc)


def _run_cases(cases: list[dict[str, Any]]) -> dict[str, Any]:
    from neuronx_distributed.parallel_layers import parallel_state as ps

    world, rank = ps.get_tensor_model_parallel_size(), ps.get_tensor_model_parallel_rank()
    results = [
        _run_linear(case, world, rank)
        if case["kind"] in ("cpl", "rpl")
        else _run_embedding(case, world, rank)
        for case in cases
    ]
    return {"cases": results, "uneven_vocab": _run_uneven_vocab()}


@functools.cache
def _results(world: int) -> list[dict[str, Any]]:
    """Per rank, the outcome of every case in `CASES` at TP size `world` (one launch per size)."""
    return run_tensor_parallel(_run_cases, world, CASES, timeout=300)


def _case_results(world: int, case: dict[str, Any]) -> list[dict[str, Any]]:
    index = CASES.index(case)
    return [rank_results["cases"][index] for rank_results in _results(world)]


# --- dense oracles ---------------------------------------------------------------------------------------


def _dense_linear(weight: torch.Tensor, bias: torch.Tensor | None, x: torch.Tensor, g: torch.Tensor):
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        linear.weight.copy_(weight)
        if bias is not None:
            linear.bias.copy_(bias)
    x = x.clone().requires_grad_()
    out = linear(x)
    out.backward(g)
    return out.detach(), x.grad, linear.weight.grad, None if bias is None else linear.bias.grad


def _assert_equal(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    assert torch.equal(actual, expected), f"{what} differs: max |diff| {(actual - expected).abs().max()}"


# --- tests -----------------------------------------------------------------------------------------------

CPL_CASES = [case for case in CASES if case["kind"] == "cpl"]
RPL_CASES = [case for case in CASES if case["kind"] == "rpl"]
EMBEDDING_CASES = [case for case in CASES if case["kind"].startswith("embedding")]


@pytest.mark.parametrize("world", TP_SIZES)
@pytest.mark.parametrize("case", CPL_CASES, ids=_case_id)
def test_column_parallel_linear_matches_dense(world, case):
    ranks = _case_results(world, case)
    stride = case["stride"]
    weight = _assemble([r["weight"] for r in ranks], 0, CPL_OUT, stride)
    torch.manual_seed(case["seed"])
    seeded = nn.Linear(CPL_IN, CPL_OUT, bias=case["bias"])
    _assert_equal(weight, seeded.weight.detach(), "gathered weight vs seeded nn.Linear")

    if case["gather"]:
        bias = ranks[0]["bias"]
    else:
        bias = _assemble([r["bias"] for r in ranks], 0, CPL_OUT, stride) if case["bias"] else None
    if case["bias"]:
        _assert_equal(bias, seeded.bias.detach(), "bias vs seeded nn.Linear (NXD-03)")

    x, g = _tensors(case["seed"], (S, B, CPL_IN), (S, B, CPL_OUT))
    out, x_grad, w_grad, b_grad = _dense_linear(weight, bias, x, g)
    for rank, result in enumerate(ranks):
        columns = _owned(CPL_OUT, world, rank, stride)
        # gather_output=True returns the master's column order even with stride 2 (NXD-15).
        torch.testing.assert_close(result["out"], out if case["gather"] else out[..., columns], **CLOSE)
        expected_x_grad = x_grad.chunk(world, 0)[rank] if case["sp"] else x_grad
        torch.testing.assert_close(result["x_grad"], expected_x_grad, **CLOSE)
        if case["gather"] and case["bias"]:
            torch.testing.assert_close(result["bias"], bias, rtol=0, atol=0)
            torch.testing.assert_close(result["b_grad"], b_grad, **CLOSE)
        assert result["w_tags"] == {
            "tensor_model_parallel": True,
            "partition_dim": 0,
            "partition_stride": stride,
            "num_partitions": world,
            "rank_ordering": None,
        }
        if case["bias"]:
            parallel_bias = {"tensor_model_parallel": True, "partition_dim": 0, "partition_stride": stride}
            if case["gather"]:
                assert result["b_tags"] == {}
            else:
                assert parallel_bias.items() <= result["b_tags"].items()
    torch.testing.assert_close(_assemble([r["w_grad"] for r in ranks], 0, CPL_OUT, stride), w_grad, **CLOSE)
    if case["bias"] and not case["gather"]:
        torch.testing.assert_close(
            _assemble([r["b_grad"] for r in ranks], 0, CPL_OUT, stride), b_grad, **CLOSE
        )


@pytest.mark.parametrize("world", TP_SIZES)
@pytest.mark.parametrize("case", RPL_CASES, ids=_case_id)
def test_row_parallel_linear_matches_dense(world, case):
    ranks = _case_results(world, case)
    weight = _assemble([r["weight"] for r in ranks], 1, RPL_IN)
    torch.manual_seed(case["seed"])
    seeded = nn.Linear(RPL_IN, RPL_OUT, bias=case["bias"])
    _assert_equal(weight, seeded.weight.detach(), "gathered weight vs seeded nn.Linear")
    bias = ranks[0]["bias"]
    if case["bias"]:
        _assert_equal(bias, seeded.bias.detach(), "bias vs seeded nn.Linear (NXD-03)")

    x, g = _tensors(case["seed"], (S, B, RPL_IN), (S, B, RPL_OUT))
    out, x_grad, w_grad, b_grad = _dense_linear(weight, bias, x, g)
    for rank, result in enumerate(ranks):
        torch.testing.assert_close(result["out"], out.chunk(world, 0)[rank] if case["sp"] else out, **CLOSE)
        expected_x_grad = x_grad[..., _owned(RPL_IN, world, rank)] if case["parallel_input"] else x_grad
        torch.testing.assert_close(result["x_grad"], expected_x_grad, **CLOSE)
        assert result["w_tags"] == {
            "tensor_model_parallel": True,
            "partition_dim": 1,
            "partition_stride": 1,
            "num_partitions": world,
            "rank_ordering": None,
        }
        if case["bias"]:
            _assert_equal(result["bias"], bias, "replicated bias")
            # Never sharded; tagged so the gradient code all-reduces it under sequence parallelism.
            assert result["b_tags"] == {"sequence_parallel_enabled": case["sp"]}
            if not case["sp"]:
                torch.testing.assert_close(result["b_grad"], b_grad, **CLOSE)
    torch.testing.assert_close(_assemble([r["w_grad"] for r in ranks], 1, RPL_IN), w_grad, **CLOSE)
    if case["bias"] and case["sp"]:
        # Each rank saw only its sequence chunk: the partial bias gradients add up to the dense one.
        torch.testing.assert_close(sum(r["b_grad"] for r in ranks), b_grad, **CLOSE)


@pytest.mark.parametrize("world", TP_SIZES)
@pytest.mark.parametrize("case", EMBEDDING_CASES, ids=_case_id)
def test_parallel_embedding_matches_dense(world, case):
    ranks = _case_results(world, case)
    by_vocab = case["kind"] == "embedding"
    dim, size = (0, VOCAB) if by_vocab else (1, EMBED)
    weight = _assemble([r["weight"] for r in ranks], dim, size)
    torch.manual_seed(case["seed"])
    seeded = nn.Embedding(VOCAB, EMBED, padding_idx=case["padding_idx"])
    # nn.Embedding's normal_ init, padding row zeroed as nn.Embedding does (NXD-05).
    _assert_equal(weight, seeded.weight.detach(), "gathered table vs seeded nn.Embedding")

    ids = _ids(case["seed"])
    (g,) = _tensors(case["seed"], (B, S, EMBED))
    seeded.weight.grad = None
    out = seeded(ids)
    out.backward(g)
    out = out.detach()
    for rank, result in enumerate(ranks):
        if not case["collect"]:
            # The partial: this rank's rows, zeros (and no gradient) for ids held by other ranks.
            held = (ids >= rank * VOCAB // world) & (ids < (rank + 1) * VOCAB // world)
            expected = out * held.unsqueeze(-1)
        elif case["sp"] and case["seq_dim"]:
            expected = out.chunk(world, case["seq_dim"])[rank]
        elif case["sp"]:
            expected = out.transpose(0, 1).chunk(world, 0)[rank]  # sequence-first shard (S/T, B, H)
        else:
            expected = out
        _assert_equal(result["out"], expected, f"rank {rank} output")
        assert result["w_tags"] == {
            "tensor_model_parallel": True,
            "partition_dim": dim,
            "partition_stride": 1,
            "num_partitions": world,
            "rank_ordering": None,
        }
        if by_vocab:
            start = rank * VOCAB // world
            assert result["range"] == (start, start + VOCAB // world, VOCAB // world)
    w_grad = _assemble([r["w_grad"] for r in ranks], dim, size)
    torch.testing.assert_close(w_grad, seeded.weight.grad, **CLOSE)
    if case["padding_idx"] is not None:
        assert (ids == case["padding_idx"]).any()
        assert not w_grad[case["padding_idx"]].any(), "the padding row received a gradient"


@pytest.mark.parametrize("world", TP_SIZES)
def test_embedding_padding_idx_is_local_and_kept_for_zero(world):
    (case,) = [c for c in EMBEDDING_CASES if c["kind"] == "embedding" and c["padding_idx"] == 0]
    ranks = _case_results(world, case)
    # NxD drops padding_idx=0 on every rank (NXD-05); here rank 0 holds it as local row 0.
    assert [r["padding_idx"] for r in ranks] == [0] + [None] * (world - 1)
    (case,) = [c for c in EMBEDDING_CASES if c["padding_idx"] == VOCAB - 1]
    ranks = _case_results(world, case)
    assert [r["padding_idx"] for r in ranks] == [None] * (world - 1) + [VOCAB // world - 1]


@pytest.mark.parametrize("world", TP_SIZES)
def test_embedding_vocab_must_divide_by_tp(world):
    outcomes = [r["uneven_vocab"] for r in _results(world)]
    if 10 % world == 0:
        assert outcomes == [10 // world] * world
    else:
        for message in outcomes:
            assert "not divisible" in message and "10" in message and str(world) in message


# --- construction details (one launch each, on warm rank pools) ------------------------------------------


def _run_meta_and_rng() -> dict[str, Any]:
    import torch.distributed as dist
    from neuronx_distributed.parallel_layers import parallel_state as ps
    from neuronx_distributed.parallel_layers.layers import (
        ColumnParallelLinear,
        ParallelEmbedding,
        RowParallelLinear,
    )

    torch.manual_seed(0)
    meta = torch.device("meta")
    layers = {
        "cpl": ColumnParallelLinear(8, 16, gather_output=False, device=meta, stride=2, rank_ordering=[1, 0]),
        "rpl": RowParallelLinear(16, 8, input_is_parallel=True, device=meta, rank_ordering=[1, 0]),
        "emb": ParallelEmbedding(16, 8, device=meta, rank_ordering=[1, 0]),
    }
    after_meta = torch.rand(3)  # meta layers must not consume the RNG
    cpl = ColumnParallelLinear(8, 16, gather_output=False)
    return {
        "devices": {name: layer.weight.device.type for name, layer in layers.items()},
        "tags": {name: _tags(layer.weight) for name, layer in layers.items()},
        "cpl_bias_tags": _tags(layers["cpl"].bias),
        "rpl_bias_tags": _tags(layers["rpl"].bias),
        "after_meta": after_meta,
        "attributes": {
            "input_size": cpl.input_size,
            "output_size": cpl.output_size,
            "output_size_per_partition": cpl.output_size_per_partition,
            "gather_output": cpl.gather_output,
            "sequence_parallel_enabled": cpl.sequence_parallel_enabled,
            "sequence_dimension": cpl.sequence_dimension,
            "stride": cpl.stride,
            "group_is_tp": cpl.tensor_parallel_group is ps.get_tensor_model_parallel_group(),
            "group_size": dist.get_world_size(cpl.tensor_parallel_group),
        },
    }


def test_meta_device_sets_tags_only_and_keeps_rank_ordering():
    ranks = run_tensor_parallel(_run_meta_and_rng, 2)
    torch.manual_seed(0)
    expected_rng = torch.rand(3)
    for result in ranks:
        assert result["devices"] == {"cpl": "meta", "rpl": "meta", "emb": "meta"}
        _assert_equal(result["after_meta"], expected_rng, "RNG after meta construction")
        tags = result["tags"]
        assert tags["cpl"] == {
            "tensor_model_parallel": True,
            "partition_dim": 0,
            "partition_stride": 2,
            "num_partitions": 2,
            "rank_ordering": [1, 0],
        }
        assert tags["rpl"]["partition_dim"] == 1 and tags["rpl"]["rank_ordering"] == [1, 0]
        assert tags["emb"]["partition_dim"] == 0 and tags["emb"]["rank_ordering"] == [1, 0]
        assert result["cpl_bias_tags"]["partition_stride"] == 2
        assert result["cpl_bias_tags"]["rank_ordering"] == [1, 0]
        assert result["rpl_bias_tags"] == {"sequence_parallel_enabled": False}
        assert result["attributes"] == {
            "input_size": 8,
            "output_size": 16,
            "output_size_per_partition": 8,
            "gather_output": False,
            "sequence_parallel_enabled": False,
            "sequence_dimension": None,
            "stride": 1,
            "group_is_tp": True,
            "group_size": 2,
        }


def _run_master_weight_dtype_and_reinit() -> dict[str, Any]:
    from functools import partial

    from neuronx_distributed.parallel_layers.layers import (
        BaseParallelLinear,
        ColumnParallelLinear,
        ParallelEmbedding,
        RowParallelLinear,
    )

    torch.manual_seed(1)
    kept = ColumnParallelLinear(8, 16, stride=2, keep_master_weight=True, gather_output=False)
    torch.manual_seed(2)
    bf16 = RowParallelLinear(16, 8, dtype=torch.bfloat16)
    torch.manual_seed(3)
    custom = ColumnParallelLinear(8, 16, init_method=partial(torch.nn.init.normal_, std=0.02))
    fresh = custom.weight.detach().clone(), custom.bias.detach().clone()
    torch.manual_seed(3)
    custom.initialize_weight_and_bias()

    def in_place_without_no_grad(weight: torch.Tensor) -> None:
        weight.fill_(1.0)

    try:
        ColumnParallelLinear(8, 16, init_method=in_place_without_no_grad)
        in_place_error = None
    except RuntimeError as exc:
        in_place_error = str(exc)
    torch.manual_seed(4)
    fp16_embedding = ParallelEmbedding(16, 8, dtype=torch.float16)
    return {
        "master_type": type(kept.master_weight).__name__,
        "master": kept.master_weight,
        "state_dict_keys": sorted(kept.state_dict()),
        "parameter_names": sorted(name for name, _ in kept.named_parameters()),
        "is_base": isinstance(kept, BaseParallelLinear) and isinstance(bf16, BaseParallelLinear),
        "bf16": (bf16.weight.dtype, bf16.bias.dtype, bf16.weight.detach(), bf16.bias.detach()),
        "reinit_equal": torch.equal(custom.weight, fresh[0]) and torch.equal(custom.bias, fresh[1]),
        "reinit_tags": _tags(custom.weight),
        "custom_weight": custom.weight.detach(),
        "in_place_error": in_place_error,
        "fp16_embedding_out": fp16_embedding(torch.arange(16).view(2, 8)).dtype,
    }


def test_master_weight_dtype_custom_init_and_reinitialisation():
    ranks = run_tensor_parallel(_run_master_weight_dtype_and_reinit, 2)
    torch.manual_seed(1)
    kept_reference = nn.Linear(8, 16)
    torch.manual_seed(2)
    bf16_reference = nn.Linear(16, 8)
    torch.manual_seed(3)
    custom_master = torch.nn.init.normal_(torch.empty(16, 8), std=0.02)
    for result in ranks:
        # NXD-04: a plain tensor, never a parameter or a state_dict entry; equal to the full master.
        assert result["master_type"] == "Tensor"
        _assert_equal(result["master"], kept_reference.weight.detach(), "master_weight")
        assert result["state_dict_keys"] == ["bias", "weight"] == result["parameter_names"]
        assert result["is_base"]
        assert result["bf16"][:2] == (torch.bfloat16, torch.bfloat16)
        assert result["reinit_equal"], "initialize_weight_and_bias under the same seed changed the values"
        assert result["reinit_tags"]["tensor_model_parallel"] and result["reinit_tags"]["partition_dim"] == 0
        assert result["in_place_error"] is not None and "requires grad" in result["in_place_error"]
        # NxD forces a non-fp32 embedding's output to bf16; here it keeps the parameter dtype (NXD-05).
        assert result["fp16_embedding_out"] == torch.float16
    bf16_weight = _assemble([r["bf16"][2] for r in ranks], 1, 16)
    _assert_equal(bf16_weight, bf16_reference.weight.detach().to(torch.bfloat16), "bf16 weight")
    _assert_equal(ranks[0]["bf16"][3], bf16_reference.bias.detach().to(torch.bfloat16), "bf16 bias")
    _assert_equal(_assemble([r["custom_weight"] for r in ranks], 0, 16), custom_master, "custom init")


def _run_bf16_input_gradient() -> tuple[torch.Tensor, torch.Tensor]:
    from neuronx_distributed.parallel_layers.layers import ColumnParallelLinear

    torch.manual_seed(5)
    layer = ColumnParallelLinear(CPL_IN, CPL_OUT, bias=False, gather_output=False, dtype=torch.bfloat16)
    x_full, g_full = _tensors(5, (S, B, CPL_IN), (S, B, CPL_OUT))
    x = x_full.to(torch.bfloat16).requires_grad_()
    from neuronx_distributed.parallel_layers import parallel_state as ps

    rank, world = ps.get_tensor_model_parallel_rank(), ps.get_tensor_model_parallel_size()
    layer(x).backward(g_full[..., _owned(CPL_OUT, world, rank)].to(torch.bfloat16))
    return x.grad, layer.weight.detach()


def test_bf16_column_input_gradient_is_reduced_over_tp():
    # NxD returns the un-reduced local gradient when its dtype differs from reduce_dtype (NXD-07).
    ranks = run_tensor_parallel(_run_bf16_input_gradient, 2)
    weight = _assemble([w for _, w in ranks], 0, CPL_OUT).float()
    _, g = _tensors(5, (S, B, CPL_IN), (S, B, CPL_OUT))
    expected = g.to(torch.bfloat16).float() @ weight
    for grad, _ in ranks:
        assert grad.dtype == torch.bfloat16
        torch.testing.assert_close(grad.float(), expected, rtol=2e-2, atol=2e-2)
    _assert_equal(ranks[0][0], ranks[1][0], "input gradients of the two ranks")


def _run_reduce_output_skip_bias_and_sp_errors() -> dict[str, Any]:
    import warnings

    from neuronx_distributed.parallel_layers.layers import ColumnParallelLinear, RowParallelLinear

    torch.manual_seed(6)
    partial_layer = RowParallelLinear(RPL_IN, RPL_OUT, input_is_parallel=False, reduce_output=False)
    (x,) = _tensors(6, (S, B, RPL_IN))
    partial = partial_layer(x).detach()
    torch.manual_seed(7)
    skip = ColumnParallelLinear(CPL_IN, CPL_OUT, skip_bias_add=True)
    (y,) = _tensors(7, (S, B, CPL_IN))
    out, bias = skip(y)
    try:
        RowParallelLinear(RPL_IN, RPL_OUT, input_is_parallel=False, sequence_parallel_enabled=True)
        sp_error = None
    except RuntimeError as exc:
        sp_error = str(exc)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        defaulted = ColumnParallelLinear(CPL_IN, CPL_OUT, gather_output=False, sequence_parallel_enabled=True)
    return {
        "partial": partial,
        "rpl_weight": partial_layer.weight.detach(),
        "rpl_bias": partial_layer.bias.detach(),
        "skip": (out.detach(), bias is skip.bias),
        "skip_bias": skip.bias.detach(),
        "skip_weight": skip.weight.detach(),
        "sp_error": sp_error,
        "defaulted_dim": defaulted.sequence_dimension,
        "warned": any("sequence_dimension" in str(w.message) for w in caught),
    }


def test_reduce_output_false_skip_bias_add_and_sequence_parallel_preconditions():
    ranks = run_tensor_parallel(_run_reduce_output_skip_bias_and_sp_errors, 2)
    (x,) = _tensors(6, (S, B, RPL_IN))
    rpl_weight = _assemble([r["rpl_weight"] for r in ranks], 1, RPL_IN)
    bias = ranks[0]["rpl_bias"]
    # Every rank adds the full bias to its partial sum.
    torch.testing.assert_close(
        sum(r["partial"] - bias for r in ranks) + bias, x @ rpl_weight.t() + bias, **CLOSE
    )
    (y,) = _tensors(7, (S, B, CPL_IN))
    cpl_weight = _assemble([r["skip_weight"] for r in ranks], 0, CPL_OUT)
    for result in ranks:
        out, returned_own_bias = result["skip"]
        assert returned_own_bias
        torch.testing.assert_close(out, y @ cpl_weight.t(), **CLOSE)  # no bias added
        assert result["sp_error"] is not None and "input_is_parallel" in result["sp_error"]
        assert result["defaulted_dim"] == 0 and result["warned"]


def _run_padding() -> dict[str, Any]:
    from neuronx_distributed.parallel_layers.layers import (
        ColumnParallelLinear,
        ParallelEmbedding,
        RowParallelLinear,
    )

    torch.manual_seed(8)
    cpl = ColumnParallelLinear(8, 10, bias=False, pad=True)  # gather_output=True
    rpl = RowParallelLinear(10, 8, pad=True)
    emb = ParallelEmbedding(10, 8, pad=True)
    x = torch.randn(2, 3, 8)
    z = torch.randn(2, 3, 10)
    ids = torch.arange(10).view(2, 5)
    errors = []
    for layer, arg in ((cpl, x), (rpl, z), (emb, ids)):
        try:
            layer(arg)
            errors.append(None)
        except RuntimeError as exc:
            errors.append(str(exc))
    for layer in (cpl, rpl, emb):
        layer.eval()
    hooked = {
        "cpl.weight": torch.ones(10, 8),
        "cpl.bias": torch.ones(10),
        "rpl.weight": torch.ones(8, 10),
        "rpl.bias": torch.ones(8),
        "emb.weight": torch.ones(10, 8),
    }
    cpl.preshard_hook(hooked, "cpl.weight")
    cpl.preshard_hook(hooked, "cpl.bias")
    rpl.preshard_hook(hooked, "rpl.weight")
    rpl.preshard_hook(hooked, "rpl.bias")
    emb.preshard_hook(hooked, "emb.weight")
    return {
        "sizes": (cpl.pad_size, cpl.output_size, cpl.output_size_per_partition, rpl.pad_size, rpl.input_size),
        "emb_sizes": (emb.pad_size, emb.num_embeddings, emb.num_embeddings_per_partition),
        "errors": errors,
        "eval": (cpl(x).detach(), rpl(z).detach(), emb(ids).detach(), x, z),
        "weights": (cpl.weight.detach(), rpl.weight.detach(), rpl.bias.detach(), emb.weight.detach()),
        "hooked": hooked,
    }


def test_padding_is_inference_only_and_pads_to_a_multiple_of_tp():
    ranks = run_tensor_parallel(_run_padding, 4)
    for result in ranks:
        # 10 outputs/inputs/rows on 4 ranks: padded by 2 to 12, 3 per rank.
        assert result["sizes"] == (2, 12, 3, 2, 12)
        assert result["emb_sizes"] == (2, 12, 3)
        assert all(
            error is not None and "only supported for inference" in error for error in result["errors"]
        )
        hooked = result["hooked"]
        assert torch.equal(hooked["cpl.weight"], torch.cat([torch.ones(10, 8), torch.zeros(2, 8)]))
        min_value = torch.finfo(torch.float32).min
        assert torch.equal(hooked["cpl.bias"], torch.tensor([1.0] * 10 + [min_value] * 2))
        assert torch.equal(hooked["rpl.weight"], torch.cat([torch.ones(8, 10), torch.zeros(8, 2)], dim=1))
        assert torch.equal(hooked["rpl.bias"], torch.ones(8))
        assert torch.equal(hooked["emb.weight"], torch.cat([torch.ones(10, 8), torch.zeros(2, 8)]))
    cpl_w = _assemble([r["weights"][0] for r in ranks], 0, 12)
    rpl_w = _assemble([r["weights"][1] for r in ranks], 1, 12)
    emb_w = _assemble([r["weights"][3] for r in ranks], 0, 12)
    for result in ranks:
        cpl_out, rpl_out, emb_out, x, z = result["eval"]
        torch.testing.assert_close(cpl_out, x @ cpl_w[:10].t(), **CLOSE)  # padded columns cut off
        torch.testing.assert_close(rpl_out, z @ rpl_w[:, :10].t() + result["weights"][2], **CLOSE)
        _assert_equal(emb_out, emb_w[torch.arange(10).view(2, 5)], "padded embedding lookup")


# --- norms (single process) ------------------------------------------------------------------------------


@pytest.mark.parametrize("sequence_parallel", [True, False])
def test_layer_norm_is_nn_layer_norm_with_tagged_parameters(sequence_parallel):
    from conformance.backends.reference.neuronx_distributed.parallel_layers.layer_norm import LayerNorm

    norm = LayerNorm(8, eps=1e-6, sequence_parallel_enabled=sequence_parallel)
    assert isinstance(norm, nn.LayerNorm)
    assert norm.weight.sequence_parallel_enabled is sequence_parallel
    assert norm.bias.sequence_parallel_enabled is sequence_parallel
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    (x,) = _tensors(9, (S, B, 8))
    _assert_equal(norm(x), nn.functional.layer_norm(x, (8,), norm.weight, norm.bias, 1e-6), "layer norm")
    assert LayerNorm(8, bias=False, sequence_parallel_enabled=True).bias is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_computes_in_fp32_and_casts_back(dtype):
    from conformance.backends.reference.neuronx_distributed.modules.rms_norm import RMSNorm

    norm = RMSNorm(8, eps=1e-6, sequence_parallel_enabled=True)
    assert norm.weight.sequence_parallel_enabled is True
    assert torch.equal(norm.weight, torch.ones(8))
    with torch.no_grad():
        norm.weight.normal_()
    (x,) = _tensors(10, (S, B, 8))
    x = x.to(dtype)
    out = norm(x)
    expected = nn.functional.rms_norm(x.float(), (8,), norm.weight, eps=1e-6).to(dtype)
    assert out.dtype == dtype
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
    assert not RMSNorm(4, sequence_parallel_enabled=False).weight.sequence_parallel_enabled
    with pytest.warns(UserWarning), pytest.raises(RuntimeError, match="elementwise_affine"):
        RMSNorm(4, elementwise_affine=False)


def _run_in_place_add_on_sequence_parallel_row_output() -> tuple[torch.Tensor, torch.Tensor]:
    from neuronx_distributed.parallel_layers import parallel_state as ps
    from neuronx_distributed.parallel_layers.layers import RowParallelLinear

    torch.manual_seed(8)
    layer = RowParallelLinear(
        RPL_IN, RPL_OUT, bias=False, input_is_parallel=True, sequence_parallel_enabled=True
    )
    rank, world = ps.get_tensor_model_parallel_rank(), ps.get_tensor_model_parallel_size()
    (x, other) = _tensors(8, (S, B, RPL_IN), (S // world, B, RPL_OUT))
    x = x[..., _owned(RPL_IN, world, rank)].requires_grad_()
    out = layer(x)
    out += other  # as a parallel block adds its attention output to the MLP's (`mlp_output += attn_output`)
    out.sum().backward()
    return out.detach(), x.grad


def test_a_sequence_parallel_row_output_can_be_added_to_in_place():
    """NxD's reduce-scatter returns a fresh tensor: the reference's must not be a view made inside the
    autograd Function (autograd refuses in-place changes to those: a false FAIL of parallel blocks)."""
    ranks = run_tensor_parallel(_run_in_place_add_on_sequence_parallel_row_output, 2)
    assert all(grad is not None for _, grad in ranks)
