"""The spec contract: `ModelWeightTransformationSpec`, the per-module container and `CustomModule`.

A spec maps some parameters of a custom module onto the original Transformers ones, for base weights and
for LoRA adapters (`peft_type`), in both directions; the container holds a module's specs under the
module's fully qualified name and (de)serializes them as checkpoint metadata.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from peft import PeftConfig

StateDict = dict[str, torch.Tensor]
ShardedStateDicts = dict[str, list[torch.Tensor]]
"""Adapter-free saved names to per-TP-rank tensors, in rank order."""
ParametersMetadata = dict[str, dict[str, Any]]
"""The "parameters" section of the checkpoint metadata, by in-memory name."""


def param_names(bias: bool) -> list[str]:
    """The parameters of a linear: `weight`, and `bias` when it has one."""
    return ["weight", "bias"] if bias else ["weight"]


def base_and_lora_names(module_fully_qualified_name: str, modules: Iterable[str], pn: str) -> set[str]:
    """`{fqn}.{m}.{pn}` and its `lora_A`/`lora_B` twins for every module `m` (adapter-free names)."""
    fqn = module_fully_qualified_name
    return {f"{fqn}.{m}.{part}{pn}" for m in modules for part in ("", "lora_A.", "lora_B.")}


@dataclass
class ModelWeightTransformationSpec(ABC):
    """How some parameters of a custom module map onto the original Transformers parameters.

    `peft_type` (None or "lora") selects the base-weight or the LoRA conversion; it is not a dataclass
    field, so `ModelWeightTransformationSpecs.to_metadata` serializes it by hand.
    """

    @property
    def peft_type(self) -> str | None:
        if not hasattr(self, "_peft_type"):
            self._peft_type = None
        return self._peft_type

    @peft_type.setter
    def peft_type(self, value: str | None) -> None:
        self._peft_type = value

    @abstractmethod
    def get_relevant_parameter_names(self, module_fully_qualified_name: str) -> set[str]:
        """Every (adapter-free) parameter name, original or custom, that this spec reads or writes."""

    @abstractmethod
    def guess_peft_type(self, model: nn.Module, module_fully_qualified_name: str) -> str | None:
        """ "lora" when the spec's custom layer is wrapped by a LoRA layer, else None."""

    @abstractmethod
    def adapt_peft_config(self, peft_config: PeftConfig, inplace: bool = False) -> PeftConfig:
        """The config with the original module names replaced by the custom ones."""

    @abstractmethod
    def to_original_peft_config(self, peft_config: PeftConfig, inplace: bool = False) -> PeftConfig:
        """The inverse of `adapt_peft_config`."""

    @abstractmethod
    def _adapt_state_dict(
        self,
        module_fully_qualified_name: str,
        named_parameters: dict[str, nn.Parameter],
        orig_state_dict: StateDict,
        upstanding_sharded_params: StateDict,
        inplace: bool = False,
    ) -> StateDict: ...

    @abstractmethod
    def _lora_adapt_state_dict(
        self,
        module_fully_qualified_name: str,
        named_parameters: dict[str, nn.Parameter],
        orig_state_dict: StateDict,
        upstanding_sharded_params: StateDict,
        inplace: bool = False,
    ) -> StateDict: ...

    @abstractmethod
    def _to_original_weights(
        self,
        module_fully_qualified_name: str,
        sharded_state_dicts: ShardedStateDicts,
        parameters_metadata: ParametersMetadata,
    ) -> tuple[StateDict, list[str]]: ...

    @abstractmethod
    def _lora_to_original_weights(
        self,
        module_fully_qualified_name: str,
        sharded_state_dicts: ShardedStateDicts,
        parameters_metadata: ParametersMetadata,
    ) -> tuple[StateDict, list[str]]: ...

    def _by_peft_type(self, base: Any, lora: Any) -> Any:
        if self.peft_type is None:
            return base
        if self.peft_type == "lora":
            return lora
        raise NotImplementedError(f"PEFT type {self.peft_type} is not supported by {type(self).__name__}.")

    def adapt_state_dict(
        self,
        module_fully_qualified_name: str,
        named_parameters: dict[str, nn.Parameter],
        orig_state_dict: StateDict,
        upstanding_sharded_params: StateDict,
        inplace: bool = False,
    ) -> StateDict:
        """Turn this spec's original tensors of `orig_state_dict` into this rank's custom tensors."""
        convert = self._by_peft_type(self._adapt_state_dict, self._lora_adapt_state_dict)
        return convert(
            module_fully_qualified_name,
            named_parameters,
            orig_state_dict,
            upstanding_sharded_params,
            inplace=inplace,
        )

    def to_original_weights(
        self,
        module_fully_qualified_name: str,
        sharded_state_dicts: ShardedStateDicts,
        parameters_metadata: ParametersMetadata,
    ) -> tuple[StateDict, list[str]]:
        """Original tensors rebuilt from the per-rank tensors, and the metadata names they replace.

        `sharded_state_dicts` maps adapter-free saved names to per-rank tensors in rank order;
        `parameters_metadata` is the "parameters" section of the checkpoint metadata (in-memory names).
        """
        convert = self._by_peft_type(self._to_original_weights, self._lora_to_original_weights)
        return convert(module_fully_qualified_name, sharded_state_dicts, parameters_metadata)


