"""NxD's MoE modules on the reference backend against the dense MoE of `moe_dense.py`, at TP 1/2/4 and EP 1/2.

One launcher call per world size (2 and 4 ranks) runs every case in turn, re-initialising the mesh with the
case's TP and EP sizes. In each case every data-parallel rank d (of D = W / TP) routes its own batch x_d,
as optimum-neuron shards data, and computes `L_d = <MoE(x_d), probe_d>`. The oracle is the dense MoE on
the same weights (transformers' per-expert layout, loaded into NxD's fused tensors by
`nxd_expert_shards`), with the loss `mean_d L_d`:

- the output, the router logits and the input gradient of each rank equal the dense ones for its batch
  (its sequence shard with SP);
- after the optimizer's reductions, as optimum-neuron 0.4.5's `NeuronAcceleratedOptimizer.step` runs them
  (the SP all-reduce, then `bucket_allreduce_gradients` on every gradient and, with expert parallelism,
  again on the non-expert ones over the EP group), each rank's parameter gradient equals its shard of the
  dense gradient, and `get_grad_norm` equals the dense gradient norm;
- the evaluation-mode output equals the dense output too (the SP-inference gathers run there).

The routing data is tie-free: every case asserts a margin between the k-th and (k+1)-th router logit.
Capacity cases assert that tokens are really dropped. Tolerances: fp32 sums in another order, 2e-5
relative to the largest expected magnitude.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from conformance.tensor_parallel_run import run_tensor_parallel

from .moe_dense import DenseWeights, Routing, dense_moe, make_dense, nxd_expert_shards, top_k_margin

E, H, INTER, K, B, S = 4, 8, 8, 2, 2, 4
SHARED_WIDTH = 8
MARGIN = 1e-3
TOLERANCE = 2e-5

MIXTRAL = Routing(top_k=K, normalize=True)
QWEN3_MOE = Routing(top_k=K, normalize=False)
DROPPING = Routing(top_k=K, normalize=True, capacity_factor=0.75)


@dataclass(frozen=True)
class Case:
    name: str
    tp: int
    ep: int
    sp: bool
    routing: Routing
    router_sp: bool = False
    shared: str | None = None  # None, "separate" or "fused" gate/up projections
    gated: bool = True  # a GLU (gate_up_proj) or a plain MLP (up_proj)
    extra_checks: tuple[str, ...] = ()


WORLD_2 = (
    Case("tp1-ep1-dp2", 1, 1, False, MIXTRAL, extra_checks=("sinkhorn",)),
    Case("tp2-plain-mlp", 2, 1, False, QWEN3_MOE, gated=False),
    Case("tp2-shared", 2, 1, False, QWEN3_MOE, shared="separate", extra_checks=("init", "wrong_layout")),
    Case("tp2-sp-capacity", 2, 1, True, DROPPING),
    Case("tp2-sp-router-sp-over-topk", 2, 1, True, Routing(top_k=K, over_top_k=True), router_sp=True),
    Case("tp1-ep2", 1, 2, False, MIXTRAL, extra_checks=("all_to_all",)),
    Case("tp1-ep2-capacity", 1, 2, False, DROPPING),
)
WORLD_4 = (
    Case("tp4-sp-shared-fused", 4, 1, True, MIXTRAL, shared="fused"),
    Case(
        "tp4-capacity-sigmoid",
        4,
        1,
        False,
        Routing(top_k=K, normalize=True, act_fn="sigmoid", capacity_factor=0.75),
    ),
    Case("tp2-ep2-sp", 2, 2, True, QWEN3_MOE, extra_checks=("init", "scatter_gather")),
    Case("tp2-ep2-capacity", 2, 2, False, DROPPING, shared="separate"),
    Case("tp2-ep2-sp-router-sp-capacity", 2, 2, True, DROPPING, router_sp=True),
    Case("tp1-ep2-edp2", 1, 2, False, MIXTRAL),
)


def _max_error(actual: torch.Tensor, expected: torch.Tensor) -> tuple[float, float]:
    """(max |actual - expected|, max |expected|); shapes must agree."""
    if actual.shape != expected.shape:
        raise AssertionError(f"shape {tuple(actual.shape)} != expected {tuple(expected.shape)}")
    return float((actual - expected).abs().max()), float(expected.abs().max())


def _build(case: Case):
    from neuronx_distributed.modules.moe import ExpertMLPs, MoE, RouterTopK
    from neuronx_distributed.modules.moe.shared_experts import SharedExperts

    routing = case.routing
    router = RouterTopK(
        E,
        K,
        H,
        sequence_parallel_enabled=case.router_sp,
        sequence_dimension=0 if case.router_sp else None,
        act_fn=routing.act_fn,
        apply_act_fn_over_topk=routing.over_top_k,
    )
    experts = ExpertMLPs(
        E,
        K,
        H,
        INTER,
        "silu",
        case.gated,
        routing.capacity_factor,
        sequence_parallel_enabled=case.router_sp,
        normalize_top_k_affinities=routing.normalize,
    )
    shared = None
    if case.shared is not None:
        shared = SharedExperts(H, SHARED_WIDTH, 1, "silu", fused_gate_up_projection=case.shared == "fused")
    return MoE(
        router,
        experts,
        shared,
        sequence_parallel_enabled=case.sp,
        sequence_dimension=0 if case.sp else 1,
        return_router_logits=True,
    )


def _grads_as_weights(w: DenseWeights) -> DenseWeights:
    return DenseWeights(**{name: None if value is None else value.grad for name, value in vars(w).items()})


def _attributes(model: torch.nn.Module) -> dict[str, tuple]:
    keys = ("tensor_model_parallel", "partition_dim", "partition_stride", "num_partitions")
    return {
        name: (
            tuple(p.shape),
            tuple(getattr(p, key, None) for key in keys),
            getattr(p, "expert_model_parallel", False),
            getattr(p, "sequence_parallel_enabled", None),
        )
        for name, p in model.named_parameters()
    }


def _check_all_to_all(results: dict) -> None:
    """enter/exit_expert_parallel_region: slot (e, c) of EP rank s lands at [e - j E/EP, s, c] on EP rank j."""
    from neuronx_distributed.parallel_layers import parallel_state as ps
    from neuronx_distributed.parallel_layers.mappings import (
        enter_expert_parallel_region,
        exit_expert_parallel_region,
    )

    me, ep = ps.get_expert_model_parallel_rank(), ps.get_expert_model_parallel_size()
    e_idx = torch.arange(E).view(E, 1, 1)
    c_idx = torch.arange(3).view(1, 3, 1)
    tagged = (100 * me + 10 * e_idx + c_idx).float().expand(E, 3, 2).clone().requires_grad_()
    entered = enter_expert_parallel_region(tagged, scatter_gather=False)
    local = torch.arange(me * E // ep, (me + 1) * E // ep).view(-1, 1, 1, 1)
    sender = torch.arange(ep).view(1, ep, 1, 1)
    expected = (100 * sender + 10 * local + c_idx.view(1, 1, 3, 1)).float().expand(E // ep, ep, 3, 2)
    results["all_to_all_enter"] = _max_error(entered.detach(), expected)
    back = exit_expert_parallel_region(entered * 2, scatter_gather=False)
    results["all_to_all_round_trip"] = _max_error(back.detach(), 2 * tagged.detach())
    back.sum().backward()
    results["all_to_all_grad"] = _max_error(tagged.grad, torch.full_like(tagged, 2.0))


def _check_seeded_init(results: dict) -> None:
    """A seeded ExpertMLPs holds this TP rank's slice of an fp32 master of its E/EP experts, each drawn by
    the init method (kaiming_uniform_ with a=0 on [H, 2I]: fan-in 2I), gate_up first, then down."""
    from neuronx_distributed.modules.moe import ExpertMLPs
    from neuronx_distributed.parallel_layers import parallel_state as ps

    tp, r = ps.get_tensor_model_parallel_size(), ps.get_tensor_model_parallel_rank()
    local = E // ps.get_expert_model_parallel_size()
    torch.manual_seed(1234)
    layer = ExpertMLPs(E, K, H, INTER, "silu", True, None)
    torch.manual_seed(1234)
    gate_up, down = torch.empty(local, H, 2 * INTER), torch.empty(local, INTER, H)
    for master in (gate_up, down):
        for e in range(local):
            torch.nn.init.kaiming_uniform_(master[e])
    width = INTER // tp
    expected_gate_up = torch.cat(
        [
            gate_up[:, :, r * width : (r + 1) * width],
            gate_up[:, :, INTER + r * width : INTER + (r + 1) * width],
        ],
        2,
    )
    results["init_gate_up"] = _max_error(layer.mlp_op.gate_up_proj.weight.detach(), expected_gate_up)
    results["init_down"] = _max_error(
        layer.mlp_op.down_proj.weight.detach(), down[:, r * width : (r + 1) * width]
    )


def _sinkhorn_choice(logits: torch.Tensor, iterations: int) -> torch.Tensor:
    """Sinkhorn-Knopp on exp(logits): rows scaled to sum 1/T, columns to 1/E, alternately; then argmax."""
    kernel = logits.double().exp()
    tokens, experts = kernel.shape
    row, col = torch.ones(tokens, dtype=torch.float64), torch.ones(experts, dtype=torch.float64)
    for _ in range(iterations):
        row = 1.0 / (tokens * (kernel @ col))
        col = 1.0 / (experts * (kernel.T @ row))
    return torch.argmax(row[:, None] * kernel * col[None, :], dim=1, keepdim=True)


def _check_sinkhorn(results: dict) -> None:
    """RouterSinkhorn: top-1 from the balanced scores in training, from the logits in evaluation; sigmoid
    affinities; `sinkhorn_tol` enforced (NXD-24)."""
    from neuronx_distributed.modules.moe import RouterSinkhorn

    torch.manual_seed(5)
    router = RouterSinkhorn(E, 1, H, sinkhorn_iterations=8)
    with torch.no_grad():
        router.linear_router.weight[0] += 1.5  # expert 0 is everyone's favourite: balancing must move tokens
    x = torch.randn(16, H, generator=torch.Generator().manual_seed(6))
    logits, affinities, index = router(x)
    expected_logits = x @ router.linear_router.weight.detach().T
    balanced = _sinkhorn_choice(expected_logits, 8)
    results["sinkhorn_index_matches"] = bool(torch.equal(index, balanced))
    results["sinkhorn_moves_tokens"] = int((balanced != expected_logits.argmax(1, keepdim=True)).sum())
    results["sinkhorn_logits"] = _max_error(logits.detach(), expected_logits)
    results["sinkhorn_affinities"] = _max_error(affinities.detach(), torch.sigmoid(expected_logits))
    router.eval()
    results["sinkhorn_eval_is_argmax"] = bool(
        torch.equal(router(x)[2], expected_logits.argmax(1, keepdim=True))
    )
    strict = RouterSinkhorn(E, 1, H, sinkhorn_iterations=1, sinkhorn_tol=1e-12)
    try:
        strict(x)
        results["sinkhorn_tol_raises"] = False
    except AssertionError:
        results["sinkhorn_tol_raises"] = True


def _check_scatter_gather(results: dict) -> None:
    """enter/exit_expert_parallel_region with scatter_gather (TP ranks drop their copies around the exchange)
    give what the plain exchange gives, gradients included."""
    from neuronx_distributed.parallel_layers import parallel_state as ps
    from neuronx_distributed.parallel_layers.mappings import (
        enter_expert_parallel_region,
        exit_expert_parallel_region,
    )

    me = ps.get_expert_model_parallel_rank()
    base = torch.randn(E, 4, H, generator=torch.Generator().manual_seed(50 + me))
    outputs, grads = [], []
    for scatter_gather in (False, True):
        x = base.clone().requires_grad_()
        entered = enter_expert_parallel_region(x, scatter_gather=scatter_gather)
        out = exit_expert_parallel_region(
            entered * torch.arange(1.0, 1.0 + entered.shape[1]).view(1, -1, 1, 1), scatter_gather
        )
        out.sum().backward()
        outputs.append(out.detach())
        grads.append(x.grad)
    results["scatter_gather_output"] = _max_error(outputs[1], outputs[0])
    results["scatter_gather_grad"] = _max_error(grads[1], grads[0])


def _check_wrong_layout_is_detected(
    case: Case, w: DenseWeights, x: torch.Tensor, expected: torch.Tensor, results: dict
) -> None:
    """A plain (stride 1) split of [gate | up] gives other outputs at TP > 1: the checks see a layout error."""
    from neuronx_distributed.parallel_layers import parallel_state as ps

    tp, r = ps.get_tensor_model_parallel_size(), ps.get_tensor_model_parallel_rank()
    model = _build(case)
    shards = nxd_expert_shards(w, r, tp, 0, 1)
    fused = torch.cat([w.gate.transpose(1, 2), w.up.transpose(1, 2)], dim=2)
    shards["expert_mlps.mlp_op.gate_up_proj.weight"] = fused.chunk(tp, dim=2)[r]
    _load(model, shards)
    with torch.no_grad():
        out = model(x)[0]
    results["wrong_layout_output"] = _max_error(out, expected)


def _load(model: torch.nn.Module, shards: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(shards[name])


def _run_case(case: Case) -> dict:
    from neuronx_distributed.parallel_layers import grads
    from neuronx_distributed.parallel_layers import parallel_state as ps

    ps.destroy_model_parallel()
    ps.initialize_model_parallel(tensor_model_parallel_size=case.tp, expert_model_parallel_size=case.ep)
    tp, tp_rank = ps.get_tensor_model_parallel_size(), ps.get_tensor_model_parallel_rank()
    d, dp = ps.get_data_parallel_rank(), ps.get_data_parallel_size()
    ep_rank, ep = ps.get_expert_model_parallel_rank(), ps.get_expert_model_parallel_size()
    results: dict = {
        "groups": (
            tp_rank,
            d,
            dp,
            ep_rank,
            ep,
            ps.get_expert_data_parallel_rank(),
            ps.get_expert_data_parallel_size(),
        )
    }

    def layout(t: torch.Tensor) -> torch.Tensor:
        """(B, S, H) -> the module's input layout: (S, B, H) with SP."""
        return t.transpose(0, 1).contiguous() if case.sp else t

    def shard(t: torch.Tensor) -> torch.Tensor:
        return t.chunk(tp, dim=0)[tp_rank] if case.sp else t

    w = make_dense(11, E, H, INTER, SHARED_WIDTH if case.shared else 0, gated=case.gated)
    batches = [
        layout(torch.randn(B, S, H, generator=torch.Generator().manual_seed(100 + i))) for i in range(dp)
    ]
    probes = [
        layout(torch.randn(B, S, H, generator=torch.Generator().manual_seed(200 + i))) for i in range(dp)
    ]

    dense_inputs = [batch.clone().requires_grad_() for batch in batches]
    dense_total, dense_out, dense_logits = 0.0, None, None
    margins, dropped = [], 0
    for i, (x_i, probe) in enumerate(zip(dense_inputs, probes)):
        out, logits, drops = dense_moe(x_i.reshape(-1, H), w, case.routing)
        out = out.view_as(x_i)
        dense_total = dense_total + (out * probe).sum()
        margins.append(top_k_margin(logits, K))
        dropped += drops
        if i == d:
            dense_out, dense_logits = out.detach(), logits.detach()
    (dense_total / dp).backward()
    results["margin"], results["dropped"] = min(margins), dropped

    model = _build(case)
    results["attributes"] = _attributes(model)
    results["state_dict_tags"] = {
        name: getattr(tensor, "expert_model_parallel", False) for name, tensor in model.state_dict().items()
    }
    _load(model, nxd_expert_shards(w, tp_rank, tp, ep_rank, ep))
    x = shard(batches[d]).clone().requires_grad_()
    out, logits = model(x)
    (out * shard(probes[d])).sum().backward()
    results["output"] = _max_error(out.detach(), shard(dense_out))
    results["router_logits"] = _max_error(logits.detach(), dense_logits)
    results["input_grad"] = _max_error(x.grad, shard(dp * dense_inputs[d].grad))

    params = list(model.parameters())
    optimizer = torch.optim.SGD(params, lr=0.0)
    if case.sp:
        grads.allreduce_sequence_parallel_gradients(optimizer)
    expert = [p.grad for p in params if getattr(p, "expert_model_parallel", False)]
    other = [p.grad for p in params if not getattr(p, "expert_model_parallel", False)]
    grads.bucket_allreduce_gradients(other + expert)
    if expert:
        grads.bucket_allreduce_gradients(other, reduce_over_ep_group=True)
    expected = nxd_expert_shards(_grads_as_weights(w), tp_rank, tp, ep_rank, ep)
    for name, param in model.named_parameters():
        results[f"grad {name}"] = _max_error(param.grad, expected[name])
    dense_norm = torch.linalg.vector_norm(torch.cat([g.grad.flatten() for g in w.named().values()]))
    results["grad_norm"] = _max_error(grads.get_grad_norm(params).reshape(()), dense_norm)

    model.eval()
    with torch.no_grad():
        eval_out, eval_logits = model(shard(batches[d]))
    results["eval_output"] = _max_error(eval_out, shard(dense_out))
    results["eval_router_logits_rows"] = eval_logits.shape[0]

    if "all_to_all" in case.extra_checks:
        _check_all_to_all(results)
    if "init" in case.extra_checks:
        _check_seeded_init(results)
    if "sinkhorn" in case.extra_checks:
        _check_sinkhorn(results)
    if "scatter_gather" in case.extra_checks:
        _check_scatter_gather(results)
    if "wrong_layout" in case.extra_checks:
        _check_wrong_layout_is_detected(case, w, shard(batches[d]), shard(dense_out), results)
    return results


