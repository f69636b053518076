"""A first look at the reference backend: a TP=2 MLP block checked against dense torch layers on CPU.

`python -m conformance.demo [--tp N] [--sequence-parallel]` builds ColumnParallelLinear -> RowParallelLinear
on N ranks from the weights of two seeded `nn.Linear`s, runs forward and backward, and compares the
output, the input gradient and the gathered weight gradients with the dense computation. Exit status 1
if anything differs beyond fp32 round-off.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from .tensor_parallel_run import run_tensor_parallel

HIDDEN, INTERMEDIATE, SEQUENCE, BATCH = 32, 64, 8, 2
TOLERANCE = 1e-5


def _dense(x: torch.Tensor) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    up, down = torch.nn.Linear(HIDDEN, INTERMEDIATE), torch.nn.Linear(INTERMEDIATE, HIDDEN)
    x = x.clone().requires_grad_()
    out = down(torch.nn.functional.gelu(up(x)))
    out.square().sum().backward()
    return {
        "output": out.detach(),
        "input grad": x.grad,
        "up weight grad": up.weight.grad,
        "down weight grad": down.weight.grad,
    }


def _parallel(x: torch.Tensor, sequence_parallel: bool) -> dict[str, torch.Tensor]:
    from neuronx_distributed.parallel_layers import parallel_state
    from neuronx_distributed.parallel_layers.layers import ColumnParallelLinear, RowParallelLinear
    from neuronx_distributed.parallel_layers.mappings import (
        gather_from_tensor_model_parallel_region_with_dim as gather_along,
    )

    rank, size = (
        parallel_state.get_tensor_model_parallel_rank(),
        parallel_state.get_tensor_model_parallel_size(),
    )
    torch.manual_seed(0)  # the same draws as the dense layers: CPU init is "full master, then split"
    up = ColumnParallelLinear(
        HIDDEN,
        INTERMEDIATE,
        gather_output=False,
        sequence_parallel_enabled=sequence_parallel,
        sequence_dimension=0,
    )
    down = RowParallelLinear(
        INTERMEDIATE,
        HIDDEN,
        input_is_parallel=True,
        sequence_parallel_enabled=sequence_parallel,
        sequence_dimension=0,
    )
    local = x.chunk(size, 0)[rank] if sequence_parallel else x
    local = local.clone().requires_grad_()
    out = down(torch.nn.functional.gelu(up(local)))
    out.square().sum().backward()
    gather = (lambda t: gather_along(t, 0)) if sequence_parallel else (lambda t: t)
    # The column weight is sharded on its rows, the row weight on its columns.
    return {
        "output": gather(out.detach()),
        "input grad": gather(local.grad),
        "up weight grad": gather_along(up.weight.grad, 0),
        "down weight grad": gather_along(down.weight.grad, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m conformance.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--tp", type=int, default=2, help="tensor-parallel size (ranks), default 2")
    parser.add_argument("--sequence-parallel", action="store_true", help="shard activations on the sequence")
    args = parser.parse_args(argv)

    from rich.console import Console
    from rich.table import Table

    torch.manual_seed(1)
    x = torch.randn(SEQUENCE, BATCH, HIDDEN)
    started = time.perf_counter()
    reference = _dense(x)
    results = run_tensor_parallel(_parallel, args.tp, x, args.sequence_parallel)
    elapsed = time.perf_counter() - started

    table = Table(
        title=f"reference backend, TP={args.tp}, sequence parallel {'on' if args.sequence_parallel else 'off'}"
    )
    for column in ("tensor", "shape", "max |Δ| vs dense", "status"):
        table.add_column(column)
    failed = False
    for name, expected in reference.items():
        worst = max((r[name] - expected).abs().max().item() for r in results)
        ok = worst <= TOLERANCE
        failed |= not ok
        table.add_row(name, str(tuple(expected.shape)), f"{worst:.2e}", "[green]PASS" if ok else "[red]FAIL")
    console = Console()
    console.print(table)
    console.print(f"{args.tp} ranks, gloo on CPU, {elapsed:.1f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
