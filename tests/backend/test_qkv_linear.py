"""GQAQKVColumnParallelLinear against dense nn.Linear q/k/v projections: layout, outputs and gradients.

The oracle: nn.Linear layers seeded like the layer (masters Q, K, V, then biases with nn.Linear's bound).
Rank r must hold Q rows [r*q_pp, (r+1)*q_pp) and K/V master rows (r*kv_pp + j) mod kv_size (the tile
layout). For the loss sum_r <q_r, Gq_r> + <k_r, Gk_r> + <v_r, Gv_r>, the dense equivalent feeds the dense
K/V outputs the upstream gradients of every replica of a row, summed.
"""

from __future__ import annotations

import math

import pytest
import torch

from conformance.tensor_parallel_run import run_tensor_parallel

IN = 6
LEAD = (4, 3)  # (B, S) without SP, (S, B) with SP: dim 0 is divisible by every TP size tested


def _dense_from_seed(seed: int, q_size: int, kv_size: int, bias: bool):
    """nn.Linear q/k/v drawn in the layer's order: weights Q, K, V, then biases Q, K, V."""
    torch.manual_seed(seed)
    linears = [torch.nn.Linear(IN, n, bias=bias) for n in (q_size, kv_size, kv_size)]
    torch.manual_seed(seed)
    with torch.no_grad():
        for lin in linears:  # nn.Linear draws its bias right after its weight; redraw in the layer's order
            torch.nn.init.kaiming_uniform_(lin.weight, a=math.sqrt(5))
        if bias:
            for lin in linears:
                lin.bias.uniform_(-1 / math.sqrt(IN), 1 / math.sqrt(IN))
    return linears


def _kv_rows(rank: int, kv_pp: int, kv_size: int) -> list[int]:
    return [(rank * kv_pp + j) % kv_size for j in range(kv_pp)]


def _close(actual, expected, what: str, cfg: dict) -> None:
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6, msg=lambda m: f"{what} {cfg}: {m}")