def _run_cases(cases: tuple[Case, ...]) -> dict[str, dict]:
    return {case.name: _run_case(case) for case in cases}


@pytest.fixture(scope="module")
def world_2() -> list[dict[str, dict]]:
    return run_tensor_parallel(_run_cases, 1, WORLD_2, world_size=2)


@pytest.fixture(scope="module")
def world_4() -> list[dict[str, dict]]:
    return run_tensor_parallel(_run_cases, 1, WORLD_4, world_size=4)


def _ranks(request, case: Case) -> list[dict]:
    world = request.getfixturevalue("world_2" if case in WORLD_2 else "world_4")
    return [rank[case.name] for rank in world]


ALL_CASES = [pytest.param(case, id=case.name) for case in (*WORLD_2, *WORLD_4)]
COMPARED = ("output", "router_logits", "input_grad", "grad_norm", "eval_output")


@pytest.mark.parametrize("case", ALL_CASES)
def test_outputs_and_gradients_match_the_dense_moe(request, case: Case) -> None:
    for rank, results in enumerate(_ranks(request, case)):
        assert results["margin"] > MARGIN, f"{case.name}: near-tie in the routing data ({results['margin']})"
        if case.routing.capacity_factor is not None:
            assert results["dropped"] > 0, (
                f"{case.name}: the capacity factor drops nothing; the case tests nothing"
            )
        grad_keys = [key for key in results if key.startswith("grad ")]
        assert len(grad_keys) == len(results["attributes"])
        for key in (*COMPARED, *grad_keys):
            error, scale = results[key]
            assert error <= TOLERANCE * max(1.0, scale), (
                f"{case.name} rank {rank}: {key} off by {error} (scale {scale})"
            )


