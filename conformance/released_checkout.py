"""The installed optimum-neuron release laid out as a checkout, so that its own models can be checked.

    python -m conformance.released_checkout DEST
    python -m conformance llama --repo DEST

A checkout is a folder holding `optimum/neuron/models/training/<type>/`; `--repo` reads model packages
from there. The files of the installed distribution under `optimum/neuron/` are copied byte for byte (no
byte-code caches): the release's code is checked exactly as it ships. The tests and the done-when runs of
issue 8 use it to check optimum-neuron 0.4.5's llama, qwen3 and granite.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

DISTRIBUTION = "optimum-neuron"
_TREE = "optimum/neuron/"


class NoRelease(LookupError):
    """optimum-neuron is not installed in this environment."""


def released_version() -> str:
    """The installed optimum-neuron's version (NoRelease when it is not installed)."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as error:
        raise NoRelease(
            f"{DISTRIBUTION} is not installed here; install the test extra (`pip install -e '.[test]'`)"
        ) from error


def lay_out_release(destination: Path) -> Path:
    """Copy the installed release's `optimum/neuron/` files under `destination` and return `destination`.

    Refuses a destination that already holds an `optimum/` folder, so that nothing is overwritten.
    """
    released_version()
    distribution = importlib.metadata.distribution(DISTRIBUTION)
    files = [
        path
        for path in distribution.files or ()
        if path.as_posix().startswith(_TREE) and "__pycache__" not in path.parts
    ]
    if not files:
        raise NoRelease(f"the installed {DISTRIBUTION} lists no files under {_TREE}")
    destination = Path(destination)
    if (destination / "optimum").exists():
        raise FileExistsError(f"{destination / 'optimum'} exists already; choose an empty destination")
    for path in files:
        target = destination / path.as_posix()
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(str(distribution.locate_file(path))), target)
    return destination


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m conformance.released_checkout",
        description="Lay the installed optimum-neuron release out as a checkout for `--repo`.",
    )
    parser.add_argument("destination", type=Path, help="folder to write optimum/neuron/... into")
    args = parser.parse_args(argv)
    try:
        lay_out_release(args.destination)
    except (NoRelease, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"optimum-neuron {released_version()} laid out at {args.destination.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
