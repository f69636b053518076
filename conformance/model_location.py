"""Which package a conformance run checks, scaffolding it first when the default one does not exist yet.

- `--package DIR`: that folder, as is.
- `--repo PATH`: the package in an optimum-neuron checkout (`optimum/neuron/models/training/<type>/`), with
  or without `__init__.py`.
- neither: `workspace/<type>/`, where `scaffold new-model <type>` writes by default; when it is missing it is
  generated now, so that one command goes from a model type to a report. An existing package is never
  regenerated: it may hold a contributor's edits.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path


class PackageNotFound(LookupError):
    """The package to check does not exist and cannot be generated here."""


@dataclass(frozen=True)
class LocatedPackage:
    """The package folder, and whether this run just generated it."""

    path: Path
    scaffolded: bool = False


def locate_package(
    model_type: str, *, package: Path | None = None, repo: Path | None = None
) -> LocatedPackage:
    """The package folder to check for `model_type` (see the module docstring)."""
    from conformance.backends.model_folders import is_model_package

    if package is not None:
        if not is_model_package(package):
            raise PackageNotFound(
                f"--package {package}: no __init__.py and no Python module there; point at the model package folder"
            )
        return LocatedPackage(package.resolve())
    from scaffold.destination import resolve_destination
    from scaffold.emit import package_name
    from scaffold.errors import ScaffoldError

    try:  # where `scaffold new-model` writes: the checkout's package folder, else workspace/<package>/
        found = resolve_destination(package_name(model_type), repo, None).package_dir
    except ScaffoldError as error:
        raise PackageNotFound(str(error)) from error
    if is_model_package(found):  # with or without __init__.py (optimum-neuron's llama/ has none)
        return LocatedPackage(found.resolve())
    if repo is not None:
        raise PackageNotFound(
            f"{found}: no model package; run `scaffold new-model {model_type} --repo {repo}` first"
        )
    _scaffold(model_type)
    return LocatedPackage(found.resolve(), scaffolded=True)


def _scaffold(model_type: str) -> None:
    from rich.console import Console

    from scaffold.cli import main as scaffold_main

    output = io.StringIO()
    status = scaffold_main(["new-model", model_type], console=Console(file=output, width=120))
    if status != 0:
        raise PackageNotFound(
            f"no package at workspace/{model_type} and `scaffold new-model {model_type}` failed "
            f"(status {status}):\n{output.getvalue()}"
        )
