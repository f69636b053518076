"""What the model-level functions walk: the current stage's parameter names and the custom modules.

PP=1 only: `model.parameters_for_current_stage` is read when the model has it, otherwise every name of
`model.state_dict()` is taken, which is what optimum-neuron returns without pipeline parallelism.
"""

from __future__ import annotations

from collections.abc import Iterator

from torch import nn

from ..adapter_names import remove_adapter_name
from .spec_base import CustomModule, ModelWeightTransformationSpec


def parameters_for_current_stage(model: nn.Module) -> set[str]:
    """In-memory names of the parameters this pipeline stage holds."""
    names = getattr(model, "parameters_for_current_stage", None)
    return set(model.state_dict().keys()) if names is None else names


def adapter_free(names: set[str]) -> set[str]:
    """`names` without their adapter names, as the specs' relevance checks expect them."""
    return {remove_adapter_name(name) for name in names}


def custom_modules(model: nn.Module) -> Iterator[tuple[str, CustomModule]]:
    """`(name, module)` for every module of `model` that carries transformation specs."""
    for name, module in model.named_modules():
        if isinstance(module, CustomModule):
            yield name, module


def all_specs(model: nn.Module) -> Iterator[ModelWeightTransformationSpec]:
    """Every spec of every custom module of `model`, in module order."""
    for _, module in custom_modules(model):
        yield from module.specs
