"""The backend loader: aliases resolve to the reference modules, never shadow real packages, and mount models."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

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
        backend = Backend("reference", "conformance.backends.reference", "conformance.backends.reference.training.peft")
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