def _spec_class(name: str) -> type[ModelWeightTransformationSpec]:
    """A spec class of this package by name (checkpoint metadata names the class of each spec)."""
    cls = getattr(importlib.import_module(__package__), name, None)
    if not (isinstance(cls, type) and issubclass(cls, ModelWeightTransformationSpec)):
        raise ValueError(
            f"unknown transformation spec class {name!r} in checkpoint metadata. A spec class defined by a model "
            "package (such as the MoE specs of moe_expert_weights.py) is registered here when that package is "
            "imported: import the model package before consolidating its checkpoints."
        )
    return cls


def _check_spec(spec: Any) -> None:
    if not isinstance(spec, ModelWeightTransformationSpec):
        raise TypeError(f"spec must be of type ModelWeightTransformationSpec, but got {type(spec)}")


@dataclass
class ModelWeightTransformationSpecs:
    """The specs of one custom module, with the module's fully qualified name once specialized."""

    module_fully_qualified_name: str | None = None
    specs: ModelWeightTransformationSpec | list[ModelWeightTransformationSpec] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not isinstance(self.specs, list):
            self.specs = [self.specs]

    def __iter__(self) -> Iterator[ModelWeightTransformationSpec]:
        return iter(self.specs)

    def _require_name(self, action: str) -> str:
        if self.module_fully_qualified_name is None:
            raise ValueError(
                f"`module_fully_qualified_name` must be set to {action}; call "
                "specialize_transformation_specs_for_model(model) first"
            )
        return self.module_fully_qualified_name

    def add_spec(self, spec: ModelWeightTransformationSpec) -> None:
        _check_spec(spec)
        self.specs.append(spec)

    def to_metadata(self, parameters_for_current_stage: set[str] | None = None) -> dict[str, Any]:
        """`{"module_fully_qualified_name": ..., "specs": [(class name, {fields..., "peft_type"}), ...]}`."""
        fqn = self._require_name("serialize the specs")
        serialized = []
        for spec in self.specs:
            if parameters_for_current_stage is not None and not self.is_transformation_spec_relevant(
                spec, parameters_for_current_stage
            ):
                continue
            fields = asdict(spec)
            fields["peft_type"] = spec.peft_type
            serialized.append((type(spec).__name__, fields))
        return {"module_fully_qualified_name": fqn, "specs": serialized}

    @classmethod
    def from_metadata(cls, specs_metadata: dict[str, Any]) -> ModelWeightTransformationSpecs:
        """Rebuild specs from `to_metadata` output; `tp_size` comes from the metadata, not parallel state."""
        specs = cls(module_fully_qualified_name=specs_metadata["module_fully_qualified_name"])
        for class_name, fields in specs_metadata["specs"]:
            fields = dict(fields)
            peft_type = fields.pop("peft_type", None)
            spec = _spec_class(class_name)(**fields)
            spec.peft_type = peft_type
            specs.add_spec(spec)
        return specs

    def is_transformation_spec_relevant(
        self, spec: ModelWeightTransformationSpec, parameters_for_current_stage: set[str]
    ) -> bool:
        """Whether the spec touches a parameter of the current pipeline stage (adapter-free names)."""
        fqn = self._require_name("check the relevance of a spec")
        return any(name in parameters_for_current_stage for name in spec.get_relevant_parameter_names(fqn))

    def adapt_state_dict(
        self,
        named_parameters: dict[str, nn.Parameter],
        orig_state_dict: StateDict,
        upstanding_sharded_params: StateDict,
        parameters_for_current_stage: set[str],
        inplace: bool = False,
    ) -> StateDict:
        fqn = self._require_name("adapt the state dict")
        for spec in self.specs:
            _check_spec(spec)
            if not self.is_transformation_spec_relevant(spec, parameters_for_current_stage):
                continue
            orig_state_dict = spec.adapt_state_dict(
                fqn,
                named_parameters,
                orig_state_dict,
                upstanding_sharded_params=upstanding_sharded_params,
                inplace=inplace,
            )
        return orig_state_dict

    def to_original_weights(
        self,
        sharded_state_dicts: ShardedStateDicts,
        parameters_metadata: ParametersMetadata,
    ) -> tuple[StateDict, list[str]]:
        fqn = self._require_name("consolidate the weights")
        original_weights: StateDict = {}
        keys_to_remove: list[str] = []
        for spec in self.specs:
            _check_spec(spec)
            weights, to_remove = spec.to_original_weights(fqn, sharded_state_dicts, parameters_metadata)
            original_weights.update(weights)
            keys_to_remove.extend(to_remove)
        return original_weights, keys_to_remove


class CustomModule:
    """Marks a module whose parameters need transformation specs; mix it in next to `nn.Module`."""

    @property
    def specs(self) -> ModelWeightTransformationSpecs:
        if not hasattr(self, "_specs"):
            self._specs = ModelWeightTransformationSpecs()
        return self._specs

    @specs.setter
    def specs(self, specs: ModelWeightTransformationSpecs) -> None:
        if not isinstance(specs, ModelWeightTransformationSpecs):
            raise TypeError(f"specs must be of type ModelWeightTransformationSpecs, but got {type(specs)}")
        self._specs = specs
