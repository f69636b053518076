"""The neuron backend's seam: its prerequisites are refused clearly here, and its torchrun launcher — the
part that differs from the reference launcher — really runs ranks (with gloo and the reference backend):
the ranks of `run_with_torchrun` import optimum-neuron's released llama and its own training host
(`host="checkout"`) from the checkout given as `repo` (the installed release laid out as one), load a
transformers checkpoint at TP=2 and give transformers' loss; a failing rank comes back with its traceback."""

from __future__ import annotations

import functools
import sys
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
from conformance.model_location import locate_package
from conformance.tensor_parallel_run import on_rank
from reference_models import build, variant


def _released_llama_loss(model_dir: str, checkpoint: str) -> dict[str, object]:
    """On each torchrun rank: the checkout's llama at TP=2 and transformers, same batch, eval mode."""
    import os

    import torch.distributed as dist
    from transformers import AutoModelForCausalLM

    from conformance.backends import active
    from conformance.backends.neuron_launch import REPO_ENV
    from conformance.model_package import causal_lm_class, mount

    package, unmount = mount(Path(model_dir))
    try:
        cls = causal_lm_class(package, checkpoint)
        mixin = next(base for base in cls.__mro__ if base.__name__ == "NeuronModelMixin")
        trn_config = active().host_module("config").TrainingNeuronConfig(tensor_parallel_size=2)
        model = cls.from_pretrained(checkpoint, trn_config).eval()
        ids = (torch.arange(24).reshape(2, 12) * 7) % model.config.vocab_size
        loss = model(input_ids=ids, labels=ids).loss.item()
        reference = AutoModelForCausalLM.from_pretrained(checkpoint, attn_implementation="eager").eval()
        return {
            "rank": dist.get_rank(),
            "module_file": sys.modules[cls.__module__].__file__,
            "host_file": sys.modules[mixin.__module__].__file__,
            "repo": os.environ[REPO_ENV],
            "loss": loss,
            "transformers_loss": reference(input_ids=ids, labels=ids).loss.item(),
        }
    finally:
        unmount()


def _raise_on_rank_1() -> None:
    import torch.distributed as dist

    if dist.get_rank() == 1:
        raise ValueError("rank one refuses")


@pytest.mark.slow
def test_torchrun_ranks_import_the_released_llama_from_the_checkout_and_match_transformers(
    released_checkout: Path, checkpoint_cache: Path
) -> None:
    located = locate_package("llama", repo=released_checkout).path
    assert not (located / "__init__.py").exists()  # optimum-neuron's llama is a namespace package
    checkpoint = str(build(variant("llama/gqa"), checkpoint_cache))
    results = run_with_torchrun(
        functools.partial(on_rank, "reference", 2, 1, 1, _released_llama_loss),
        2,
        str(located),
        checkpoint,
        backend="reference",
        process_group="gloo",
        repo=released_checkout,
        host="checkout",
        timeout=300,
    )
    assert [result["rank"] for result in results] == [0, 1]
    for result in results:
        assert result["module_file"] == str(located / "modeling_llama.py")
        assert result["host_file"] == str(located.parent / "modeling_utils.py")  # the checkout's own host
        assert result["repo"] == str(released_checkout.resolve())
        assert abs(result["loss"] - result["transformers_loss"]) <= 1e-5 * abs(result["transformers_loss"])


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