def _check_sharded(cfg: dict) -> None:
    """gather_output=False: local q/k/v, SP on or off, against the dense projections."""
    import torch.distributed as dist
    from neuronx_distributed.modules.qkv_linear import GQAQKVColumnParallelLinear
    from neuronx_distributed.parallel_layers import parallel_state as ps

    T, r = ps.get_tensor_model_parallel_size(), ps.get_tensor_model_parallel_rank()
    heads, kv_heads, d, m = cfg["heads"], cfg["kv_heads"], cfg["d"], cfg["m"]
    q_size, kv_size = heads * d, kv_heads * d
    torch.manual_seed(cfg["seed"])
    layer = GQAQKVColumnParallelLinear(
        IN,
        [q_size, kv_size],
        bias=cfg["bias"],
        gather_output=False,
        sequence_parallel_enabled=cfg["sp"],
        kv_size_multiplier=m,
        fuse_qkv=cfg["fuse"],
    )
    dense = _dense_from_seed(cfg["seed"], q_size, kv_size, cfg["bias"])
    q_pp, kv_pp = q_size // T, kv_size * m // T
    assert (layer.q_output_size_per_partition, layer.kv_output_size_per_partition) == (q_pp, kv_pp)
    q_rows = list(range(r * q_pp, (r + 1) * q_pp))
    kv_rows = _kv_rows(r, kv_pp, kv_size)

    # Layout of the parameters.
    if cfg["fuse"]:
        wq, wk, wv = layer.weight_qkv.split([q_pp, kv_pp, kv_pp])
        names = ["weight_qkv"] + (["bias_qkv"] if cfg["bias"] else [])
    else:
        wq, wk, wv = layer.weight_q, layer.weight_k, layer.weight_v
        names = ["weight_q", "weight_k", "weight_v"] + (["bias_q", "bias_k", "bias_v"] if cfg["bias"] else [])
    assert [n for n, _ in layer.named_parameters()] == names, cfg
    for p in layer.parameters():
        assert (p.tensor_model_parallel, p.partition_dim, p.partition_stride, p.num_partitions) == (
            True,
            0,
            1,
            T,
        )
    for local, lin, rows in zip((wq, wk, wv), dense, (q_rows, kv_rows, kv_rows)):
        assert torch.equal(local, lin.weight[rows]), cfg

    # Forward and backward.
    gen = torch.Generator().manual_seed(1000 + cfg["seed"])
    x_full = torch.randn(*LEAD, IN, generator=gen)
    gq = torch.randn(T, *LEAD, q_pp, generator=gen)
    gk = torch.randn(T, *LEAD, kv_pp, generator=gen)
    gv = torch.randn(T, *LEAD, kv_pp, generator=gen)
    x = (x_full.chunk(T, 0)[r] if cfg["sp"] else x_full).clone().requires_grad_(True)
    q, k, v = layer(x)
    ((q * gq[r]).sum() + (k * gk[r]).sum() + (v * gv[r]).sum()).backward()

    x_dense = x_full.clone().requires_grad_(True)
    qd, kd, vd = (lin(x_dense) for lin in dense)
    gk_dense, gv_dense = torch.zeros_like(kd), torch.zeros_like(vd)
    for rank in range(T):
        for j, row in enumerate(_kv_rows(rank, kv_pp, kv_size)):
            gk_dense[..., row] += gk[rank][..., j]
            gv_dense[..., row] += gv[rank][..., j]
    gq_dense = torch.cat(list(gq), dim=-1)
    ((qd * gq_dense).sum() + (kd * gk_dense).sum() + (vd * gv_dense).sum()).backward()

    assert q.shape == (*LEAD, q_pp) and k.shape == v.shape == (*LEAD, kv_pp), cfg
    _close(q, qd[..., q_rows], "q output", cfg)
    _close(k, kd[..., kv_rows], "k output", cfg)
    _close(v, vd[..., kv_rows], "v output", cfg)
    expected_dx = x_dense.grad.chunk(T, 0)[r] if cfg["sp"] else x_dense.grad
    _close(x.grad, expected_dx, "input grad", cfg)

    grads_w = (
        layer.weight_qkv.grad.split([q_pp, kv_pp, kv_pp])
        if cfg["fuse"]
        else (layer.weight_q.grad, layer.weight_k.grad, layer.weight_v.grad)
    )
    gathered_q = [torch.empty_like(grads_w[0]) for _ in range(T)]
    dist.all_gather(gathered_q, grads_w[0].contiguous(), group=ps.get_tensor_model_parallel_group())
    _close(torch.cat(gathered_q), dense[0].weight.grad, "gathered Q weight grad", cfg)
    _close(grads_w[1], dense[1].weight.grad[kv_rows], "K weight grad", cfg)
    _close(grads_w[2], dense[2].weight.grad[kv_rows], "V weight grad", cfg)
    if cfg["bias"]:
        grads_b = (
            layer.bias_qkv.grad.split([q_pp, kv_pp, kv_pp])
            if cfg["fuse"]
            else (layer.bias_q.grad, layer.bias_k.grad, layer.bias_v.grad)
        )
        for grad, lin, rows, what in zip(grads_b, dense, (q_rows, kv_rows, kv_rows), "QKV"):
            _close(grad, lin.bias.grad[rows], f"{what} bias grad", cfg)
    ps.destroy_kv_group()


