"""The released optimum-neuron 0.4.5 `transformations_utils.py`, loaded as a test oracle.

The file is executed on its own, as `_optimum_neuron_oracle.models.training.transformations_utils`,
never through `optimum.neuron`'s package `__init__` (which needs the Neuron SDK). Its
`neuronx_distributed` imports resolve to the reference backend (activated first); its relative imports are
served by small stub modules registered under the private package name:
`...utils.import_utils.is_peft_available` (False: the oracle then defines its own empty `PeftConfig`) and
`...peft.tuners.lora.layer` (imported inside `guess_peft_type`), whose `ParallelLinear` and
`GQAQKVColumnParallelLinear` are the test trees' LoRA wrapper stand-ins.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from conformance.backends import activate

from .transformation_trees import LoraGQAQKVColumnParallelLinear, LoraParallelLinear

ORACLE_VERSION = "0.4.5"
ORACLE_PACKAGE = "_optimum_neuron_oracle"
_SOURCE = "optimum/neuron/models/training/transformations_utils.py"


def oracle_source() -> Path:
    """Path of the installed optimum-neuron's transformations_utils.py (the pinned version only)."""
    distribution = importlib.metadata.distribution("optimum-neuron")
    if distribution.version != ORACLE_VERSION:
        raise RuntimeError(f"the oracle is optimum-neuron {ORACLE_VERSION}, found {distribution.version}")
    return Path(str(distribution.locate_file(_SOURCE)))


def _package(name: str) -> ModuleType:
    module = sys.modules.get(name)
    if module is None:
        module = ModuleType(name)
        module.__path__ = []
        sys.modules[name] = module
    return module


def load_oracle() -> ModuleType:
    """The oracle module (loaded once per process)."""
    name = f"{ORACLE_PACKAGE}.models.training.transformations_utils"
    if name in sys.modules:
        return sys.modules[name]
    activate("reference")
    for package in (
        "",
        ".models",
        ".models.training",
        ".utils",
        ".peft",
        ".peft.tuners",
        ".peft.tuners.lora",
    ):
        _package(ORACLE_PACKAGE + package)
    import_utils = ModuleType(f"{ORACLE_PACKAGE}.utils.import_utils")
    import_utils.is_peft_available = lambda: False
    sys.modules[import_utils.__name__] = import_utils
    layer = ModuleType(f"{ORACLE_PACKAGE}.peft.tuners.lora.layer")
    layer.ParallelLinear = LoraParallelLinear
    layer.GQAQKVColumnParallelLinear = LoraGQAQKVColumnParallelLinear
    sys.modules[layer.__name__] = layer

    spec = importlib.util.spec_from_file_location(name, oracle_source())
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module
