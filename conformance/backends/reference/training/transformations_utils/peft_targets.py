"""LoRA `target_modules` between the Transformers module names and the fused custom ones.

A spec that fuses modules (gate/up, q/k/v) renames them to the fused layer in a PEFT config, and back
(`FusedModulesSpec`); `target_modules="all-linear"` is expanded to concrete names first (deviation ON-06),
because a pattern cannot be rewritten name by name.
"""

from __future__ import annotations

import copy
from abc import abstractmethod
from typing import TYPE_CHECKING

from torch import nn

from .spec_base import ModelWeightTransformationSpec

if TYPE_CHECKING:
    from peft import PeftConfig

ALL_LINEAR = "all-linear"
_ADAPTER_CHILDREN = {"base_layer", "lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B", "lora_dropout"}


def _fuse_target_modules(peft_config: PeftConfig, originals: list[str], fused: str, spec_name: str) -> None:
    """Replace the original linears by the fused one in `target_modules` (all of them or none are listed)."""
    targets = peft_config.target_modules
    if isinstance(targets, str):
        if targets.lower() == ALL_LINEAR:
            raise ValueError(
                f"{spec_name}: target_modules='all-linear' must be expanded to module names before fusing "
                f"{originals}; adapt_peft_config_for_model(model, config) does that (deviation ON-06)"
            )
        if any(name in targets for name in originals):
            raise ValueError(
                f"{spec_name}: cannot fuse {originals} into {fused!r} inside the pattern target_modules="
                f"{targets!r}; list the module names instead"
            )
        return
    if targets is None:
        raise ValueError(f"{spec_name}: target_modules is None; name the modules to adapt explicitly")
    if not isinstance(targets, set):
        targets = set(targets)
        peft_config.target_modules = targets
    missing = [name for name in originals if name not in targets]
    if len(missing) == len(originals):
        return
    if missing:
        raise ValueError(
            f"{spec_name} fuses {originals} into {fused!r}: target all of them or none; missing: "
            f"{', '.join(missing)}"
        )
    targets.difference_update(originals)
    targets.add(fused)


def _unfuse_target_modules(peft_config: PeftConfig, originals: list[str], fused: str) -> None:
    targets = peft_config.target_modules
    if isinstance(targets, (set, list, tuple)) and fused in targets:
        targets = set(targets) - {fused}
        targets.update(originals)
        peft_config.target_modules = targets


class FusedModulesSpec(ModelWeightTransformationSpec):
    """A spec whose custom module fuses several original modules (gate/up, q/k/v).

    Its PEFT-facing methods follow from two names: the fused module and the original ones it replaces.
    """

    @abstractmethod
    def _fused_module_name(self) -> str:
        """The custom module, relative to the spec's module."""

    @abstractmethod
    def _original_module_names(self) -> list[str]:
        """The Transformers modules it fuses, relative to the spec's module."""

    def guess_peft_type(self, model: nn.Module, module_fully_qualified_name: str) -> str | None:
        """ "lora" when the fused module is wrapped by a LoRA layer, else None.

        LoRA is detected by the adapter containers PEFT wrappers hold (`lora_A` and `lora_B`).
        optimum-neuron checks for its own `peft.tuners.lora.layer` wrapper classes; every LoRA wrapper has
        both containers, and this keeps the host free of any PEFT-layer import.
        """
        fused = model.get_submodule(f"{module_fully_qualified_name}.{self._fused_module_name()}")
        return "lora" if hasattr(fused, "lora_A") and hasattr(fused, "lora_B") else None

    def _lora_config(self, peft_config: PeftConfig, inplace: bool) -> PeftConfig:
        if not inplace:
            peft_config = copy.deepcopy(peft_config)
        if peft_config.peft_type != "LORA":
            raise NotImplementedError(
                f"PEFT type {peft_config.peft_type} is not supported by {type(self).__name__}; only LoRA is."
            )
        return peft_config

    def adapt_peft_config(self, peft_config: PeftConfig, inplace: bool = False) -> PeftConfig:
        peft_config = self._lora_config(peft_config, inplace)
        _fuse_target_modules(
            peft_config, self._original_module_names(), self._fused_module_name(), type(self).__name__
        )
        return peft_config

    def to_original_peft_config(self, peft_config: PeftConfig, inplace: bool = False) -> PeftConfig:
        peft_config = self._lora_config(peft_config, inplace)
        _unfuse_target_modules(peft_config, self._original_module_names(), self._fused_module_name())
        return peft_config


def _all_linear_module_names(model: nn.Module) -> set[str]:
    """Leaf names of the linear layers PEFT's 'all-linear' would target on `model` (deviation ON-06).

    nn.Linear and any module class named `*Linear` (NxD's parallel linears, PEFT wrappers), outside the
    adapter internals and except the output embedding, as PEFT excludes it.
    """
    get_output_embeddings = getattr(model, "get_output_embeddings", None)
    output = get_output_embeddings() if callable(get_output_embeddings) else None
    names = set()
    for name, module in model.named_modules():
        parts = name.split(".")
        if not name or module is output or _ADAPTER_CHILDREN.intersection(parts):
            continue
        if isinstance(module, nn.Linear) or type(module).__name__.endswith("Linear"):
            names.add(parts[-1])
    if output is None:
        names.discard("lm_head")
    return names


def expand_all_linear(model: nn.Module, peft_config: PeftConfig) -> None:
    """Replace `target_modules="all-linear"` by the linear layer names of the custom `model` (ON-06)."""
    targets = getattr(peft_config, "target_modules", None)
    if isinstance(targets, str) and targets.lower() == ALL_LINEAR:
        peft_config.target_modules = _all_linear_module_names(model)