def _check_gathered(cfg: dict) -> None:
    """gather_output=True: full outputs (K/V heads replicated m times) and one replicated loss."""
    from neuronx_distributed.modules.qkv_linear import GQAQKVColumnParallelLinear
    from neuronx_distributed.parallel_layers import parallel_state as ps

    T, r = ps.get_tensor_model_parallel_size(), ps.get_tensor_model_parallel_rank()
    heads, kv_heads, d, m = cfg["heads"], cfg["kv_heads"], cfg["d"], cfg["m"]
    q_size, kv_size = heads * d, kv_heads * d
    torch.manual_seed(cfg["seed"])
    layer = GQAQKVColumnParallelLinear(
        IN,
        [q_size, kv_size],
        bias=cfg["bias"],
        gather_output=True,
        kv_size_multiplier=m,
        fuse_qkv=cfg["fuse"],
    )
    dense = _dense_from_seed(cfg["seed"], q_size, kv_size, cfg["bias"])
    q_pp, kv_pp = q_size // T, kv_size * m // T
    tile = [i % kv_size for i in range(m * kv_size)]
    if cfg["bias"]:
        bias = layer.bias_qkv if cfg["fuse"] else layer.bias_q
        assert not hasattr(bias, "tensor_model_parallel"), "a full bias is replicated, not sharded"

    gen = torch.Generator().manual_seed(2000 + cfg["seed"])
    x_full = torch.randn(*LEAD, IN, generator=gen)
    gq = torch.randn(*LEAD, q_size, generator=gen)
    gk = torch.randn(*LEAD, m * kv_size, generator=gen)
    gv = torch.randn(*LEAD, m * kv_size, generator=gen)
    x = x_full.clone().requires_grad_(True)
    q, k, v = layer(x)
    ((q * gq).sum() + (k * gk).sum() + (v * gv).sum()).backward()

    x_dense = x_full.clone().requires_grad_(True)
    qd, kd, vd = (lin(x_dense) for lin in dense)
    gk_dense = torch.zeros_like(kd).index_add_(-1, torch.tensor(tile), gk)
    gv_dense = torch.zeros_like(vd).index_add_(-1, torch.tensor(tile), gv)
    ((qd * gq).sum() + (kd * gk_dense).sum() + (vd * gv_dense).sum()).backward()

    _close(q, qd, "q output", cfg)
    _close(k, kd[..., tile], "k output", cfg)
    _close(v, vd[..., tile], "v output", cfg)
    _close(x.grad, x_dense.grad, "input grad", cfg)
    kv_rows = _kv_rows(r, kv_pp, kv_size)
    if cfg["fuse"]:
        grad_q, grad_k, grad_v = layer.weight_qkv.grad.split([q_pp, kv_pp, kv_pp])
    else:
        grad_q, grad_k, grad_v = layer.weight_q.grad, layer.weight_k.grad, layer.weight_v.grad
    _close(grad_q, dense[0].weight.grad[r * q_pp : (r + 1) * q_pp], "Q weight grad", cfg)
    _close(grad_k, dense[1].weight.grad[kv_rows], "K weight grad", cfg)
    _close(grad_v, dense[2].weight.grad[kv_rows], "V weight grad", cfg)
    if cfg["bias"]:
        if cfg["fuse"]:
            bq, bk, bv = layer.bias_qkv.grad.split([q_size, m * kv_size, m * kv_size])
        else:
            bq, bk, bv = layer.bias_q.grad, layer.bias_k.grad, layer.bias_v.grad
        _close(bq, dense[0].bias.grad, "Q bias grad", cfg)
        _close(bk, dense[1].bias.grad[tile], "K bias grad (replicas share the summed gradient)", cfg)
        _close(bv, dense[2].bias.grad[tile], "V bias grad", cfg)
    ps.destroy_kv_group()


def _run_configs(shapes: list[tuple[int, int, int, int]]) -> int:
    """Every flag combination for each (heads, kv_heads, head_dim, multiplier); returns the count checked."""
    count = 0
    for heads, kv_heads, d, m in shapes:
        for fuse in (True, False):
            for bias in (False, True):
                base = {"heads": heads, "kv_heads": kv_heads, "d": d, "m": m, "fuse": fuse, "bias": bias}
                for sp in (False, True):
                    _check_sharded({**base, "sp": sp, "seed": 7 + count})
                    count += 1
                _check_gathered({**base, "seed": 7 + count})
                count += 1
    return count


@pytest.mark.parametrize(
    ("tp", "shapes"),
    [
        (1, [(4, 2, 2, 1)]),
        # kv heads < TP (m = 2) and kv heads = TP (m = 1)
        (2, [(4, 1, 2, 2), (4, 2, 2, 1)]),
        # m = 4, 2, 1; and a head split over two ranks (kv_pp = 1 row of a 2-row head)
        (4, [(8, 1, 2, 4), (8, 2, 2, 2), (8, 4, 2, 1), (4, 2, 2, 1)]),
    ],
)
def test_outputs_and_gradients_match_dense_projections(tp, shapes):
    counts = run_tensor_parallel(_run_configs, tp, shapes)
    assert counts == [len(shapes) * 12] * tp


def _fused_row_table() -> list[list[int]]:
    from neuronx_distributed.modules.qkv_linear import GQAQKVColumnParallelLinear

    def row_index(weight: torch.Tensor) -> None:
        weight.copy_(torch.arange(weight.shape[0], dtype=weight.dtype)[:, None].expand_as(weight))

    layer = GQAQKVColumnParallelLinear(
        3,
        [16, 4],
        bias=False,
        gather_output=False,
        kv_size_multiplier=2,
        fuse_qkv=True,
        init_method=row_index,
    )
    return layer.weight_qkv[:, 0].long().tolist()


