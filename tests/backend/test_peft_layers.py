"""The reference LoRA layers for NxD's parallel linears against PEFT's dense LoRA, at T=2.

Oracle: PEFT's own `lora.Linear` around an `nn.Linear` holding the full base weight, with the full lora_A
and lora_B (for the GQA layer, one such layer per q/k/v projection sharing lora_A). Each rank holds the
shards the training semantics prescribe (column base: lora_A replicated, lora_B rows sharded; row base:
lora_A columns sharded, lora_B replicated; GQA: lora_B's q rows contiguous per rank, K/V rows tiled m
times) and must give the dense outputs and, for the loss sum_r <y_r, G_r>, the dense gradients of the
input, of both LoRA halves and of the base weight: sharded halves equal the dense rows/columns, replicated
halves equal the dense gradient once the sequence-parallel all-reduce has run (deviation ON-14).
"""

from __future__ import annotations

import pytest
import torch

from conformance.tensor_parallel_run import run_tensor_parallel

IN, OUT, RANK, ALPHA = 8, 6, 3, 6
LEAD = (4, 3)  # (B, S) without SP, (S, B) with SP: dim 0 divides by T
CASES = [
    {"base": "column", "sp": False},
    {"base": "column", "sp": True},
    {"base": "row", "sp": False},
    {"base": "row", "sp": True},
    {"base": "gqa", "sp": False, "fuse": False},
    {"base": "gqa", "sp": True, "fuse": True},
    {"base": "linear", "sp": False},
]


def _close(actual: torch.Tensor, expected: torch.Tensor, what: str, case: dict) -> None:
    """fp32 sums in another order (TP reductions, q/k/v summed into one lora_A gradient): a few ulps of the
    tensor's scale; a sharding error is O(1)."""
    atol = 1e-6 * max(1.0, float(expected.abs().max()))
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=atol, msg=lambda m: f"{what} {case}: {m}")


def _dense_lora(weight: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor):
    """PEFT's LoRA around a dense linear, with the given full tensors."""
    from peft.tuners.lora import Linear as LoraLinear

    base = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    layer = LoraLinear(base, "default", r=RANK, lora_alpha=ALPHA, init_lora_weights=False)
    with torch.no_grad():
        base.weight.copy_(weight)
        layer.lora_A["default"].weight.copy_(lora_a)
        layer.lora_B["default"].weight.copy_(lora_b)
    return layer


def _sp_allreduce(module: torch.nn.Module) -> None:
    from neuronx_distributed.parallel_layers.grads import allreduce_sequence_parallel_gradients

    class _Params:
        param_groups = [{"params": list(module.parameters())}]

    allreduce_sequence_parallel_gradients(_Params())


def _gather(tensor: torch.Tensor, dim: int) -> torch.Tensor:
    import torch.distributed as dist
    from neuronx_distributed.parallel_layers import parallel_state as ps

    parts = [torch.empty_like(tensor) for _ in range(ps.get_tensor_model_parallel_size())]
    dist.all_gather(parts, tensor.contiguous(), group=ps.get_tensor_model_parallel_group())
    return torch.cat(parts, dim=dim)


