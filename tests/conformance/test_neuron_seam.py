"""The neuron backend's seam: its prerequisites are refused clearly here, and its torchrun launcher — the
part that differs from the reference launcher — really runs ranks (with gloo and the reference backend)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conformance.backends.neuron_launch import (
    TorchrunFailed,
    require_neuron_host,
    run_with_torchrun,
    torchrun_command,
)
from conformance.cli import main


def _all_reduce_rank_and_read_nxd() -> tuple[int, float, str]:
    import torch.distributed as dist
    from neuronx_distributed.parallel_layers import parallel_state

    value = torch.tensor([float(dist.get_rank() + 1)])
    dist.all_reduce(value)
    return dist.get_rank(), value.item(), parallel_state.__name__


def _raise_on_rank_1() -> None:
    import torch.distributed as dist

    if dist.get_rank() == 1:
        raise ValueError("rank one refuses")


def test_torchrun_launcher_runs_every_rank_with_the_backend_active() -> None:
    results = run_with_torchrun(
        _all_reduce_rank_and_read_nxd, 2, backend="reference", process_group="gloo", timeout=120
    )
    assert [rank for rank, _, _ in results] == [0, 1]
    assert [total for _, total, _ in results] == [3.0, 3.0]  # 1 + 2 on both ranks
    assert all(module.startswith("conformance.backends.reference.") for _, _, module in results)


def test_torchrun_launcher_reports_a_failing_rank_with_its_traceback() -> None:
    with pytest.raises(TorchrunFailed, match="rank one refuses"):
        run_with_torchrun(_raise_on_rank_1, 2, backend="reference", process_group="gloo", timeout=120)


def test_torchrun_command_uses_the_worker_module_and_the_process_group(tmp_path: Path) -> None:
    command = torchrun_command(4, tmp_path / "p.pkl", tmp_path / "r", "xla")
    assert command[1:4] == ["-m", "torch.distributed.run", "--standalone"]
    assert "--nproc-per-node=4" in command
    assert command[-4:] == [
        "conformance.backends.neuron_worker",
        str(tmp_path / "p.pkl"),
        str(tmp_path / "r"),
        "xla",
    ]


def test_neuron_backend_is_refused_here_with_what_is_missing() -> None:
    problem = require_neuron_host(None)
    assert problem is not None and "torch_neuronx" in problem and "--backend reference" in problem


def test_cli_refuses_the_neuron_backend_without_the_sdk(capsys: pytest.CaptureFixture[str]) -> None:
    from rich.console import Console

    status = main(["llama", "--backend", "neuron", "--repo", "."], console=Console(width=200))
    assert status == 2
    assert "Neuron SDK" in capsys.readouterr().err


def test_checks_hand_the_repo_to_the_torchrun_ranks(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`--repo` reaches the neuron backend's ranks: the checks' settings carry it down to torchrun."""
    from conformance.backends import neuron_launch
    from conformance.checks import RunSettings
    from conformance.checks.parity import CHECK
    from conformance.harness.dispatch import run_jobs

    seen: list[Path | None] = []

    def fake_torchrun(fn, world_size, *args, repo=None, timeout=600.0, **kwargs):
        seen.append(repo)
        return [[f"job {job.tp_size}" for job in args[2]]] * world_size

    class Job:
        tp_size = 2

    monkeypatch.setattr(neuron_launch, "run_with_torchrun", fake_torchrun)
    settings = RunSettings(backend="neuron", repo=tmp_path)
    found = run_jobs(CHECK, tmp_path, [Job(), Job()], settings)
    assert found == ["job 2", "job 2"] and seen == [tmp_path]