@pytest.mark.parametrize("case", ALL_CASES)
def test_parameters_carry_nxd_layout_and_attributes(request, case: Case) -> None:
    local_experts, width = E // case.ep, INTER // case.tp
    expert_parallel = case.ep > 1
    expected = {
        "router.linear_router.weight": ((E, H), (None, None, None, None), False, case.router_sp),
        "expert_mlps.mlp_op.down_proj.weight": (
            (local_experts, width, H),
            (True, 1, 1, case.tp),
            expert_parallel,
            None,
        ),
    }
    if case.gated:
        expected["expert_mlps.mlp_op.gate_up_proj.weight"] = (
            (local_experts, H, 2 * width),
            (True, 2, 2, case.tp),
            expert_parallel,
            None,
        )
    else:
        expected["expert_mlps.mlp_op.up_proj.weight"] = (
            (local_experts, H, width),
            (True, 2, 1, case.tp),
            expert_parallel,
            None,
        )
    shared = SHARED_WIDTH // case.tp
    if case.shared == "fused":
        expected["shared_experts.gate_up_proj.weight"] = ((2 * shared, H), (True, 0, 2, case.tp), False, None)
    elif case.shared == "separate":
        expected["shared_experts.gate_proj.weight"] = ((shared, H), (True, 0, 1, case.tp), False, None)
        expected["shared_experts.up_proj.weight"] = ((shared, H), (True, 0, 1, case.tp), False, None)
    if case.shared:
        expected["shared_experts.down_proj.weight"] = ((H, shared), (True, 1, 1, case.tp), False, None)
    for results in _ranks(request, case):
        assert results["attributes"] == expected
        # Savers tell expert shards apart by the tag on the state-dict tensors.
        assert results["state_dict_tags"] == {name: row[2] for name, row in expected.items()}


