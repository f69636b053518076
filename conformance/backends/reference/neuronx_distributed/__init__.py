"""Reference implementation of the subset of neuronx-distributed that training models use.

Unlike the real package, importing it pulls in nothing but torch: each submodule is imported on demand,
also when reached as an attribute (`neuronx_distributed.trainer.save_checkpoint`, as optimum-neuron's
host calls it after a bare `import neuronx_distributed`).
"""

from __future__ import annotations

import importlib
from types import ModuleType

_SUBPACKAGES = ("kernels", "modules", "parallel_layers", "pipeline", "trainer", "utils")


def __getattr__(name: str) -> ModuleType:
    if name in _SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
