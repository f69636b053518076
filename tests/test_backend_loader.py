"""The backend loader: aliases resolve to the reference modules, never shadow real packages, and mount models."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(code: str, *, pythonpath: list[Path] | None = None) -> subprocess.CompletedProcess:
    env_path = ":".join(str(p) for p in [REPO, *(pythonpath or [])])
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"},
        timeout=120,
    )


def test_alias_gives_the_reference_modules_only_after_activation():
    result = _run(
        """
        import importlib.util
        assert importlib.util.find_spec("neuronx_distributed") is None, "visible before activation"
        from conformance.backends import activate
        backend = activate("reference")
        import neuronx_distributed.parallel_layers.parallel_state as public
        from conformance.backends.reference.neuronx_distributed.parallel_layers import parallel_state as internal
        assert public is internal
        assert public.__spec__.name == internal.__name__
        assert backend.host_package == "conformance.backends.reference.training"
        print("ok")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_reference_backend_refuses_to_shadow_an_installed_neuronx_distributed(tmp_path):
    fake = tmp_path / "neuronx_distributed"
    fake.mkdir()
    (fake / "__init__.py").write_text("REAL = True\n")
    result = _run(
        """
        from conformance.backends import activate, BackendError
        try:
            activate("reference")
        except BackendError as error:
            print("refused:", error)
        import neuronx_distributed
        assert neuronx_distributed.REAL
        """,
        pythonpath=[tmp_path],
    )
    assert result.returncode == 0, result.stderr
    assert "refused: a real neuronx_distributed is installed" in result.stdout


def test_neuron_backend_explains_what_is_missing_here():
    result = _run(
        """
        from conformance.backends import activate, BackendError
        try:
            activate("neuron")
        except BackendError as error:
            print(error)
        """
    )
    assert "needs neuronx_distributed" in result.stdout and "--backend reference" in result.stdout


