"""Suite-wide settings (hypothesis profile, the rank launcher's pytest plugin) and session fixtures: one
reference-model cache, and each model type scaffolded once per session."""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from rich.console import Console

from scaffold.cli import main

os.environ.setdefault("OMP_NUM_THREADS", "1")

settings.register_profile(
    "nxd",
    deadline=None,
    max_examples=int(os.environ.get("HYPOTHESIS_MAX_EXAMPLES", "40")),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    derandomize=True,
)
settings.load_profile("nxd")

pytest_plugins = ["conformance.launcher.pytest_plugin"]


@pytest.fixture(scope="session")
def checkpoint_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One reference-model cache for the conformance tests."""
    return tmp_path_factory.mktemp("reference-models")


@pytest.fixture(scope="session")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """`generated("llama")`: the package `scaffold new-model llama` writes (made once, do not modify it)."""
    root = tmp_path_factory.mktemp("generated")
    made: dict[str, Path] = {}

    def package(model_type: str) -> Path:
        if model_type not in made:
            output = io.StringIO()
            status = main(["new-model", model_type, "--out", str(root)], console=Console(file=output))
            assert status == 0, output.getvalue()
            made[model_type] = root / model_type
        return made[model_type]

    return package


@pytest.fixture(scope="session")
def released_checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The installed optimum-neuron release laid out as a checkout (`conformance.released_checkout`): its
    own llama (no __init__.py), qwen3 and granite, unmodified. Do not modify it."""
    from conformance.released_checkout import lay_out_release

    return lay_out_release(tmp_path_factory.mktemp("optimum-neuron-checkout"))