def _check_linear(case: dict) -> list[str]:
    """Column, row or plain base layer; returns the LoRA layer class names PEFT's dispatch chose."""
    from neuronx_distributed.parallel_layers import parallel_state as ps
    from neuronx_distributed.parallel_layers.layers import ColumnParallelLinear, RowParallelLinear
    from peft.tuners.lora import Linear as LoraLinear

    from conformance.backends.reference.training.peft import NEURON_LORA_MODULES, ParallelLinear

    T, r = ps.get_tensor_model_parallel_size(), ps.get_tensor_model_parallel_rank()
    gen = torch.Generator().manual_seed(7)
    weight, lora_a, lora_b = (
        torch.randn(OUT, IN, generator=gen),
        torch.randn(RANK, IN, generator=gen),
        torch.randn(OUT, RANK, generator=gen),
    )
    x_full, upstream = torch.randn(*LEAD, IN, generator=gen), torch.randn(*LEAD, OUT, generator=gen)
    sp, seq_dim = case["sp"], (0 if case["sp"] else None)
    if case["base"] == "column":
        base = ColumnParallelLinear(
            IN, OUT, bias=False, gather_output=False, sequence_parallel_enabled=sp, sequence_dimension=seq_dim
        )
        local_w, local_a, local_b = weight.chunk(T, 0)[r], lora_a, lora_b.chunk(T, 0)[r]
    elif case["base"] == "row":
        base = RowParallelLinear(
            IN,
            OUT,
            bias=False,
            input_is_parallel=True,
            sequence_parallel_enabled=sp,
            sequence_dimension=seq_dim,
        )
        local_w, local_a, local_b = weight.chunk(T, 1)[r], lora_a.chunk(T, 1)[r], lora_b
    else:
        base = torch.nn.Linear(IN, OUT, bias=False)
        local_w, local_a, local_b = weight, lora_a, lora_b
    with torch.no_grad():
        base.weight.copy_(local_w)
    lora_cls = NEURON_LORA_MODULES.get(type(base), LoraLinear)
    layer = lora_cls(base, "default", r=RANK, lora_alpha=ALPHA, init_lora_weights=False)
    with torch.no_grad():
        layer.lora_A["default"].weight.copy_(local_a)
        layer.lora_B["default"].weight.copy_(local_b)

    x = x_full
    if sp and case["base"] == "column":
        x = x_full.chunk(T, 0)[r]
    if case["base"] == "row":
        x = x_full.chunk(T, -1)[r]
    x = x.clone().requires_grad_(True)
    y = layer(x)
    expected_upstream = upstream
    if case["base"] == "column":
        expected_upstream = upstream.chunk(T, -1)[r]
    elif sp:
        expected_upstream = upstream.chunk(T, 0)[r]
    (y * expected_upstream).sum().backward()
    if sp:
        _sp_allreduce(layer)

    dense = _dense_lora(weight, lora_a, lora_b)
    xd = x_full.clone().requires_grad_(True)
    yd = dense(xd)
    (yd * upstream).sum().backward()
    dense_a, dense_b = dense.lora_A["default"].weight.grad, dense.lora_B["default"].weight.grad
    grad_a, grad_b = layer.lora_A["default"].weight.grad, layer.lora_B["default"].weight.grad
    if case["base"] == "column":
        _close(y, yd.chunk(T, -1)[r], "output", case)
        _close(x.grad, xd.grad.chunk(T, 0)[r] if sp else xd.grad, "input grad", case)
        _close(grad_a, dense_a, "lora_A grad (replicated)", case)
        _close(grad_b, dense_b.chunk(T, 0)[r], "lora_B grad (row shard)", case)
        _close(base.weight.grad, dense.base_layer.weight.grad.chunk(T, 0)[r], "base grad", case)
    elif case["base"] == "row":
        _close(y, yd.chunk(T, 0)[r] if sp else yd, "output", case)
        _close(x.grad, xd.grad.chunk(T, -1)[r], "input grad", case)
        _close(grad_a, dense_a.chunk(T, 1)[r], "lora_A grad (column shard)", case)
        _close(grad_b, dense_b, "lora_B grad (replicated)", case)
        _close(base.weight.grad, dense.base_layer.weight.grad.chunk(T, 1)[r], "base grad", case)
    else:
        _close(y, yd, "output", case)
        _close(grad_a, dense_a, "lora_A grad", case)
        _close(grad_b, dense_b, "lora_B grad", case)
    assert isinstance(layer, ParallelLinear) == (case["base"] != "linear"), case
    return [
        type(layer).__name__,
        type(layer.lora_A["default"]).__name__,
        type(layer.lora_B["default"]).__name__,
    ]


