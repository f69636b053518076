"""The two hosts a spec that a generated package defines runs under in the backend tests — the reference
host and the released optimum-neuron 0.4.5 host code (`oracle_optimum_neuron`) — and the package's
definitions (templates/definitions/*.py) imported under either, as a generated package imports them."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

from conformance.backends import activate

activate("reference")

from conformance.backends.reference.training import transformations_utils as tu  # noqa: E402

from .oracle_optimum_neuron import ORACLE_PACKAGE, load_oracle  # noqa: E402

DEFINITIONS = Path(__file__).resolve().parents[2] / "templates" / "definitions"
on = load_oracle()
HOSTS = {
    "reference": (tu, "conformance.backends.reference.training"),
    "released": (on, f"{ORACLE_PACKAGE}.models.training"),
}  # name -> (its transformations module, the package the definitions' `..` stands for)


def definitions(host_package: str, module: str) -> ModuleType:
    """`templates/definitions/<module>.py` imported as `<host_package>.fused_template.<module>`."""
    name = f"{host_package}.fused_template.{module}"
    if name not in sys.modules:
        importlib.import_module(host_package)
        package_name = f"{host_package}.fused_template"
        if package_name not in sys.modules:
            package = ModuleType(package_name)
            package.__path__ = [str(DEFINITIONS)]
            sys.modules[package_name] = package
    return importlib.import_module(name)
