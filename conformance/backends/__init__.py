"""The one place that chooses which implementation of the Neuron training stack a process uses.

Generated models import `neuronx_distributed.*` and, by relative import, optimum-neuron's training host
modules (`..config`, `..modeling_utils`, ...). A backend supplies both:

- `reference`: this kit's implementation on torch.distributed (gloo on CPU, nccl on CUDA). Activating it
  aliases `neuronx_distributed` to `conformance.backends.reference.neuronx_distributed` and `torch_xla` to
  `conformance.backends.reference.torch_xla` (the few pieces optimum-neuron's released code uses); the host
  package is `conformance.backends.reference.training`.
- `neuron`: the real packages of a Trainium host; the host package is `optimum.neuron.models.training`
  from the installed optimum-neuron or from a checkout given with `repo`.

Nothing else in the kit knows which backend runs: checks ask the active `Backend` for the host package
and for a model package.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from .aliasing import install_alias, is_aliased
from .checkout_host import (
    CHECKOUT_HOST_PACKAGE,
    CHECKOUT_PEFT_PACKAGE,
    HOSTS,
    CheckoutHostError,
    import_checkout_host,
)
from .model_folders import is_model_package, mounted_folder, serve_model_folders

BACKEND_NAMES = ("reference", "neuron")

_REFERENCE_NXD = "conformance.backends.reference.neuronx_distributed"
_REFERENCE_TORCH_XLA = "conformance.backends.reference.torch_xla"
_REFERENCE_HOST = "conformance.backends.reference.training"
_NEURON_HOST = "optimum.neuron.models.training"
_NEURON_PEFT = "optimum.neuron.peft"
NKI_FLASH_SEQUENCE_MULTIPLE = 2048
"""The NKI flash-attention kernel takes sequences in multiples of 2048 on Trainium."""


class BackendError(RuntimeError):
    """A backend cannot be activated in this process."""


@dataclass(frozen=True)
class Backend:
    """An activated backend: where the training host lives and how model packages are mounted."""

    name: str
    host_package: str
    peft_package: str
    """optimum-neuron's PEFT support (`optimum.neuron.peft`, or its twin beside the reference host)."""
    flash_sequence_multiple: int | None
    """Sequence lengths the flash-attention kernel takes are multiples of this; None where the kernel can be
    told to take any length (the reference kernel, so tiny models run the flash path at their own length)."""
    host_name: str = "reference"
    """Whose training host runs: `reference` (this kit's) or `checkout` (an optimum-neuron checkout's own
    modules: always on the neuron backend, with `--host checkout` on the reference one)."""

    def flash_sequence_length(self, preferred: int) -> int:
        """The sequence length a flash-attention run uses: `preferred`, rounded up to the kernel's multiple."""
        multiple = self.flash_sequence_multiple
        return preferred if multiple is None else -(-preferred // multiple) * multiple

    @contextlib.contextmanager
    def flash_kernel_taking(self, sequence_length: int) -> Iterator[None]:
        """Within the block, the flash kernel takes `sequence_length` (reference backend: lowers its multiple;
        a real kernel's multiple cannot be changed, so there the length must already be one of its own)."""
        if self.flash_sequence_multiple is not None:
            if sequence_length % self.flash_sequence_multiple:
                raise BackendError(
                    f"the {self.name} flash kernel takes sequences in multiples of {self.flash_sequence_multiple}, "
                    f"not {sequence_length}; use flash_sequence_length() to choose the length"
                )
            yield
            return
        # The reference kernel reads its multiple from the environment at every call.
        variable = importlib.import_module(f"{_REFERENCE_NXD}.kernels.flash_attn").SEQ_MULTIPLE_ENV
        previous = os.environ.get(variable)
        os.environ[variable] = str(sequence_length)
        try:
            yield
        finally:
            if previous is None:
                del os.environ[variable]
            else:
                os.environ[variable] = previous

    def host(self) -> ModuleType:
        """The training host package (`optimum.neuron.models.training` or its reference twin)."""
        return importlib.import_module(self.host_package)

    def host_module(self, name: str) -> ModuleType:
        """A host module by its short name: `config`, `modeling_utils`, `transformations_utils`, ..."""
        return importlib.import_module(f"{self.host_package}.{name}")

    def load_model_package(self, model_dir: Path) -> ModuleType:
        """Import a model folder as the subpackage `<host>.<folder name>`.

        Its relative imports (`..config`, `..modeling_utils`) then resolve to this backend's host, and those
        of sibling models (`..llama.modeling_llama`) to the folders beside it (`model_folders`). The folder
        may be an implicit namespace package (no `__init__.py`). A folder already mounted from the same path
        is returned as is; one mounted from another path is an error rather than a silent swap.
        """
        model_dir = Path(model_dir).resolve()
        if not is_model_package(model_dir):
            raise BackendError(f"{model_dir}: not a model package (no __init__.py and no Python module)")
        name = f"{self.host_package}.{model_dir.name}"
        existing = sys.modules.get(name)
        if existing is not None:
            mounted = mounted_folder(existing)
            if mounted != model_dir:
                raise BackendError(f"{name} is already mounted from {mounted}, cannot mount {model_dir}")
            return existing
        self.host()
        serve_model_folders(self.host_package, model_dir.parent)
        try:
            module = importlib.import_module(name)
        except BaseException:
            for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
                del sys.modules[key]
            raise
        if mounted_folder(module) != model_dir:
            raise BackendError(
                f"{model_dir}: its name is taken by the host's own module {name}; rename the folder"
            )
        return module


_ACTIVE: Backend | None = None

_BACKENDS = {
    "reference": Backend(
        "reference", _REFERENCE_HOST, f"{_REFERENCE_HOST}.peft", flash_sequence_multiple=None
    ),
    "neuron": Backend(
        "neuron",
        _NEURON_HOST,
        _NEURON_PEFT,
        flash_sequence_multiple=NKI_FLASH_SEQUENCE_MULTIPLE,
        host_name="checkout",
    ),
}


def described(name: str) -> Backend:
    """The backend of that name as data (its packages and kernel facts), without activating it."""
    if name not in BACKEND_NAMES:
        raise BackendError(f"unknown backend {name!r}; choose one of {', '.join(BACKEND_NAMES)}")
    return _BACKENDS[name]


def activate(name: str = "reference", repo: Path | None = None, host: str | None = None) -> Backend:
    """Activate a backend for this process (idempotent for the same choice) and return it.

    `host` (reference backend only): `reference` (the default) or `checkout`, the host modules of the
    optimum-neuron checkout `repo` (`checkout_host`); None accepts whichever host is already active.
    """
    global _ACTIVE
    described(name)
    if host is not None and host not in HOSTS:
        raise BackendError(f"unknown host {host!r}; choose one of {', '.join(HOSTS)}")
    if _ACTIVE is not None:
        if _ACTIVE.name != name:
            raise BackendError(
                f"backend {_ACTIVE.name!r} is already active in this process, cannot switch to {name!r}"
            )
        if host is not None and host != _ACTIVE.host_name:
            raise BackendError(
                f"the {_ACTIVE.host_name} host is already active in this process, cannot switch to the {host} host"
            )
        return _ACTIVE
    if name == "reference":
        _ACTIVE = _activate_reference(host or "reference", repo)
    elif host == "reference":
        raise BackendError(
            "the neuron backend always runs the checkout's own host; --host reference is for the reference backend"
        )
    else:
        _ACTIVE = _activate_neuron(repo)
    return _ACTIVE


def active() -> Backend | None:
    """The backend activated in this process, if any."""
    return _ACTIVE


def _activate_reference(host: str, repo: Path | None) -> Backend:
    aliases = {"neuronx_distributed": _REFERENCE_NXD, "torch_xla": _REFERENCE_TORCH_XLA}
    for public in aliases:
        if not is_aliased(public) and (public in sys.modules or importlib.util.find_spec(public) is not None):
            raise BackendError(
                f"a real {public} is installed in this environment; the reference backend will not "
                "shadow it. Run with --backend neuron, or use an environment without the Neuron packages."
            )
    # Libraries that probe for torch_xla (accelerate, transformers) must not take the aliased pieces for a
    # real torch_xla and switch to XLA code paths: this is their documented switch for a native torch job.
    os.environ["USE_TORCH_XLA"] = "0"
    for public, internal in aliases.items():
        install_alias(public, internal)
    if host == "reference":
        return _BACKENDS["reference"]
    try:
        import_checkout_host(repo)  # type: ignore[arg-type]  (checked there)
    except CheckoutHostError as error:
        raise BackendError(str(error)) from error
    return Backend(
        "reference",
        CHECKOUT_HOST_PACKAGE,
        CHECKOUT_PEFT_PACKAGE,
        flash_sequence_multiple=None,
        host_name="checkout",
    )


def _activate_neuron(repo: Path | None) -> Backend:
    if repo is not None:
        repo = Path(repo).resolve()
        if not (repo / "optimum" / "neuron" / "models" / "training").is_dir():
            raise BackendError(f"{repo}: not an optimum-neuron checkout (no optimum/neuron/models/training)")
        sys.path.insert(0, str(repo))
    for package in ("neuronx_distributed", "torch_xla"):
        if importlib.util.find_spec(package) is None:
            raise BackendError(
                f"the neuron backend needs {package}, which is not importable here; it runs on a Trainium "
                "host with the Neuron SDK installed. Use --backend reference on other machines."
            )
    return _BACKENDS["neuron"]
