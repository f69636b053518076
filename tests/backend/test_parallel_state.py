"""The model-parallel mesh: NxD's LOGIC1 rank layout, group membership and the kv-shared groups."""

from __future__ import annotations

import pytest

from conformance.backends.reference.neuronx_distributed.parallel_layers.parallel_state import (
    arrange_kv_groups,
    build_expert_mesh,
    build_mesh,
)
from conformance.backends.reference.neuronx_distributed.utils.utils import hardware
from conformance.tensor_parallel_run import run_tensor_parallel


def test_mesh_matches_nxd_tables_for_eight_ranks():
    # Tables observed from the real NxD on 8 CPU ranks (semantics doc §2.1.4).
    tp, dp, _, _ = build_mesh(8, 2, 1)
    assert tp == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert dp == [[0, 2, 4, 6], [1, 3, 5, 7]]
    tp, dp, pp, _ = build_mesh(8, 2, 2)
    assert tp == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert dp == [[0, 2], [1, 3], [4, 6], [5, 7]]
    assert pp == [[0, 4], [1, 5], [2, 6], [3, 7]]
    _, dp, pp, _ = build_mesh(8, 2, 4)
    assert pp == [[0, 2, 4, 6], [1, 3, 5, 7]]
    assert dp == [[r] for r in range(8)]


def test_mesh_with_context_parallel_follows_the_rank_formula():
    # W=16, T=2, P=2, C=2 -> D=2; rank = ((p*D + d)*C + c)*T + t.
    tp, dp, pp, cp = build_mesh(16, 2, 2, 2)
    assert tp[0] == [0, 1] and len(tp) == 8
    assert cp[0] == [0, 2]  # (p=0, d=0, t=0) over c
    assert dp[0] == [0, 4]  # (p=0, c=0, t=0) over d
    assert pp[0] == [0, 8]  # (d=0, c=0, t=0) over p


def test_mesh_rejects_a_world_that_does_not_divide():
    with pytest.raises(RuntimeError, match="not divisible"):
        build_mesh(6, 4, 1)


def test_expert_mesh_matches_nxd_docstring_example():
    # initialize_model_parallel's docstring, "EXAMPLE 3 (WITH EP)": 128 ranks, TP=8, PP=4, EP=2.
    model, data = build_expert_mesh(128, 8, 4, 2)
    assert len(model) == 64 and all(len(g) == 2 for g in model)
    assert model[:2] == [[0, 8], [1, 9]] and model[-2:] == [[118, 126], [119, 127]]
    assert len(data) == 64 and all(len(g) == 2 for g in data)
    assert data[:2] == [[0, 16], [1, 17]] and data[-2:] == [[110, 126], [111, 127]]
    # EP carved out of DP: every expert group lies inside one PP stage and one TP position.
    _, dp, _, _ = build_mesh(128, 8, 4)
    for group in model + data:
        assert any(set(group) <= set(d) for d in dp)


def test_expert_mesh_rejects_a_world_without_integer_expert_dp():
    with pytest.raises(RuntimeError, match="expert parallel size"):
        build_expert_mesh(6, 1, 1, 4)


def test_kv_groups_are_strided_for_the_tile_layout_and_consecutive_on_request():
    # NxD's docstring example: TP group [0, 1, 2, 3], pairs of ranks share K/V.
    assert arrange_kv_groups(1, 4, 2, sequential_ranks_in_group=False) == [[0, 2], [1, 3]]
    assert arrange_kv_groups(1, 4, 2, sequential_ranks_in_group=True) == [[0, 1], [2, 3]]
    assert arrange_kv_groups(1, 4, 2, hardware_type=hardware.TRN2) == [[0, 1], [2, 3]]
    assert arrange_kv_groups(2, 4, 2) == [[0, 2], [1, 3], [4, 6], [5, 7]]
    groups = arrange_kv_groups(1, 32, 4)
    assert groups[0] == [0, 8, 16, 24] and groups[1] == [1, 9, 17, 25] and len(groups) == 8
    assert arrange_kv_groups() == [[0]]


def _describe_rank():
    import torch
    import torch.distributed as dist
    from neuronx_distributed.parallel_layers import parallel_state as ps

    ps.initialize_kv_group(2)
    tp_sum = torch.tensor([float(dist.get_rank())])
    dist.all_reduce(tp_sum, group=ps.get_tensor_model_parallel_group())
    kv_sum = torch.tensor([float(dist.get_rank())])
    dist.all_reduce(kv_sum, group=ps.get_kv_shared_group())
    return {
        "tp": (ps.get_tensor_model_parallel_rank(), ps.get_tensor_model_parallel_size()),
        "dp": (ps.get_data_parallel_rank(), ps.get_data_parallel_size()),
        "pp": (ps.get_pipeline_model_parallel_rank(), ps.get_pipeline_model_parallel_size()),
        "tp_src": ps.get_tensor_model_parallel_src_rank(),
        "dp_src": ps.get_data_parallel_src_rank(),
        "tp_sum": tp_sum.item(),
        "kv_sum": kv_sum.item(),
        "world": (ps.get_world_group() is dist.group.WORLD, ps.get_world_group(as_list=True)),
    }


def test_groups_and_getters_on_four_ranks():
    # W=4, T=2: TP groups [0,1],[2,3]; DP groups [0,2],[1,3]. kv groups of size 2 inside a TP group of 2 are
    # the whole TP group.
    results = run_tensor_parallel(_describe_rank, 2, world_size=4)
    assert [r["tp"] for r in results] == [(0, 2), (1, 2), (0, 2), (1, 2)]
    assert [r["dp"] for r in results] == [(0, 2), (0, 2), (1, 2), (1, 2)]
    assert [r["pp"] for r in results] == [(0, 1)] * 4
    assert [r["tp_src"] for r in results] == [0, 0, 2, 2]
    assert [r["dp_src"] for r in results] == [0, 1, 0, 1]
    assert [r["tp_sum"] for r in results] == [1.0, 1.0, 5.0, 5.0]
    assert [r["kv_sum"] for r in results] == [1.0, 1.0, 5.0, 5.0]
    assert [r["world"] for r in results] == [(True, [[0, 1, 2, 3]])] * 4