def test_fused_rows_follow_the_tile_layout_table():
    # NxD semantics §10.2 [verified on TRN1]: T=4, n_q=8, n_kv=2, d=2, m=2.
    rows = run_tensor_parallel(_fused_row_table, 4)
    assert rows == [
        [0, 1, 2, 3, 0, 1, 0, 1],
        [4, 5, 6, 7, 2, 3, 2, 3],
        [8, 9, 10, 11, 0, 1, 0, 1],
        [12, 13, 14, 15, 2, 3, 2, 3],
    ]


def _replicas_stay_equal_after_a_step() -> bool:
    import torch.distributed as dist
    from neuronx_distributed.modules.qkv_linear import GQAQKVColumnParallelLinear
    from neuronx_distributed.parallel_layers import parallel_state as ps

    torch.manual_seed(0)
    layer = GQAQKVColumnParallelLinear(4, [8, 2], bias=False, gather_output=False, kv_size_multiplier=4)
    q, k, v = layer(torch.randn(2, 3, 4))
    c = float(dist.get_rank() + 1)  # each replica's consumer differs, so do its upstream gradients
    (q.square().sum() + (c * k).pow(3).sum() + (c * v).sum()).backward()
    with torch.no_grad():
        layer.weight_qkv -= 0.1 * layer.weight_qkv.grad
    kv = layer.weight_qkv[2:].contiguous()
    everyone = [torch.empty_like(kv) for _ in range(4)]
    dist.all_gather(everyone, kv, group=ps.get_kv_shared_group())
    return all(torch.equal(kv, other) for other in everyone)


def test_kv_replicas_stay_identical_after_an_optimizer_step():
    assert run_tensor_parallel(_replicas_stay_equal_after_a_step, 4) == [True] * 4


def test_constructor_rejects_layouts_nxd_rejects():
    from conformance.backends.reference.neuronx_distributed.modules.qkv_linear import (
        GQAQKVColumnParallelLinear,
    )
    from conformance.backends.reference.neuronx_distributed.parallel_layers import parallel_state as ps

    ps.set_tensor_model_parallel_size(4)
    try:
        with pytest.raises(AssertionError, match="must divide the tensor parallel size"):
            GQAQKVColumnParallelLinear(8, [16, 4], kv_size_multiplier=3)
        with pytest.raises(AssertionError, match="must be divisible by the tensor parallel size"):
            GQAQKVColumnParallelLinear(8, [16, 2], kv_size_multiplier=1)
        with pytest.raises(AssertionError, match="not divisible"):
            GQAQKVColumnParallelLinear(8, [6, 4], kv_size_multiplier=1)
    finally:
        ps.set_tensor_model_parallel_size(None)


def _construction_variants() -> dict:
    from neuronx_distributed.modules.qkv_linear import GQAQKVColumnParallelLinear

    torch.manual_seed(3)
    kept = GQAQKVColumnParallelLinear(
        4,
        [8, 2],
        bias=False,
        kv_size_multiplier=2,
        fuse_qkv=False,
        keep_master_weight=True,
        dtype=torch.bfloat16,
    )
    meta = GQAQKVColumnParallelLinear(
        4, [8, 2], bias=True, gather_output=False, kv_size_multiplier=2, device="meta"
    )
    return {
        "kept_params": [n for n, _ in kept.named_parameters()],
        "kept_dtype": kept.weight_k.dtype,
        "masters": [
            tuple(t.shape) for t in (kept.master_weight_q, kept.master_weight_k, kept.master_weight_v)
        ],
        "master_k_rows_on_rank": kept.weight_k.float().equal(kept.master_weight_k.float()),
        "meta": [
            (n, p.device.type, p.tensor_model_parallel, tuple(p.shape)) for n, p in meta.named_parameters()
        ],
    }


