"""Sessions: `conformance` (the quick start's first command), `tests` (the CI gate), `lint` and `demo`.

Each session installs the project into its own virtualenv with pip, which takes the CPU build of torch
2.13.0 pinned in pyproject.toml. Virtualenvs are reused between runs; pass `--reuse-venv=no` to rebuild.
"""

from __future__ import annotations

import nox

nox.options.reuse_venv = "yes"
nox.options.sessions = ["tests", "lint"]

PYTHON = "3.11"


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Install with the test extra and run the whole test suite (extra arguments go to pytest)."""
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", *(session.posargs or ["-q"]))


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install("ruff>=0.17,<0.18")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PYTHON)
def demo(session: nox.Session) -> None:
    """A TP=2 check of the reference backend's layers against dense torch layers, on CPU."""
    session.install("-e", ".")
    session.run("python", "-m", "conformance.demo", *session.posargs)


@nox.session(python=PYTHON)
def conformance(session: nox.Session) -> None:
    """Check generated models: `nox -s conformance -- <type ...> [--profile quick|full] [--backend ...]`.

    With no arguments: scaffold llama into workspace/llama if it is not there yet, run the quick profile
    and write the reports to conformance-report/llama/.
    """
    session.install("-e", ".")
    session.run("python", "-m", "conformance", *session.posargs, env={"OMP_NUM_THREADS": "1"})
