"""pytest integration: the `run_ranks` fixture, and rank pools shut down when the session ends.

Register with ``pytest_plugins = ["conformance.launcher.pytest_plugin"]`` in the root conftest.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from conformance.launcher import DeviceUnavailable, run_on_ranks, shutdown_pools


@pytest.fixture
def run_ranks() -> Callable[..., list[Any]]:
    """`run_on_ranks`, except that a missing accelerator (``device="cuda"``) skips the test."""

    def run(fn: Callable[..., Any], world_size: int, *args: Any, **kwargs: Any) -> list[Any]:
        try:
            return run_on_ranks(fn, world_size, *args, **kwargs)
        except DeviceUnavailable as exc:
            pytest.skip(str(exc))

    return run


def pytest_sessionfinish() -> None:
    shutdown_pools()