@pytest.mark.parametrize("case", ALL_CASES)
def test_groups_follow_nxd_expert_layout(request, case: Case) -> None:
    # rank = (x * EP + e) * TP + t with P = 1; the non-expert DP index is d = x * EP + e.
    for rank, results in enumerate(_ranks(request, case)):
        world = 2 if case in WORLD_2 else 4
        t, d = rank % case.tp, rank // case.tp
        x, e = divmod(d, case.ep)
        dp, edp = world // case.tp, world // (case.tp * case.ep)
        assert results["groups"] == (t, d, dp, e, case.ep, x, edp)


def test_evaluation_with_a_sequence_parallel_router_keeps_local_logits(world_2) -> None:
    # NxD gathers the router logits only in training; in evaluation ExpertMLPs gathers the affinities.
    results = [rank["tp2-sp-router-sp-over-topk"] for rank in world_2]
    assert [r["eval_router_logits_rows"] for r in results] == [B * S // 2] * 2
    assert [rank["tp2-sp-capacity"]["eval_router_logits_rows"] for rank in world_2] == [B * S] * 2


def test_expert_parallel_all_to_all(world_2) -> None:
    for results in (rank["tp1-ep2"] for rank in world_2):
        for key in ("all_to_all_enter", "all_to_all_round_trip", "all_to_all_grad"):
            assert results[key][0] == 0.0, key


@pytest.mark.parametrize(("world", "case"), [("world_2", "tp2-shared"), ("world_4", "tp2-ep2-sp")])
def test_seeded_init_is_a_slice_of_the_per_expert_master(request, world: str, case: str) -> None:
    # With EP the master holds only the rank's E/EP experts, drawn from the same RNG state on every EP rank:
    # as in NxD, experts j and j + E/EP start equal in a model built from config.
    for results in (rank[case] for rank in request.getfixturevalue(world)):
        assert results["init_gate_up"][0] == 0.0 and results["init_down"][0] == 0.0


def test_sinkhorn_router_balances_top_1_choices(world_2) -> None:
    for results in (rank["tp1-ep1-dp2"] for rank in world_2):
        assert results["sinkhorn_index_matches"]
        assert results["sinkhorn_moves_tokens"] > 0, "the data does not exercise the balancing"
        assert results["sinkhorn_logits"][0] <= 1e-6 and results["sinkhorn_affinities"][0] <= 1e-6
        assert results["sinkhorn_eval_is_argmax"]
        assert results["sinkhorn_tol_raises"]


def test_expert_parallel_scatter_gather_variant(world_4) -> None:
    for results in (rank["tp2-ep2-sp"] for rank in world_4):
        assert results["scatter_gather_output"][0] == 0.0
        assert results["scatter_gather_grad"][0] == 0.0


def test_a_wrong_gate_up_layout_is_detected(world_2) -> None:
    for results in (rank["tp2-shared"] for rank in world_2):
        error, scale = results["wrong_layout_output"]
        assert error > 1e-2 * scale, "loading [gate | up] without the stride-2 layout went unnoticed"