def test_model_package_is_mounted_under_the_host_and_uses_relative_host_imports(tmp_path):
    package = tmp_path / "toy"
    package.mkdir()
    (package / "__init__.py").write_text("from .modeling_toy import describe\n")
    (package / "modeling_toy.py").write_text(
        "from .. import deviations\n"
        "from neuronx_distributed.parallel_layers.utils import divide\n"
        "def describe():\n"
        "    return __name__, divide(6, 3), deviations.DEVIATIONS[0].id\n"
    )
    other = tmp_path / "elsewhere" / "toy"
    other.mkdir(parents=True)
    (other / "__init__.py").write_text("")
    result = _run(
        f"""
        from pathlib import Path
        from conformance.backends import Backend, BackendError, activate
        activate("reference")
        # Mount under the reference package itself, whose sibling module `deviations` stands in for a host
        # module: the mechanism is the same for the training host.
        backend = Backend(
            "reference", "conformance.backends.reference", "conformance.backends.reference.training.peft", None
        )
        module = backend.load_model_package(Path({str(package)!r}))
        print(module.describe())
        assert backend.load_model_package(Path({str(package)!r})) is module
        try:
            backend.load_model_package(Path({str(other)!r}))
        except BackendError as error:
            print("refused:", error)
        """
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "('conformance.backends.reference.toy.modeling_toy', 2, 'NXD-01')"
    assert lines[1].startswith("refused: conformance.backends.reference.toy is already mounted from")


def test_flash_sequence_lengths_follow_each_kernel():
    """The NKI kernel takes multiples of 2048 (NxD raises otherwise); the reference kernel can be told to take
    the parity batch's own length, and is told so only inside the block."""
    from conformance.backends import BackendError, described

    neuron, reference = described("neuron"), described("reference")
    assert [neuron.flash_sequence_length(n) for n in (1, 16, 2048, 2049)] == [2048, 2048, 2048, 4096]
    assert [reference.flash_sequence_length(n) for n in (1, 16, 2049)] == [1, 16, 2049]
    with neuron.flash_kernel_taking(4096):
        pass
    with pytest.raises(BackendError, match="multiples of 2048, not 16"), neuron.flash_kernel_taking(16):
        pass
    with pytest.raises(BackendError, match="unknown backend 'xla'"):
        described("xla")

    result = _run(
        """
        import os
        import torch
        from conformance.backends import activate
        backend = activate("reference")
        from neuronx_distributed.kernels.flash_attn import SEQ_MULTIPLE_ENV, nki_flash_attn_func
        q = k = v = torch.randn(1, 2, 4, 16)  # (batch, heads, head_dim, sequence): transpose_nki_inputs
        try:
            nki_flash_attn_func(q, k, v)
        except Exception as error:
            print("outside:", isinstance(error, NotImplementedError), "multiples of 2048" in str(error))
        with backend.flash_kernel_taking(16):
            print("inside:", tuple(nki_flash_attn_func(q, k, v).shape), os.environ[SEQ_MULTIPLE_ENV])
        print("after:", os.environ.get(SEQ_MULTIPLE_ENV))
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "outside: True True",
        "inside: (1, 2, 16, 4) 16",
        "after: None",
    ]


def test_torch_xla_pieces_are_served_only_after_activation_and_run_on_the_rank_device():
    result = _run(
        """
        import importlib.util
        import torch
        assert importlib.util.find_spec("torch_xla") is None, "visible before activation"
        from conformance.backends import activate
        activate("reference")
        import torch_xla.core.xla_model as xm
        from torch_xla.utils.checkpoint import checkpoint
        from conformance.backends.reference.xla_device import XlaDeviceOnRank
        print(xm.xla_device(), xm.get_ordinal(), xm.get_local_ordinal())
        with XlaDeviceOnRank():
            mask = torch.triu(torch.ones((1, 1, 3, 3), device="xla"), diagonal=1).bool()
            moved = torch.zeros(2).to(torch.device("xla"))
            layer = torch.nn.Linear(2, 2).to(xm.xla_device())
        print(mask.device, moved.device, layer.weight.device, int(mask.sum()))
        try:
            torch.ones(1, device="xla")
        except RuntimeError:
            print("outside the mode, xla is not a device here")
        # torch_xla's checkpoint: reentrant, same gradients, refuses what torch_xla refuses
        torch.manual_seed(0)
        lin = torch.nn.Linear(3, 3)
        x = torch.randn(2, 3, requires_grad=True)
        checkpoint(lambda t: lin(t).tanh(), x).sum().backward()
        with_checkpoint = (x.grad.clone(), lin.weight.grad.clone())
        x.grad = None
        lin.weight.grad = None
        lin(x).tanh().sum().backward()
        print(torch.equal(with_checkpoint[0], x.grad), torch.equal(with_checkpoint[1], lin.weight.grad))
        frozen = torch.randn(2, 3)  # reentrant: no tensor input requires grad -> no parameter gradient
        lin.weight.grad = None
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = checkpoint(lambda t: lin(t), frozen)
        print(out.requires_grad)
        for bad in ({"use_reentrant": False}, {"context_fn": None}):
            try:
                checkpoint(lambda t: t, x, **bad)
            except ValueError as error:
                print("refused:", error)
        # a segment that creates a tensor on "xla" (Llama's causal mask) is recomputed in the backward pass,
        # where autograd runs it outside the caller's torch function mode: it still lands on the rank's device
        x.grad = None
        with XlaDeviceOnRank():
            masked = checkpoint(lambda t: (lin(t) * torch.ones(3, device="xla")).sum(), x)
            masked.backward()
        print("recomputed on the rank's device:", x.grad.device)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "cpu 0 0",
        "cpu cpu cpu 3",
        "outside the mode, xla is not a device here",
        "True True",
        "False",
        "refused: XLA currently does not support use_reentrant==False",
        "refused: Unexpected keyword arguments: context_fn",
        "recomputed on the rank's device: cpu",
    ]


def test_reference_backend_refuses_to_shadow_an_installed_torch_xla(tmp_path):
    fake = tmp_path / "torch_xla"
    fake.mkdir()
    (fake / "__init__.py").write_text("REAL = True\n")
    result = _run(
        """
        from conformance.backends import activate, BackendError
        try:
            activate("reference")
        except BackendError as error:
            print("refused:", error)
        import torch_xla
        assert torch_xla.REAL
        """,
        pythonpath=[tmp_path],
    )
    assert result.returncode == 0, result.stderr
    assert "refused: a real torch_xla is installed" in result.stdout


def test_namespace_model_packages_mount_and_import_their_siblings(tmp_path):
    """optimum-neuron's shape: `llama/` has no __init__.py, and `qwen3/` imports `..llama.modeling_llama`."""
    (tmp_path / "alpha").mkdir()
    (tmp_path / "alpha" / "modeling_alpha.py").write_text(
        "from ..training_utils import is_logging_process\nclass AlphaForCausalLM:\n    pass\n"
    )
    (tmp_path / "beta").mkdir()
    (tmp_path / "beta" / "__init__.py").write_text("")
    (tmp_path / "beta" / "modeling_beta.py").write_text(
        "from ..alpha.modeling_alpha import AlphaForCausalLM\nclass BetaForCausalLM(AlphaForCausalLM):\n    pass\n"
    )
    (tmp_path / "notes").mkdir()  # no module: not a model package
    (tmp_path / "training_utils").mkdir()  # a host module's name: the host's module wins
    (tmp_path / "training_utils" / "modeling_x.py").write_text("")
    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "checkpoint" / "config.json").write_text('{"architectures": ["BetaForCausalLM"]}')
    result = _run(
        f"""
        import sys
        from pathlib import Path
        from conformance.backends import BackendError, activate
        from conformance.model_package import causal_lm_class, mount
        backend = activate("reference")
        root = Path({str(tmp_path)!r})
        beta, unmount = mount(root / "beta")
        cls = causal_lm_class(beta, str(root / "checkpoint"))
        print(cls.__module__, cls.__mro__[1].__module__)
        host = backend.host_package
        print(sorted(k[len(host) + 1 :] for k in sys.modules if k.startswith(host + ".") and "." in k[len(host) + 1 :]
              and k[len(host) + 1 :].split(".")[0] in ("alpha", "beta")))
        unmount()
        print([k for k in sys.modules if k.startswith((host + ".alpha", host + ".beta"))])
        alpha = backend.load_model_package(root / "alpha")
        print(alpha.__name__, alpha.__file__)
        for folder in ("notes", "training_utils"):
            try:
                backend.load_model_package(root / folder)
            except BackendError as error:
                print("refused:", str(error).split(": ", 1)[1])
        """
    )
    assert result.returncode == 0, result.stderr
    host = "conformance.backends.reference.training"
    assert result.stdout.splitlines() == [
        f"{host}.beta.modeling_beta {host}.alpha.modeling_alpha",
        "['alpha.modeling_alpha', 'beta.modeling_beta']",
        "[]",
        f"{host}.alpha None",
        "refused: not a model package (no __init__.py and no Python module)",
        f"refused: its name is taken by the host's own module {host}.training_utils; rename the folder",
    ]


