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
    same name is dropped first, and a mount made here is dropped by the returned function.
    """
    from conformance.backends import active

    backend = active()
    assert backend is not None, "run_tensor_parallel activates the backend on every rank"
    name = f"{backend.host_package}.{model_dir.name}"

    def unmount() -> None:
        for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
            del sys.modules[key]

    existing = sys.modules.get(name)
    if existing is not None and Path(existing.__file__ or "").resolve().parent != model_dir:
        unmount()
        existing = None
    package = backend.load_model_package(model_dir)
    return package, (unmount if existing is None else lambda: None)


def causal_lm_class(package: ModuleType, checkpoint: str) -> type:
    architectures = json.loads((Path(checkpoint) / "config.json").read_text()).get("architectures") or []
    for module_file in sorted(Path(package.__file__ or "").parent.glob("modeling_*.py")):
        # its `__init__.py` may export nothing, as optimum-neuron's own model packages do
        importlib.import_module(f"{package.__name__}.{module_file.stem}")
    for name in architectures:
        cls = getattr(package, name, None)
        if cls is None:
            for module_name, module in list(sys.modules.items()):
                if module_name.startswith(package.__name__ + ".") and hasattr(module, name):
                    cls = getattr(module, name)
                    break
        if cls is not None:
            return cls
    raise LookupError(f"{package.__name__} defines none of the checkpoint's architectures {architectures}")
