"""Gradient norm and clipping over sharded parameters against torch.nn.utils.clip_grad_norm_ on the dense
parameters they shard; the sequence-parallel and data-parallel gradient reductions."""

from __future__ import annotations

import math

import pytest
import torch

from conformance.tensor_parallel_run import run_tensor_parallel

# name -> (dense shape, partition dim or None for replicated, pipeline stage when PP = 2)
DENSE = {
    "column.weight": ((8, 5), 0, 0),
    "column.bias": ((8,), 0, 0),
    "row.weight": ((5, 8), 1, 1),
    "row.bias": ((5,), None, 1),
    "norm.weight": ((5,), None, 0),
    "embed.weight": ((12, 5), 0, 1),
}


def _dense_grads(seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    # Distinct scales so the inf-norm winner is a specific, sharded entry.
    return {
        name: torch.randn(shape, generator=gen) * (1 + i)
        for i, (name, (shape, _, _)) in enumerate(DENSE.items())
    }


def _local_params(dense: dict[str, torch.Tensor]) -> tuple[list[torch.nn.Parameter], list[str]]:
    """This rank's parameters (its stage's, sharded over TP), gradients set from the dense ones."""
    from neuronx_distributed.parallel_layers import parallel_state as ps
    from neuronx_distributed.parallel_layers.utils import set_tensor_model_parallel_attributes

    T, r = ps.get_tensor_model_parallel_size(), ps.get_tensor_model_parallel_rank()
    P, stage = ps.get_pipeline_model_parallel_size(), ps.get_pipeline_model_parallel_rank()
    params, names = [], []
    for name, (_shape, dim, owner) in DENSE.items():
        if P > 1 and owner != stage:
            continue
        grad = dense[name] if dim is None else dense[name].chunk(T, dim)[r]
        param = torch.nn.Parameter(torch.zeros_like(grad))
        param.grad = grad.clone()
        if dim is not None:
            set_tensor_model_parallel_attributes(param, True, dim, 1, num_partitions=T)
        elif name == "norm.weight":
            set_tensor_model_parallel_attributes(param, False, -1, 1, num_partitions=1)
        params.append(param)
        names.append(name)
    # Extras the norm must skip: a parameter without gradient, and a `shared` twin of a counted one.
    params.append(torch.nn.Parameter(torch.ones(3)))
    twin = torch.nn.Parameter(torch.zeros(4))
    twin.grad = torch.full((4,), 100.0)
    twin.shared = True
    params.append(twin)
    return params, names


def _check_norms_and_clipping() -> int:
    from neuronx_distributed.parallel_layers import parallel_state as ps
    from neuronx_distributed.parallel_layers.grads import clip_grad_norm, get_grad_norm

    T, r = ps.get_tensor_model_parallel_size(), ps.get_tensor_model_parallel_rank()
    checked = 0
    for norm_type in (2.0, 1.0, math.inf):
        for force_spmd in (True, False):
            for clip_ratio in (0.3, 2.0):  # clipping, and a max_norm above the norm (no change)
                dense = _dense_grads(checked)
                dense_params = []
                for grad in dense.values():
                    p = torch.nn.Parameter(torch.zeros_like(grad))
                    p.grad = grad.clone()
                    dense_params.append(p)
                expected_norm = torch.nn.utils.get_total_norm([p.grad for p in dense_params], norm_type)
                max_norm = clip_ratio * expected_norm.item()
                torch.nn.utils.clip_grad_norm_(dense_params, max_norm, norm_type)
                clipped = dict(zip(dense, (p.grad for p in dense_params)))

                params, names = _local_params(dense)
                what = f"p={norm_type} force_spmd={force_spmd} clip_ratio={clip_ratio}"
                norm = get_grad_norm(params, norm_type, force_spmd=force_spmd)
                if math.isinf(norm_type):
                    assert isinstance(norm, float), what
                    norm = torch.tensor([norm])
                torch.testing.assert_close(norm, expected_norm.reshape(1), rtol=1e-6, atol=0, msg=what)
                total = clip_grad_norm(params, max_norm, norm_type, force_spmd=force_spmd)
                assert total.shape == (1,), what
                torch.testing.assert_close(total, expected_norm.reshape(1), rtol=1e-6, atol=0, msg=what)
                for param, name in zip(params, names):
                    _, dim, _ = DENSE[name]
                    expected = clipped[name] if dim is None else clipped[name].chunk(T, dim)[r]
                    torch.testing.assert_close(
                        param.grad, expected, rtol=1e-6, atol=1e-7, msg=f"{name} {what}"
                    )
                coeff = min(1.0, max_norm / (expected_norm.item() + 1e-6))
                assert params[-2].grad is None
                torch.testing.assert_close(
                    params[-1].grad, torch.full((4,), 100.0 * coeff), msg=f"shared {what}"
                )
                checked += 1
    return checked


@pytest.mark.parametrize(("tp", "pp"), [(2, 1), (4, 1), (2, 2)])
def test_norm_and_clipping_match_torch_on_the_dense_parameters(tp, pp):
    assert run_tensor_parallel(_check_norms_and_clipping, tp, pp_size=pp) == [12] * (tp * pp)


def _check_sequence_parallel_reduction() -> list[list[float]]:
    import torch.distributed as dist
    from neuronx_distributed.parallel_layers.grads import allreduce_sequence_parallel_gradients

    c = float(dist.get_rank() + 1)
    norm = torch.nn.Parameter(torch.zeros(3))
    norm.sequence_parallel_enabled = True
    norm.grad = torch.tensor([1.0, 2.0, 3.0]) * c
    main = torch.nn.Parameter(torch.zeros(2))  # gradient kept in main_grad (mixed-precision optimizers)
    main.sequence_parallel_enabled = True
    main.main_grad = torch.tensor([10.0, 20.0]) * c
    plain = torch.nn.Parameter(torch.zeros(2))
    plain.grad = torch.tensor([5.0, 6.0]) * c
    optimizer = torch.optim.SGD([{"params": [norm, main]}, {"params": [plain]}], lr=0.1)
    allreduce_sequence_parallel_gradients(optimizer)
    return [norm.grad.tolist(), main.main_grad.tolist(), plain.grad.tolist()]


def test_sequence_parallel_gradients_are_summed_over_tp_and_others_untouched():
    # T=2 in a world of 4: the sum runs over each TP group ([0,1] and [2,3]) only.
    results = run_tensor_parallel(_check_sequence_parallel_reduction, 2, world_size=4)
    tp_sums = [3.0, 3.0, 7.0, 7.0]  # (r+1) summed over the rank's TP group
    for rank, (norm, main, plain) in enumerate(results):
        s = tp_sums[rank]
        assert norm == [1.0 * s, 2.0 * s, 3.0 * s]
        assert main == [10.0 * s, 20.0 * s]
        assert plain == [5.0 * (rank + 1), 6.0 * (rank + 1)]


def _check_data_parallel_mean() -> list[list[float]]:
    import os

    import torch.distributed as dist
    from neuronx_distributed.parallel_layers.grads import bucket_allreduce_gradients

    c = float(dist.get_rank() + 1)
    grads = [
        torch.tensor([1.0, 2.0]) * c,
        torch.tensor([4.0], dtype=torch.float64) * c,
        torch.tensor([8.0]) * c,
    ]
    os.environ["ALLREDUCE_BUCKET_CAP_MB"] = "0"  # one bucket per gradient
    try:
        bucket_allreduce_gradients(grads[:2])
    finally:
        del os.environ["ALLREDUCE_BUCKET_CAP_MB"]
    bucket_allreduce_gradients(grads[2:])
    return [g.tolist() for g in grads]


def test_bucket_allreduce_takes_the_data_parallel_mean():
    # T=2, world 4: DP groups [0,2] and [1,3].
    results = run_tensor_parallel(_check_data_parallel_mean, 2, world_size=4)
    dp_means = [2.0, 3.0, 2.0, 3.0]  # mean of (r+1) over the rank's DP group
    for rank, grads in enumerate(results):
        m = dp_means[rank]
        assert grads == [[1.0 * m, 2.0 * m], [4.0 * m], [8.0 * m]]
