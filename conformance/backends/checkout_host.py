"""`--host checkout`: the training host of an optimum-neuron checkout, run over the reference NxD.

With the default `--host reference` a model runs over this kit's re-implementation of optimum-neuron's
training host (`conformance.backends.reference.training`). With `--host checkout` it runs over the
checkout's own host modules instead — `optimum.neuron.models.training` (config, modeling_utils,
transformations_utils, checkpointing, loss_utils, ...) and `optimum.neuron.peft`, executed unmodified — on
the reference NxD and the reference backend's torch_xla pieces. The package is imported the way a user
imports it (its `__init__` runs, registering the models and patching transformers' `set_verbosity` as on
Trainium), from the checkout put first on `sys.path`.

What the reference backend supplies for that: NxD's `trainer.save_checkpoint` (plain torch.save shards,
NXD-19), `parallel_layers.utils.get_local_world_size`/`move_model_to_device`, the `pipeline` names (which
refuse pipeline parallelism), and torch_xla's `runtime` and `distributed.xla_backend` names.

Not supported, and refused where it is asked for: pipeline parallelism (NotImplementedError on the ranks),
the neuron backend (whose host is always the checkout's: `--host` applies to the reference backend), a
process in which another `optimum.neuron` is already imported, and a checkout whose host imports
something else the reference backend does not provide (the import error names it).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import sys
import warnings
from pathlib import Path

HOSTS = ("reference", "checkout")
"""`--host` choices: the kit's reference host, or the host modules of the `--repo` checkout."""

CHECKOUT_HOST_PACKAGE = "optimum.neuron.models.training"
CHECKOUT_PEFT_PACKAGE = "optimum.neuron.peft"
_TRAINING = Path("optimum", "neuron", "models", "training")


class CheckoutHostError(RuntimeError):
    """The checkout's host cannot be imported in this process."""


def checkout_host_problem(repo: Path | None) -> str | None:
    """Why `--host checkout` cannot run with this `--repo`, or None when it can (checked before any rank)."""
    if repo is None:
        return "--host checkout needs --repo PATH, the optimum-neuron checkout whose host modules run"
    if not (Path(repo) / _TRAINING).is_dir():
        return f"--repo {repo}: not an optimum-neuron checkout (no {_TRAINING.as_posix()})"
    return None


def import_checkout_host(repo: Path) -> None:
    """Import the checkout's `optimum.neuron.models.training` in this process (the reference backend's
    aliases must be installed first: the host imports `neuronx_distributed` and `torch_xla`)."""
    problem = checkout_host_problem(repo)
    if problem:
        raise CheckoutHostError(problem)
    repo = Path(repo).resolve()
    expected = repo / "optimum" / "neuron"
    loaded = sys.modules.get("optimum.neuron")
    if loaded is not None:
        where = Path(next(iter(getattr(loaded, "__path__", [""])))).resolve()
        if where != expected:
            raise CheckoutHostError(
                f"optimum.neuron is already imported from {where} in this process; the checkout's host "
                f"({expected}) can only be imported in a fresh process"
            )
    if str(repo) not in sys.path:
        sys.path.insert(0, str(repo))
    # optimum.neuron's __init__ prints and warns that this machine has no Neuron device: expected here.
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="It seems this is running on a CPU-only machine")
        host = importlib.import_module(CHECKOUT_HOST_PACKAGE)
    if Path(host.__file__ or "").resolve().parent != repo / _TRAINING:
        raise CheckoutHostError(f"{CHECKOUT_HOST_PACKAGE} was imported from {host.__file__}, not from {repo}")
