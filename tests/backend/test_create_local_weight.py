"""`create_local_weight`: which rows (or columns) of a full tensor each TP rank holds, for every stride.

Single process: the TP rank and size are set with NxD's override setters, so no process group is needed.
The oracle is index tables written out by hand (the strided layout of the semantics doc §3.2) and, over
random shapes, the closed form `local[j] = full[(r + (j // c) * T) * c + j % c]` with `c = per_rank / stride`.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from conformance.backends.reference.neuronx_distributed.parallel_layers import parallel_state
from conformance.backends.reference.neuronx_distributed.parallel_layers.layers import create_local_weight


@pytest.fixture
def tp_rank():
    """Set (rank, size) with the override setters; cleared again afterwards."""

    def set_rank(rank: int, size: int) -> None:
        parallel_state.set_tensor_model_parallel_size(size)
        parallel_state.set_tensor_model_parallel_rank(rank)

    yield set_rank
    parallel_state.set_tensor_model_parallel_size(None)
    parallel_state.set_tensor_model_parallel_rank(None)


# (full size, T, stride) -> the global indices held by each rank, in local order, written out by hand.
TABLES = {
    (8, 2, 1): [[0, 1, 2, 3], [4, 5, 6, 7]],
    (8, 4, 1): [[0, 1], [2, 3], [4, 5], [6, 7]],
    # Fused [gate; up] with I = 8: rank r gets its gate rows, then its up rows (verified on real NxD).
    (16, 2, 2): [[0, 1, 2, 3, 8, 9, 10, 11], [4, 5, 6, 7, 12, 13, 14, 15]],
    (16, 4, 2): [[0, 1, 8, 9], [2, 3, 10, 11], [4, 5, 12, 13], [6, 7, 14, 15]],
    # Fused [q; k; v] of 4 rows each: rank r gets [q_r; k_r; v_r].
    (12, 2, 3): [[0, 1, 4, 5, 8, 9], [2, 3, 6, 7, 10, 11]],
    (12, 4, 3): [[0, 4, 8], [1, 5, 9], [2, 6, 10], [3, 7, 11]],
    (24, 2, 3): [[0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19], [4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23]],
}


@pytest.mark.parametrize(("size", "world", "stride"), list(TABLES))
@pytest.mark.parametrize("partition_dim", [0, 1])
def test_each_rank_holds_the_hand_computed_indices(tp_rank, size, world, stride, partition_dim):
    full = torch.arange(size * 3).reshape(size, 3)
    if partition_dim == 1:
        full = full.t().contiguous()
    for rank, expected in enumerate(TABLES[(size, world, stride)]):
        tp_rank(rank, world)
        local = create_local_weight(full, partition_dim, size // world, stride)
        assert torch.equal(local, full.index_select(partition_dim, torch.tensor(expected)))


def test_out_weight_is_written_in_place_and_returned(tp_rank):
    tp_rank(1, 2)
    full = torch.arange(16.0).reshape(16, 1)
    out = torch.full((8, 1), -1.0)
    returned = create_local_weight(full, 0, 8, 2, out_weight=out)
    assert returned is out
    assert out.flatten().tolist() == [4, 5, 6, 7, 12, 13, 14, 15]


def test_float8_stride_one_still_writes_out_weight(tp_rank):
    # NxD returns a view and leaves `out_weight` untouched for float8 with stride 1 (deviation NXD-16).
    tp_rank(1, 2)
    full = torch.arange(8.0).reshape(8, 1).to(torch.float8_e4m3fn)
    out = torch.zeros(4, 1, dtype=torch.float8_e4m3fn)
    create_local_weight(full, 0, 4, 1, out_weight=out)
    assert out.float().flatten().tolist() == [4, 5, 6, 7]


@pytest.mark.parametrize(("size", "per_rank", "stride"), [(10, 4, 1), (16, 8, 3), (16, 6, 2)])
def test_a_size_that_is_not_world_times_per_rank_is_refused(tp_rank, size, per_rank, stride):
    tp_rank(0, 2)
    with pytest.raises(AssertionError):
        create_local_weight(torch.zeros(size, 2), 0, per_rank, stride)


@given(
    world=st.integers(1, 4),
    stride=st.integers(1, 4),
    chunk=st.integers(1, 3),
    other=st.integers(1, 3),
    partition_dim=st.sampled_from([0, 1]),
    data=st.data(),
)
def test_local_index_follows_the_closed_form(world, stride, chunk, other, partition_dim, data):
    rank = data.draw(st.integers(0, world - 1), label="rank")
    per_rank = stride * chunk
    size = world * per_rank
    shape = [size, other] if partition_dim == 0 else [other, size]
    full = torch.randn(shape)
    parallel_state.set_tensor_model_parallel_size(world)
    parallel_state.set_tensor_model_parallel_rank(rank)
    try:
        local = create_local_weight(full, partition_dim, per_rank, stride)
    finally:
        parallel_state.set_tensor_model_parallel_size(None)
        parallel_state.set_tensor_model_parallel_rank(None)
    assert local.shape[partition_dim] == per_rank
    for j in range(per_rank):
        g = (rank + (j // chunk) * world) * chunk + j % chunk
        assert torch.equal(local.select(partition_dim, j), full.select(partition_dim, g))