def _check_gqa(case: dict) -> list[str]:
    """GQA base (4 query heads, 1 KV head, head size 2, m=2 at T=2): q, k, v against three dense LoRA linears."""
    from neuronx_distributed.modules.qkv_linear import GQAQKVColumnParallelLinear
    from neuronx_distributed.parallel_layers import parallel_state as ps

    from conformance.backends.reference.training.peft import NEURON_LORA_MODULES

    T, r = ps.get_tensor_model_parallel_size(), ps.get_tensor_model_parallel_rank()
    heads, kv_heads, d, m = 4, 1, 2, 2
    q_size, kv_size = heads * d, kv_heads * d
    q_pp, kv_pp = q_size // T, kv_size * m // T
    q_rows = list(range(r * q_pp, (r + 1) * q_pp))
    kv_rows = [(r * kv_pp + j) % kv_size for j in range(kv_pp)]
    gen = torch.Generator().manual_seed(11)
    weights = [torch.randn(n, IN, generator=gen) for n in (q_size, kv_size, kv_size)]
    lora_a = torch.randn(RANK, IN, generator=gen)
    lora_bs = [torch.randn(n, RANK, generator=gen) for n in (q_size, kv_size, kv_size)]
    x_full = torch.randn(*LEAD, IN, generator=gen)
    upstream = [torch.randn(T, *LEAD, n, generator=gen) for n in (q_pp, kv_pp, kv_pp)]

    ps.destroy_kv_group()
    base = GQAQKVColumnParallelLinear(
        IN,
        [q_size, kv_size],
        bias=False,
        gather_output=False,
        sequence_parallel_enabled=case["sp"],
        kv_size_multiplier=m,
        fuse_qkv=case["fuse"],
    )
    layer = NEURON_LORA_MODULES[type(base)](
        base, "default", r=RANK, lora_alpha=ALPHA, init_lora_weights=False
    )
    lora_b = layer.lora_B["default"]
    rows = (q_rows, kv_rows, kv_rows)
    with torch.no_grad():
        local_w = [w[idx] for w, idx in zip(weights, rows)]
        local_b = [b[idx] for b, idx in zip(lora_bs, rows)]
        if case["fuse"]:
            base.weight_qkv.copy_(torch.cat(local_w))
            lora_b.weight_qkv.copy_(torch.cat(local_b))
        else:
            for name, w, b in zip(("weight_q", "weight_k", "weight_v"), local_w, local_b):
                getattr(base, name).copy_(w)
                getattr(lora_b, name).copy_(b)
        layer.lora_A["default"].weight.copy_(lora_a)
    x = (x_full.chunk(T, 0)[r] if case["sp"] else x_full).clone().requires_grad_(True)
    outputs = layer(x)
    sum((out * up[r]).sum() for out, up in zip(outputs, upstream)).backward()
    if case["sp"]:
        _sp_allreduce(layer)

    # Dense: each K/V row gets the upstream gradients of all its replicas, summed.
    dense = [_dense_lora(w, lora_a, b) for w, b in zip(weights, lora_bs)]
    xd = x_full.clone().requires_grad_(True)
    dense_out = [lin(xd) for lin in dense]
    dense_up = [torch.cat(list(upstream[0]), dim=-1)]
    for index in (1, 2):
        summed = torch.zeros_like(dense_out[index])
        for rank in range(T):
            for j, row in enumerate((rank * kv_pp + jj) % kv_size for jj in range(kv_pp)):
                summed[..., row] += upstream[index][rank][..., j]
        dense_up.append(summed)
    sum((out * up).sum() for out, up in zip(dense_out, dense_up)).backward()

    for what, out, expected, idx in zip("qkv", outputs, dense_out, rows):
        _close(out, expected[..., idx], f"{what} output", case)
    _close(x.grad, xd.grad.chunk(T, 0)[r] if case["sp"] else xd.grad, "input grad", case)
    dense_grad_a = sum(lin.lora_A["default"].weight.grad for lin in dense)
    _close(layer.lora_A["default"].weight.grad, dense_grad_a, "shared lora_A grad", case)
    grads_b = (
        lora_b.weight_qkv.grad.split([q_pp, kv_pp, kv_pp])
        if case["fuse"]
        else [getattr(lora_b, n).grad for n in ("weight_q", "weight_k", "weight_v")]
    )
    for what, grad, lin, idx in zip("qkv", grads_b, dense, rows):
        _close(grad, lin.lora_B["default"].weight.grad[idx], f"{what} lora_B grad", case)
    names = sorted(n for n, _ in layer.named_parameters() if "lora_B" in n)
    ps.destroy_kv_group()
    return [type(layer).__name__, *names]


def _run_cases(cases: list[dict]) -> list[list[str]]:
    return [_check_gqa(case) if case["base"] == "gqa" else _check_linear(case) for case in cases]


@pytest.fixture(scope="module")
def layer_classes() -> list[list[str]]:
    return run_tensor_parallel(_run_cases, 2, CASES, timeout=300)[0]


def test_parallel_lora_layers_match_dense_lora_outputs_and_grads(layer_classes: list[list[str]]) -> None:
    assert len(layer_classes) == len(CASES)


def test_lora_halves_are_sharded_as_optimum_neuron_shards_them(layer_classes: list[list[str]]) -> None:
    by_case = dict(zip((f"{c['base']}-sp{c['sp']}" for c in CASES), layer_classes))
    assert by_case["column-spFalse"] == ["ParallelLinear", "Linear", "ColumnParallelLinear"]
    assert by_case["row-spFalse"] == ["ParallelLinear", "RowParallelLinear", "Linear"]
    assert by_case["linear-spFalse"] == ["Linear", "Linear", "Linear"]  # PEFT's own lora.Linear
    assert by_case["gqa-spFalse"] == [
        "GQAQKVColumnParallelLinear",
        "lora_B.default.weight_k",
        "lora_B.default.weight_q",
        "lora_B.default.weight_v",
    ]
    assert by_case["gqa-spTrue"] == ["GQAQKVColumnParallelLinear", "lora_B.default.weight_qkv"]


def test_unsupported_lora_options_are_refused() -> None:
    run_tensor_parallel(_refusals, 1)


def _refusals() -> None:
    from neuronx_distributed.parallel_layers.layers import ColumnParallelLinear

    from conformance.backends.reference.training.peft import ParallelLinear

    base = ColumnParallelLinear(IN, OUT, bias=False, gather_output=False)
    for kwargs in ({"use_dora": True}, {"init_lora_weights": "pissa"}):
        with pytest.raises(NotImplementedError, match="not supported"):
            ParallelLinear(base, "default", r=RANK, **kwargs)
    layer = ParallelLinear(base, "default", r=RANK)
    with pytest.raises(NotImplementedError, match="Merging"):
        layer.merge()
