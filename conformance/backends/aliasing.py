"""Import aliases: make `neuronx_distributed.*` resolve to the reference backend's modules in this process.

The alias is a meta-path finder installed at run time by `conformance.backends.activate("reference")`.
Nothing is written to site-packages, so the reference backend can never shadow the real packages of a
Trainium host: a process that does not activate it sees exactly what is installed.

An aliased name and its internal name are the same module object, so classes, isinstance checks and
module-level state (the parallel state) are shared whichever name a caller used.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from types import ModuleType


class _AliasLoader(importlib.abc.Loader):
    """Hands out the already imported target module under the alias name."""

    def __init__(self, target: str) -> None:
        self._target = target
        self._target_spec: importlib.machinery.ModuleSpec | None = None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = importlib.import_module(self._target)
        self._target_spec = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        # importlib re-pointed __spec__ at the alias spec; restore the real one so relative imports and
        # tracebacks keep naming the file's own package.
        module.__spec__ = self._target_spec


class AliasFinder(importlib.abc.MetaPathFinder):
    """Resolves `public` and `public.*` to `internal` and `internal.*`."""

    def __init__(self, public: str, internal: str) -> None:
        self.public = public
        self.internal = internal

    def _target_name(self, fullname: str) -> str | None:
        if fullname == self.public or fullname.startswith(self.public + "."):
            return self.internal + fullname[len(self.public) :]
        return None

    def find_spec(self, fullname, path=None, target=None):  # type: ignore[override]
        target_name = self._target_name(fullname)
        if target_name is None:
            return None
        target_spec = importlib.util.find_spec(target_name)
        if target_spec is None:
            return None
        return importlib.util.spec_from_loader(
            fullname, _AliasLoader(target_name), is_package=target_spec.submodule_search_locations is not None
        )


def install_alias(public: str, internal: str) -> AliasFinder:
    """Install (once) an alias from `public` to `internal` at the front of sys.meta_path."""
    for finder in sys.meta_path:
        if isinstance(finder, AliasFinder) and finder.public == public:
            if finder.internal != internal:
                raise RuntimeError(f"{public!r} is already aliased to {finder.internal!r}, not {internal!r}")
            return finder
    finder = AliasFinder(public, internal)
    sys.meta_path.insert(0, finder)
    return finder


def is_aliased(public: str) -> bool:
    """Whether `public` is served by an installed alias in this process."""
    return any(isinstance(f, AliasFinder) and f.public == public for f in sys.meta_path)
