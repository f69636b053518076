"""Model packages served under a host package from the folder that holds them.

A model package `<root>/<name>/` is imported as `<host>.<name>`, so that its relative imports of the host
(`from ..config import ...`) resolve to the active backend's host, and its relative imports of sibling
models (`from ..llama.modeling_llama import ...`, as optimum-neuron's qwen3 and granite do) resolve to the
sibling folders of the same root. A package may have an `__init__.py` or be an implicit namespace package
(optimum-neuron's `llama/` has none).

The finder sits at the end of `sys.meta_path`: the host's own modules always win, and a name is served
only when `<root>/<name>/` is a model package. One root per host package at a time; mounting from another
root re-points it (the caller drops what the previous root had imported).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from pathlib import Path


def is_model_package(folder: Path) -> bool:
    """A folder Python imports as a package: an `__init__.py`, or (namespace package) at least one module."""
    return (
        folder.is_dir()
        and folder.name.isidentifier()
        and ((folder / "__init__.py").is_file() or any(folder.glob("*.py")))
    )


def is_namespace_package(folder: Path) -> bool:
    """A model package without `__init__.py`."""
    return is_model_package(folder) and not (folder / "__init__.py").is_file()


class ModelFolderFinder(importlib.abc.MetaPathFinder):
    """Serves `<host>.<name>` from `<root>/<name>/` when that folder is a model package."""

    def __init__(self, host: str, root: Path) -> None:
        self.host = host
        self.root = root

    def find_spec(self, fullname, path=None, target=None):  # type: ignore[override]
        prefix = self.host + "."
        name = fullname[len(prefix) :] if fullname.startswith(prefix) else ""
        if not name or "." in name:
            return None
        folder = self.root / name
        if not is_model_package(folder):
            return None
        init_file = folder / "__init__.py"
        if init_file.is_file():
            return importlib.util.spec_from_file_location(
                fullname, init_file, submodule_search_locations=[str(folder)]
            )
        spec = importlib.machinery.ModuleSpec(fullname, None, is_package=True)
        spec.submodule_search_locations = [str(folder)]
        return spec


def serve_model_folders(host: str, root: Path) -> ModelFolderFinder:
    """Serve the model packages of `root` under `host` (replacing the root served before, if any)."""
    for finder in sys.meta_path:
        if isinstance(finder, ModelFolderFinder) and finder.host == host:
            finder.root = root
            return finder
    finder = ModelFolderFinder(host, root)
    sys.meta_path.append(finder)
    return finder


def mounted_folder(module: object) -> Path | None:
    """The folder a mounted model package was imported from (its first `__path__` entry)."""
    paths = list(getattr(module, "__path__", []) or [])
    return Path(paths[0]).resolve() if paths else None
