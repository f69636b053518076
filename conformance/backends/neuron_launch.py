"""The neuron backend's seam: everything a Trainium run does differently from the reference backend.

On a Trainium host the checks are the same code; only these things change, and they change here:

| what | reference backend | neuron backend |
|---|---|---|
| rank processes | the kit's pooled launcher (`conformance.launcher`) | `torchrun --nproc-per-node T`, one per call |
| process group | gloo (CPU) or nccl (CUDA) | `xla` (torch-xla's backend, over the Neuron runtime) |
| device | cpu / cuda | the XLA device of each NeuronCore |
| neuronx_distributed | `conformance.backends.reference.neuronx_distributed` (aliased) | the installed package |
| training host | `conformance.backends.reference.training` (or, with `--host checkout`, the `--repo` checkout's) | `optimum.neuron.models.training` from `--repo` |
| flash attention | reference kernel, told to take the parity length (`Backend.flash_kernel_taking`) | NKI kernel: sequences a multiple of 2048 (`Backend.flash_sequence_length`) |

`run_with_torchrun` starts `torchrun` on `conformance.backends.neuron_worker`, which joins the process
group, activates the backend, runs the cloudpickled function and writes each rank's result to a file.
Here (no Neuron SDK) the same launcher is exercised with `process_group="gloo"` and the reference
backend, so the mechanism is tested even where the hardware is absent.

How to run on a Trainium host (trn1/trn2 with the Neuron SDK, torch-neuronx and neuronx-distributed):

    pip install -e '.[test]' && pip install -e ~/optimum-neuron
    nox -s conformance -- llama --backend neuron --repo ~/optimum-neuron
"""

from __future__ import annotations

import importlib.util
import os
import pickle
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cloudpickle

NEURON_PROCESS_GROUP = "xla"
NEURON_REQUIREMENTS = ("torch_neuronx", "torch_xla", "neuronx_distributed")
REPO_ENV = "NXD_SCAFFOLD_NEURON_REPO"


class TorchrunFailed(RuntimeError):
    """torchrun exited with an error or a rank wrote no result; carries the output."""


def require_neuron_host(repo: Path | None) -> str | None:
    """Why the neuron backend cannot run in this environment, or None when it can."""
    missing = [name for name in NEURON_REQUIREMENTS if importlib.util.find_spec(name) is None]
    if missing:
        return (
            f"the neuron backend needs {', '.join(missing)} (the Neuron SDK), which this environment lacks; "
            "it runs on a Trainium host. Use --backend reference here."
        )
    if repo is None:
        return "the neuron backend needs --repo PATH, an optimum-neuron checkout with the model registered"
    if not (repo / "optimum" / "neuron" / "models" / "training").is_dir():
        return f"--repo {repo}: not an optimum-neuron checkout (no optimum/neuron/models/training)"
    return None


def torchrun_command(world_size: int, payload: Path, results: Path, process_group: str) -> list[str]:
    """The command that runs one call on `world_size` local ranks."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={world_size}",
        "-m",
        "conformance.backends.neuron_worker",
        str(payload),
        str(results),
        process_group,
    ]


def run_with_torchrun(
    fn: Callable[..., Any],
    world_size: int,
    *args: Any,
    backend: str = "neuron",
    process_group: str = NEURON_PROCESS_GROUP,
    repo: Path | None = None,
    host: str | None = None,
    timeout: float = 600.0,
    **kwargs: Any,
) -> list[Any]:
    """`fn(*args, **kwargs)` on each of `world_size` torchrun ranks with `backend` active; rank-ordered results.

    The ranks see the checkout `repo` (the neuron backend's host, or with `host="checkout"` the reference
    backend.s).

    A rank that raises makes this raise `TorchrunFailed` with torchrun's output (which holds the
    traceback); so does a run past `timeout`.
    """
    with tempfile.TemporaryDirectory(prefix="nxd-torchrun-") as scratch:
        payload, results = Path(scratch) / "payload.pkl", Path(scratch) / "results"
        results.mkdir()
        payload.write_bytes(cloudpickle.dumps((backend, host, fn, args, kwargs)))
        env = dict(os.environ)
        if repo is not None:
            env[REPO_ENV] = str(Path(repo).resolve())
        command = torchrun_command(world_size, payload, results, process_group)
        try:
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as error:
            raise TorchrunFailed(f"torchrun on {world_size} ranks ran past {timeout:.0f}s") from error
        files = [results / f"rank{rank}.pkl" for rank in range(world_size)]
        if done.returncode != 0 or not all(file.is_file() for file in files):
            raise TorchrunFailed(
                f"torchrun on {world_size} ranks failed (exit {done.returncode}):\n{done.stdout}{done.stderr}"
            )
        return [pickle.loads(file.read_bytes()) for file in files]
