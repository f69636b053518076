"""Time the rank launcher: starting a pool of N ranks, and a call on a pool that is already up.

    python benchmarks/rank_launcher.py [--worlds 1 2 4 8] [--calls 20] [--json FILE]

For each world size: the first `run_on_ranks` call (spawning N processes that import torch and join a gloo
group), then `--calls` calls of a one-all-reduce function on the same pool, and one call that runs a
TP=2 ColumnParallelLinear forward through `run_tensor_parallel` on a fresh pool (backend activation and
model-parallel set-up included). Pool reuse is what keeps the test suite's hundreds of rank calls cheap.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def all_reduce_ranks() -> int:
    import torch
    import torch.distributed as dist

    tensor = torch.tensor([dist.get_rank()])
    dist.all_reduce(tensor)
    return int(tensor.item())


def column_parallel_forward() -> tuple[int, ...]:
    import torch
    from neuronx_distributed.parallel_layers.layers import ColumnParallelLinear

    layer = ColumnParallelLinear(64, 128, gather_output=True)
    return tuple(layer(torch.ones(4, 64)).shape)


def measure(world: int, calls: int) -> dict[str, float]:
    """Seconds of the pool start (first call) and the median and max of later calls."""
    from conformance.launcher import run_on_ranks, shutdown_pools

    expected = [world * (world - 1) // 2] * world
    start = time.perf_counter()
    assert run_on_ranks(all_reduce_ranks, world) == expected
    first = time.perf_counter() - start
    warm = []
    for _ in range(calls):
        start = time.perf_counter()
        assert run_on_ranks(all_reduce_ranks, world) == expected
        warm.append(time.perf_counter() - start)
    shutdown_pools()
    return {"first_call_s": first, "warm_median_s": statistics.median(warm), "warm_max_s": max(warm)}


def measure_tensor_parallel() -> float:
    """Seconds of one TP=2 layer call on a fresh pool, backend and parallel state set up on the ranks."""
    from conformance.launcher import shutdown_pools
    from conformance.tensor_parallel_run import run_tensor_parallel

    shutdown_pools()
    start = time.perf_counter()
    assert run_tensor_parallel(column_parallel_forward, 2) == [(4, 128)] * 2
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worlds", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    # The parent's own imports are not part of a pool start.
    import conformance.launcher
    import conformance.tensor_parallel_run  # noqa: F401

    figures: dict[str, object] = {}
    print(f"{'ranks':>5}  {'pool start':>10}  {'warm call (median)':>18}  {'warm call (max)':>15}")
    for world in args.worlds:
        row = measure(world, args.calls)
        figures[f"world_{world}"] = row
        print(
            f"{world:>5}  {row['first_call_s']:>9.2f}s  {row['warm_median_s'] * 1000:>16.1f}ms"
            f"  {row['warm_max_s'] * 1000:>13.1f}ms"
        )
    figures["tp2_layer_fresh_pool_s"] = measure_tensor_parallel()
    print(f"TP=2 ColumnParallelLinear on a fresh pool: {figures['tp2_layer_fresh_pool_s']:.2f}s")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