def test_master_copies_are_plain_tensors_and_meta_layers_are_not_initialised():
    results = run_tensor_parallel(_construction_variants, 2)
    for res in results:
        # NXD-04: master copies are attributes, never parameters.
        assert res["kept_params"] == ["weight_q", "weight_k", "weight_v"]
        assert res["kept_dtype"] == torch.bfloat16
        assert res["masters"] == [(8, 4), (2, 4), (2, 4)]
        # m = T = 2: each rank holds the whole (single-head) K master.
        assert res["master_k_rows_on_rank"]
        assert res["meta"] == [("weight_qkv", "meta", True, (8, 4)), ("bias_qkv", "meta", True, (8,))]


def _agreement_with_dense_under(trn2_groups: bool) -> dict[str, bool]:
    """The tile layout (what optimum-neuron's spec loads) with TRN1's strided or TRN2's adjacent kv-shared
    groups (T=4, 2 KV heads, m=2): which of output and gradients still equal the dense projections'."""
    from neuronx_distributed.modules.qkv_linear import GQAQKVColumnParallelLinear
    from neuronx_distributed.parallel_layers import parallel_state as ps

    T, r = ps.get_tensor_model_parallel_size(), ps.get_tensor_model_parallel_rank()
    heads, kv_heads, d, m = 8, 2, 2, 2
    q_size, kv_size = heads * d, kv_heads * d
    ps.initialize_kv_group(m, sequential_ranks_in_group=trn2_groups)  # the layer keeps a kv group of its size
    torch.manual_seed(5)
    layer = GQAQKVColumnParallelLinear(
        IN, [q_size, kv_size], bias=False, gather_output=False, kv_size_multiplier=m, fuse_qkv=False
    )
    dense = _dense_from_seed(5, q_size, kv_size, False)
    q_pp, kv_pp = q_size // T, kv_size * m // T
    kv_rows = _kv_rows(r, kv_pp, kv_size)
    gen = torch.Generator().manual_seed(77)
    x_full = torch.randn(*LEAD, IN, generator=gen)
    gq, gk, gv = (torch.randn(T, *LEAD, n, generator=gen) for n in (q_pp, kv_pp, kv_pp))
    x = x_full.clone().requires_grad_(True)
    q, k, v = layer(x)
    ((q * gq[r]).sum() + (k * gk[r]).sum() + (v * gv[r]).sum()).backward()
    x_dense = x_full.clone().requires_grad_(True)
    qd, kd, vd = (lin(x_dense) for lin in dense)
    gk_dense, gv_dense = torch.zeros_like(kd), torch.zeros_like(vd)
    for rank in range(T):
        for j, row in enumerate(_kv_rows(rank, kv_pp, kv_size)):
            gk_dense[..., row] += gk[rank][..., j]
            gv_dense[..., row] += gv[rank][..., j]
    ((qd * torch.cat(list(gq), dim=-1)).sum() + (kd * gk_dense).sum() + (vd * gv_dense).sum()).backward()
    q_rows = list(range(r * q_pp, (r + 1) * q_pp))
    agree = {
        "outputs": torch.allclose(k, kd[..., kv_rows], atol=1e-6)
        and torch.allclose(q, qd[..., q_rows], atol=1e-6),
        "Q weight grad": torch.allclose(layer.weight_q.grad, dense[0].weight.grad[q_rows], atol=1e-6),
        "K weight grad": torch.allclose(layer.weight_k.grad, dense[1].weight.grad[kv_rows], atol=1e-6),
        "V weight grad": torch.allclose(layer.weight_v.grad, dense[2].weight.grad[kv_rows], atol=1e-6),
        "input grad": torch.allclose(x.grad, x_dense.grad, atol=1e-6),
    }
    ps.destroy_kv_group()
    return agree


def test_trn2_kv_groups_with_the_loaded_tile_layout_give_wrong_kv_and_input_gradients():
    """Why NXD-11 does not carry over to TRN2 (deviations.py): NxD pairs adjacent ranks there, which hold
    different KV heads of the tile layout optimum-neuron loads; TRN1's strided groups give dense gradients."""
    trn1 = run_tensor_parallel(_agreement_with_dense_under, 4, False)
    trn2 = run_tensor_parallel(_agreement_with_dense_under, 4, True)
    assert all(all(rank.values()) for rank in trn1), trn1
    for rank in trn2:
        assert rank["outputs"] and rank["Q weight grad"], rank
        assert not rank["K weight grad"] and not rank["V weight grad"] and not rank["input grad"], rank
