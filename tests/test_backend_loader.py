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
