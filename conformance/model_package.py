"""A generated model package as the checks see it: mounted under the active backend's host package.

A package folder `<dir>/<type>/` is imported as `<host>.<type>` (`optimum.neuron.models.training.<type>`
on the reference backend), so its relative imports of the host API resolve exactly as they will in
optimum-neuron's tree. Checks call `mount` on every rank and `causal_lm_class` to find the class a
checkpoint names.
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType


def mount(model_dir: Path) -> tuple[ModuleType, Callable[[], None]]:
    """The package mounted through the active backend, and the function that unmounts it afterwards.

    Rank processes are pooled and reused, so a mount left by an earlier call from another folder of the
    same name is dropped first, and what a mount made here imported (the package, and sibling model
    packages it imports, such as qwen3's `..llama`) is dropped by the returned function.
    """
    from conformance.backends import active
    from conformance.backends.model_folders import mounted_folder

    backend = active()
    assert backend is not None, "run_tensor_parallel activates the backend on every rank"
    model_dir = Path(model_dir).resolve()
    name = f"{backend.host_package}.{model_dir.name}"
    existing = sys.modules.get(name)
    if existing is not None and mounted_folder(existing) != model_dir:
        _drop(lambda key: key == name or key.startswith(name + "."))
        existing = None
    if existing is not None:
        return backend.load_model_package(model_dir), lambda: None
    before = set(sys.modules)
    package = backend.load_model_package(model_dir)
    siblings = {folder.name for folder in model_dir.parent.iterdir() if folder.is_dir()}
    prefix = backend.host_package + "."

    def imported_here(key: str) -> bool:
        return key not in before and key.startswith(prefix) and key[len(prefix) :].split(".")[0] in siblings

    return package, lambda: _drop(imported_here)


def _drop(which: Callable[[str], bool]) -> None:
    for key in [key for key in sys.modules if which(key)]:
        del sys.modules[key]


def causal_lm_class(package: ModuleType, checkpoint: str) -> type:
    """The class of `package` named by the checkpoint's `architectures`: exported by the package, or
    defined in one of its modules (all of them are imported when the package exports nothing, as
    optimum-neuron's `__init__`-less llama and its empty-`__init__` qwen3 and granite)."""
    architectures = json.loads((Path(checkpoint) / "config.json").read_text()).get("architectures") or []
    for import_modules in (False, True):
        if import_modules:
            _import_modules_of(package)
        for name in architectures:
            cls = _find_class(package, name)
            if cls is not None:
                return cls
    raise LookupError(f"{package.__name__} defines none of the checkpoint's architectures {architectures}")


def _find_class(package: ModuleType, name: str) -> type | None:
    cls = getattr(package, name, None)
    if cls is not None:
        return cls
    for module_name, module in list(sys.modules.items()):
        if module_name.startswith(package.__name__ + ".") and hasattr(module, name):
            return getattr(module, name)
    return None


def _import_modules_of(package: ModuleType) -> None:
    for folder in getattr(package, "__path__", []):
        for module_file in sorted(Path(folder).glob("*.py")):
            if module_file.stem != "__init__":
                importlib.import_module(f"{package.__name__}.{module_file.stem}")