def test_libraries_that_probe_for_torch_xla_do_not_take_the_reference_pieces_for_it():
    """accelerate imports torch_xla.core.xla_model and torch_xla.runtime to decide whether it runs on XLA;
    both exist on the reference backend, so activation sets their documented USE_TORCH_XLA=0 switch."""
    result = _run(
        """
        import os
        from conformance.backends import activate
        activate("reference")
        import accelerate.utils.imports as accelerate_imports
        import transformers.utils.import_utils as transformers_imports
        import torch_xla.runtime  # the pieces exist...
        print(os.environ["USE_TORCH_XLA"], accelerate_imports.is_torch_xla_available(),
              transformers_imports.is_torch_xla_available())  # ...and are not taken for torch_xla
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0", "False", "False"]


def test_checkout_host_imports_the_checkouts_own_modules_and_cannot_be_switched(released_checkout):
    result = _run(
        f"""
        import sys
        from pathlib import Path
        from conformance.backends import BackendError, activate
        backend = activate("reference", Path({str(released_checkout)!r}), "checkout")
        print(backend.host_package, backend.host_name, backend.peft_package)
        print(backend.host_module("modeling_utils").__file__)
        print(backend.host_module("config").TrainingNeuronConfig.__module__)
        try:
            activate("reference", host="reference")
        except BackendError as error:
            print("refused:", error)
        """
    )
    assert result.returncode == 0, result.stderr
    training = released_checkout / "optimum" / "neuron" / "models" / "training"
    assert result.stdout.splitlines() == [
        "optimum.neuron.models.training checkout optimum.neuron.peft",
        str(training / "modeling_utils.py"),
        "optimum.neuron.models.training.config",
        "refused: the checkout host is already active in this process, cannot switch to the reference host",
    ]
