"""Weight transformation specs: Transformers weights to a custom Neuron model's sharded weights, and back.

Reference twin of `optimum.neuron.models.training.transformations_utils` (training semantics §2), with the
same names, signatures, parameter names, sharding layouts and metadata JSON. A module whose parameters do
not map one-to-one onto the Transformers ones (a fused `gate_up_proj`, NxD's GQA `qkv_proj`) mixes in
`CustomModule` and lists `ModelWeightTransformationSpec`s; loading (`adapt_state_dict`) turns a full
Transformers state dict into this TP rank's custom one, and consolidation (`to_original_weights`) turns the
per-rank custom tensors back into Transformers tensors. Parameters no spec covers are sharded along their
`partition_dim` on load and concatenated on consolidation.

LoRA adapters follow optimum-neuron's documented lossy rule: the lora_A of a fusion is the mean of the
original lora_A tensors, and consolidation duplicates that mean back to every original linear.

Deliberate differences from the released code (ids in `conformance.backends.reference.deviations`):
ON-01 (row fusions handle LoRA), ON-02 (fused GQA lora_B is loaded under `lora_B.weight_qkv`), ON-03
(incomplete groups wait across checkpoint files, any number at a time; call
`check_no_upstanding_sharded_params` after the last file), ON-05 (uneven shards are errors) and ON-06
(`target_modules="all-linear"` is expanded to module names). Beyond those, GQA biases are supported
(q/k/v biases follow their weight rows, the replicated o_proj bias is left alone), where the released
spec fails on any bias.

PP=1 only: `model.parameters_for_current_stage` is read when the model has it, otherwise every name of
`model.state_dict()` is taken, which is what optimum-neuron returns without pipeline parallelism.
"""

from __future__ import annotations

import copy
import logging
import sys
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch
from neuronx_distributed.parallel_layers.layers import create_local_weight
from neuronx_distributed.parallel_layers.parallel_state import (
    get_tensor_model_parallel_rank,
    get_tensor_model_parallel_size,
)
from torch import nn

from .adapter_names import LORA_PATTERN, get_adapter_name, is_base_layer, remove_adapter_name
from .gqa_layout import GQAHeadLayout, gather_heads

if TYPE_CHECKING:
    from peft import PeftConfig

__all__ = [
    "LORA_PATTERN",
    "CustomModule",
    "FusedLinearsSpec",
    "GQAQKVColumnParallelLinearSpec",
    "ModelWeightTransformationSpec",
    "ModelWeightTransformationSpecs",
    "adapt_peft_config_for_model",
    "adapt_state_dict",
    "check_no_upstanding_sharded_params",
    "create_local_fused_weight",
    "create_local_weight_with_padding",
    "create_parameter_metadata",
    "get_adapter_name",
    "get_tensor_model_parallel_attributes",
    "is_base_layer",
    "remove_adapter_name",
    "specialize_transformation_specs_for_model",
    "to_original_peft_config_for_model",
    "to_original_weights",
]

logger = logging.getLogger(__name__)

_LORA_MEAN_WARNING = (
    "Taking the mean of the LoRA A weights since there is only one LoRA A weight after fusing."
)


# --- sharding primitives -------------------------------------------------------------------------------


def create_local_weight_with_padding(
    full_weight: torch.Tensor,
    partition_dim: int,
    stride: int,
    out_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """This TP rank's shard of `full_weight` along `partition_dim`, by NxD's strided rule.

    The name is optimum-neuron's; nothing is padded. A dimension that does not split into
    `tp_size * stride` equal pieces is a ValueError naming the sizes (deviation ON-05): the released
    function gives the last rank a shorter shard, which fails later with a shape mismatch.
    """
    tp_size = get_tensor_model_parallel_size()
    size = full_weight.shape[partition_dim]
    if size % (tp_size * stride):
        raise ValueError(
            f"dimension {partition_dim} of size {size} does not split into {tp_size} tensor-parallel shards "
            f"of {stride} equal pieces each (deviation ON-05: uneven shards are not padded); pick a tensor "
            "parallel size that divides it"
        )
    return create_local_weight(full_weight, partition_dim, size // tp_size, stride, out_weight=out_weight)


def create_local_fused_weight(
    tp_rank: int,
    tp_size: int,
    individual_weights: Sequence[torch.Tensor],
    partition_dim: int,
    fuse_axis: int,
    out_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """`cat_i(shard_r(W_i))` along `fuse_axis`, where shard r is chunk r of `W_i` along `partition_dim`.

    This is the layout of a fused column-parallel layer (`gate_up_proj`: rows `[gate_r ; up_r]`), the
    same one NxD's strided init gives. Every weight must split into `tp_size` equal chunks (ON-05).
    """
    pieces = []
    for index, weight in enumerate(individual_weights):
        size = weight.shape[partition_dim]
        if size % tp_size:
            raise ValueError(
                f"fused weight {index}: dimension {partition_dim} of size {size} does not split into "
                f"{tp_size} equal tensor-parallel shards (deviation ON-05)"
            )
        chunk = size // tp_size
        pieces.append(weight.narrow(partition_dim, tp_rank * chunk, chunk))
    with torch.no_grad():
        return torch.cat(pieces, dim=fuse_axis, out=out_weight)


# --- checkpoint files that split a group -----------------------------------------------------------------


def _take_group(
    state_dict: dict[str, torch.Tensor],
    upstanding_sharded_params: dict[str, torch.Tensor],
    names: Sequence[str],
) -> list[torch.Tensor] | None:
    """All tensors of `names` once every one has been seen, else None (deviation ON-03).

    Parts found in `state_dict` move to `upstanding_sharded_params`, which the caller keeps across the
    files of a multi-file checkpoint; a group completes whenever its last part arrives, independently of
    other pending groups.
    """
    for name in names:
        if name in state_dict:
            upstanding_sharded_params[name] = state_dict.pop(name)
    if all(name in upstanding_sharded_params for name in names):
        return [upstanding_sharded_params.pop(name) for name in names]
    return None


def check_no_upstanding_sharded_params(upstanding_sharded_params: dict[str, torch.Tensor]) -> None:
    """Raise if a fused or GQA group is still incomplete; call it after `adapt_state_dict` on the last file.

    `adapt_state_dict` parks the parts of a group (q/k/v of a fused GQA layer, gate/up of a fusion, the
    LoRA tensors of either) until all have been seen, so a multi-file checkpoint may split a layer anywhere
    (deviation ON-03). Whatever is left after the last file can never be loaded.
    """
    if upstanding_sharded_params:
        names = ", ".join(sorted(upstanding_sharded_params))
        raise ValueError(
            "the checkpoint ended before these parameters could be fused or sharded, because other parts "
            f"of their group were never found: {names}. Check that the checkpoint holds every projection "
            "of each fused layer (and every LoRA tensor of each targeted group)."
        )


def _shards(
    sharded_state_dicts: dict[str, list[torch.Tensor]], name: str, tp_size: int
) -> list[torch.Tensor]:
    if name not in sharded_state_dicts:
        raise KeyError(
            f"the sharded checkpoint has no {name!r}, which a transformation spec needs. An adapter "
            "checkpoint must adapt every custom layer whose spec its metadata carries (optimum-neuron "
            "0.4.5 fails the same way)."
        )
    shards = sharded_state_dicts[name]
    if len(shards) != tp_size:
        raise ValueError(f"{name}: {len(shards)} shards for a spec saved with tp_size={tp_size}")
    return shards


def _find_parameter(parameters_metadata: dict[str, Any], adapter_free_name: str) -> str | None:
    """The metadata name (with its adapter name) that is `adapter_free_name` once the adapter is removed."""
    for name in parameters_metadata:
        if name == adapter_free_name or (
            get_adapter_name(name) is not None and remove_adapter_name(name) == adapter_free_name
        ):
            return name
    return None


def _param_names(bias: bool) -> list[str]:
    return ["weight", "bias"] if bias else ["weight"]


def _reject_parameter(weight: torch.Tensor) -> None:
    if isinstance(weight, nn.Parameter):
        raise TypeError("pass the parameter's data (a plain tensor), not an nn.Parameter")


# --- PEFT configs --------------------------------------------------------------------------------------

_ALL_LINEAR = "all-linear"
_ADAPTER_CHILDREN = {"base_layer", "lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B", "lora_dropout"}


def _require_lora(peft_config: PeftConfig, spec: ModelWeightTransformationSpec) -> None:
    if peft_config.peft_type != "LORA":
        raise NotImplementedError(
            f"PEFT type {peft_config.peft_type} is not supported by {type(spec).__name__}; only LoRA is."
        )


def _fuse_target_modules(peft_config: PeftConfig, originals: list[str], fused: str, spec_name: str) -> None:
    """Replace the original linears by the fused one in `target_modules` (all of them or none are listed)."""
    targets = peft_config.target_modules
    if isinstance(targets, str):
        if targets.lower() == _ALL_LINEAR:
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


def _is_lora_wrapper(module: nn.Module) -> bool:
    """LoRA is detected by the adapter containers PEFT wrappers hold (`lora_A` and `lora_B`).

    optimum-neuron checks for its own `peft.tuners.lora.layer` wrapper classes; every LoRA wrapper has
    both containers, and this keeps the host free of any PEFT-layer import.
    """
    return hasattr(module, "lora_A") and hasattr(module, "lora_B")


# --- specs ---------------------------------------------------------------------------------------------


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
        orig_state_dict: dict[str, torch.Tensor],
        upstanding_sharded_params: dict[str, torch.Tensor],
        inplace: bool = False,
    ) -> dict[str, torch.Tensor]: ...

    @abstractmethod
    def _lora_adapt_state_dict(
        self,
        module_fully_qualified_name: str,
        named_parameters: dict[str, nn.Parameter],
        orig_state_dict: dict[str, torch.Tensor],
        upstanding_sharded_params: dict[str, torch.Tensor],
        inplace: bool = False,
    ) -> dict[str, torch.Tensor]: ...

    @abstractmethod
    def _to_original_weights(
        self,
        module_fully_qualified_name: str,
        sharded_state_dicts: dict[str, list[torch.Tensor]],
        parameters_metadata: dict[str, dict[str, Any]],
    ) -> tuple[dict[str, torch.Tensor], list[str]]: ...

    @abstractmethod
    def _lora_to_original_weights(
        self,
        module_fully_qualified_name: str,
        sharded_state_dicts: dict[str, list[torch.Tensor]],
        parameters_metadata: dict[str, dict[str, Any]],
    ) -> tuple[dict[str, torch.Tensor], list[str]]: ...

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
        orig_state_dict: dict[str, torch.Tensor],
        upstanding_sharded_params: dict[str, torch.Tensor],
        inplace: bool = False,
    ) -> dict[str, torch.Tensor]:
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
        sharded_state_dicts: dict[str, list[torch.Tensor]],
        parameters_metadata: dict[str, dict[str, Any]],
    ) -> tuple[dict[str, torch.Tensor], list[str]]:
        """Original tensors rebuilt from the per-rank tensors, and the metadata names they replace.

        `sharded_state_dicts` maps adapter-free saved names to per-rank tensors in rank order;
        `parameters_metadata` is the "parameters" section of the checkpoint metadata (in-memory names).
        """
        convert = self._by_peft_type(self._to_original_weights, self._lora_to_original_weights)
        return convert(module_fully_qualified_name, sharded_state_dicts, parameters_metadata)


def _spec_class(name: str) -> type[ModelWeightTransformationSpec]:
    cls = getattr(sys.modules[__name__], name, None)
    if not (isinstance(cls, type) and issubclass(cls, ModelWeightTransformationSpec)):
        raise ValueError(f"unknown transformation spec class {name!r} in checkpoint metadata")
    return cls


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
        if not isinstance(spec, ModelWeightTransformationSpec):
            raise TypeError(f"spec must be of type ModelWeightTransformationSpec, but got {type(spec)}")
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
        orig_state_dict: dict[str, torch.Tensor],
        upstanding_sharded_params: dict[str, torch.Tensor],
        parameters_for_current_stage: set[str],
        inplace: bool = False,
    ) -> dict[str, torch.Tensor]:
        fqn = self._require_name("adapt the state dict")
        for spec in self.specs:
            if not isinstance(spec, ModelWeightTransformationSpec):
                raise TypeError(f"spec must be of type ModelWeightTransformationSpec, but got {type(spec)}")
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
        sharded_state_dicts: dict[str, list[torch.Tensor]],
        parameters_metadata: dict[str, dict[str, Any]],
    ) -> tuple[dict[str, torch.Tensor], list[str]]:
        fqn = self._require_name("consolidate the weights")
        original_weights: dict[str, torch.Tensor] = {}
        keys_to_remove: list[str] = []
        for spec in self.specs:
            if not isinstance(spec, ModelWeightTransformationSpec):
                raise TypeError(f"spec must be of type ModelWeightTransformationSpec, but got {type(spec)}")
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


@dataclass
class FusedLinearsSpec(ModelWeightTransformationSpec):
    """Several linears fused into one along `fuse_axis` ("column"/0: outputs stacked; "row"/1: inputs).

    `original_dims` are the sizes of the linears along the fuse axis. Each rank holds
    `cat_i(shard_r(W_i))`, so the fused local output splits back into the per-linear local outputs.
    """

    fused_linear_name: str
    linear_names: list[str]
    bias: bool
    fuse_axis: Literal[0, 1, "column", "row"]
    original_dims: list[int]
    tp_size: int = field(default_factory=get_tensor_model_parallel_size)

    def __post_init__(self) -> None:
        if self.fuse_axis == "column":
            self.fuse_axis = 0
        elif self.fuse_axis == "row":
            self.fuse_axis = 1
        if self.fuse_axis not in (0, 1):
            raise ValueError(f"fuse_axis must be 0, 1, 'column' or 'row', not {self.fuse_axis!r}")
        if len(self.original_dims) != len(self.linear_names):
            raise ValueError(
                f"{len(self.linear_names)} linear names but {len(self.original_dims)} original dims"
            )

    def _local_sizes(self) -> list[int]:
        for name, dim in zip(self.linear_names, self.original_dims):
            if dim % self.tp_size:
                raise ValueError(
                    f"{name}: size {dim} does not split into {self.tp_size} equal shards (ON-05)"
                )
        return [dim // self.tp_size for dim in self.original_dims]

    def get_relevant_parameter_names(self, module_fully_qualified_name: str) -> set[str]:
        fqn = module_fully_qualified_name
        names = set()
        for pn in _param_names(self.bias):
            for linear in [self.fused_linear_name, *self.linear_names]:
                names.add(f"{fqn}.{linear}.{pn}")
                names.add(f"{fqn}.{linear}.lora_A.{pn}")
                names.add(f"{fqn}.{linear}.lora_B.{pn}")
        return names

    def guess_peft_type(self, model: nn.Module, module_fully_qualified_name: str) -> str | None:
        fused = model.get_submodule(f"{module_fully_qualified_name}.{self.fused_linear_name}")
        return "lora" if _is_lora_wrapper(fused) else None

    def adapt_peft_config(self, peft_config: PeftConfig, inplace: bool = False) -> PeftConfig:
        if not inplace:
            peft_config = copy.deepcopy(peft_config)
        _require_lora(peft_config, self)
        _fuse_target_modules(
            peft_config, list(self.linear_names), self.fused_linear_name, type(self).__name__
        )
        return peft_config

    def to_original_peft_config(self, peft_config: PeftConfig, inplace: bool = False) -> PeftConfig:
        if not inplace:
            peft_config = copy.deepcopy(peft_config)
        _require_lora(peft_config, self)
        _unfuse_target_modules(peft_config, list(self.linear_names), self.fused_linear_name)
        return peft_config

    def _partition_dim(self, named_parameters: dict[str, nn.Parameter], name: str) -> int:
        """The fused parameter's partition dim; the fuse axis (what column/row layers use) if it is absent."""
        return getattr(named_parameters.get(name), "partition_dim", self.fuse_axis)

    def _check_row_bias(self, pn: str) -> None:
        if pn == "bias" and self.fuse_axis == 1:
            raise NotImplementedError(
                f"{self.fused_linear_name}: a row fusion adds the outputs of {self.linear_names}, so one "
                "bias cannot hold their separate biases"
            )

    def _adapt_state_dict(
        self,
        module_fully_qualified_name: str,
        named_parameters: dict[str, nn.Parameter],
        orig_state_dict: dict[str, torch.Tensor],
        upstanding_sharded_params: dict[str, torch.Tensor],
        inplace: bool = False,
    ) -> dict[str, torch.Tensor]:
        fqn = module_fully_qualified_name
        state_dict = orig_state_dict if inplace else dict(orig_state_dict)
        tp_size, tp_rank = get_tensor_model_parallel_size(), get_tensor_model_parallel_rank()
        for pn in _param_names(self.bias):
            names = [f"{fqn}.{linear}.{pn}" for linear in self.linear_names]
            weights = _take_group(state_dict, upstanding_sharded_params, names)
            if weights is None:
                continue
            self._check_row_bias(pn)
            fused_name = f"{fqn}.{self.fused_linear_name}.{pn}"
            partition_dim = self._partition_dim(named_parameters, fused_name)
            state_dict[fused_name] = create_local_fused_weight(
                tp_rank, tp_size, weights, partition_dim, self.fuse_axis
            )
        return state_dict

    def _lora_adapt_state_dict(
        self,
        module_fully_qualified_name: str,
        named_parameters: dict[str, nn.Parameter],
        orig_state_dict: dict[str, torch.Tensor],
        upstanding_sharded_params: dict[str, torch.Tensor],
        inplace: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Column fusion: lora_A = mean of the lora_A (replicated), lora_B fused and sharded like the base.

        Row fusion (deviation ON-01, the mirror image): lora_A is fused along the inputs and sharded like
        the base weight (it is a row-parallel layer), lora_B = mean of the lora_B (replicated).
        """
        fqn = module_fully_qualified_name
        state_dict = orig_state_dict if inplace else dict(orig_state_dict)
        tp_size, tp_rank = get_tensor_model_parallel_size(), get_tensor_model_parallel_rank()
        fused = f"{fqn}.{self.fused_linear_name}"
        for pn in _param_names(self.bias):
            a_parts = _take_group(
                state_dict,
                upstanding_sharded_params,
                [f"{fqn}.{lin}.lora_A.{pn}" for lin in self.linear_names],
            )
            b_parts = _take_group(
                state_dict,
                upstanding_sharded_params,
                [f"{fqn}.{lin}.lora_B.{pn}" for lin in self.linear_names],
            )
            averaged, sharded = (a_parts, b_parts) if self.fuse_axis == 0 else (b_parts, a_parts)
            averaged_name, sharded_name = (
                (f"{fused}.lora_A.{pn}", f"{fused}.lora_B.{pn}")
                if self.fuse_axis == 0
                else (f"{fused}.lora_B.{pn}", f"{fused}.lora_A.{pn}")
            )
            if averaged is not None:
                logger.warning(_LORA_MEAN_WARNING)
                state_dict[averaged_name] = torch.mean(torch.stack(averaged, dim=0), dim=0)
            if sharded is not None:
                state_dict[sharded_name] = create_local_fused_weight(
                    tp_rank, tp_size, sharded, self.fuse_axis, self.fuse_axis
                )
        return state_dict

    def _unfuse(self, shards: list[torch.Tensor], partition_dim: int) -> list[torch.Tensor]:
        """Per-linear full tensors: split each rank's tensor along the fuse axis, concatenate over ranks."""
        per_rank = [torch.split(shard, self._local_sizes(), dim=self.fuse_axis) for shard in shards]
        return [
            torch.cat([pieces[index] for pieces in per_rank], dim=partition_dim)
            for index in range(len(self.linear_names))
        ]

    def _to_original_weights(
        self,
        module_fully_qualified_name: str,
        sharded_state_dicts: dict[str, list[torch.Tensor]],
        parameters_metadata: dict[str, dict[str, Any]],
    ) -> tuple[dict[str, torch.Tensor], list[str]]:
        fqn = module_fully_qualified_name
        weights: dict[str, torch.Tensor] = {}
        keys_to_remove: list[str] = []
        for pn in _param_names(self.bias):
            fused_name = f"{fqn}.{self.fused_linear_name}.{pn}"
            shards = _shards(sharded_state_dicts, fused_name, self.tp_size)
            partition_dim = parameters_metadata[fused_name].get("partition_dim", self.fuse_axis)
            for linear, tensor in zip(self.linear_names, self._unfuse(shards, partition_dim)):
                weights[f"{fqn}.{linear}.{pn}"] = tensor
            keys_to_remove.append(fused_name)
        return weights, keys_to_remove

    def _lora_to_original_weights(
        self,
        module_fully_qualified_name: str,
        sharded_state_dicts: dict[str, list[torch.Tensor]],
        parameters_metadata: dict[str, dict[str, Any]],
    ) -> tuple[dict[str, torch.Tensor], list[str]]:
        """The sharded side is unfused exactly; the averaged side (rank 0's copy) goes to every linear.

        Column fusions shard lora_B and average lora_A; row fusions the reverse (deviation ON-01).
        """
        fqn = module_fully_qualified_name
        weights: dict[str, torch.Tensor] = {}
        keys_to_remove: list[str] = []
        sharded_side, averaged_side = ("lora_B", "lora_A") if self.fuse_axis == 0 else ("lora_A", "lora_B")
        for pn in _param_names(self.bias):
            sharded_meta = _find_parameter(
                parameters_metadata, f"{fqn}.{self.fused_linear_name}.{sharded_side}.{pn}"
            )
            averaged_meta = _find_parameter(
                parameters_metadata, f"{fqn}.{self.fused_linear_name}.{averaged_side}.{pn}"
            )
            if sharded_meta is None or averaged_meta is None:
                raise ValueError(f"Could not find LoRA weights for {fqn} with param name {pn}.")
            shards = _shards(sharded_state_dicts, remove_adapter_name(sharded_meta), self.tp_size)
            partition_dim = parameters_metadata[sharded_meta].get("partition_dim", self.fuse_axis)
            for linear, tensor in zip(self.linear_names, self._unfuse(shards, partition_dim)):
                weights[f"{fqn}.{linear}.{sharded_side}.{pn}"] = tensor
            averaged = _shards(sharded_state_dicts, remove_adapter_name(averaged_meta), self.tp_size)[0]
            for linear in self.linear_names:
                weights[f"{fqn}.{linear}.{averaged_side}.{pn}"] = averaged.clone()
            keys_to_remove += [sharded_meta, averaged_meta]
        return weights, keys_to_remove


@dataclass
class GQAQKVColumnParallelLinearSpec(ModelWeightTransformationSpec):
    """Separate q/k/v projections loaded into NxD's `GQAQKVColumnParallelLinear`, plus the matching o_proj.

    Rank r holds the query heads `compute_query_indices_for_rank(...)` (rows of q, columns of o in that
    order) and rows `[r*kv_pp, (r+1)*kv_pp)` of K and V tiled `kv_size_multiplier` times; see
    `gqa_layout`. Consolidation inverts the permutation and keeps K/V replica 0.
    """

    gqa_qkv_projection_name: str
    query_projection_name: str
    key_projection_name: str
    value_projection_name: str
    output_projection_name: str
    num_attention_heads: int
    num_key_value_heads: int
    kv_size_multiplier: int
    q_output_size_per_partition: int
    kv_output_size_per_partition: int
    fuse_qkv: bool
    bias: bool
    tp_size: int = field(default_factory=get_tensor_model_parallel_size)

    def _qkv_names(self) -> list[str]:
        return [self.query_projection_name, self.key_projection_name, self.value_projection_name]

    def get_relevant_parameter_names(self, module_fully_qualified_name: str) -> set[str]:
        fqn, gqa = module_fully_qualified_name, self.gqa_qkv_projection_name
        names = set()
        for pn in _param_names(self.bias):
            for proj in [*self._qkv_names(), self.output_projection_name]:
                names |= {f"{fqn}.{proj}.{pn}", f"{fqn}.{proj}.lora_A.{pn}", f"{fqn}.{proj}.lora_B.{pn}"}
            names.add(f"{fqn}.{gqa}.lora_A.{pn}")
            if self.fuse_qkv:
                names.add(f"{fqn}.{gqa}.{pn}_qkv")
                # optimum-neuron's name for the fused lora_B, and the parameter's real one (ON-02).
                names |= {f"{fqn}.{gqa}.lora_B.{pn}", f"{fqn}.{gqa}.lora_B.{pn}_qkv"}
            else:
                for suffix in ("q", "k", "v"):
                    names |= {f"{fqn}.{gqa}.{pn}_{suffix}", f"{fqn}.{gqa}.lora_B.{pn}_{suffix}"}
        return names

    @staticmethod
    def compute_query_indices_for_rank(
        tp_size: int,
        tp_rank: int,
        num_attention_heads: int,
        num_key_value_heads: int,
        kv_size_multiplier: int,
    ) -> torch.Tensor:
        """The original query head held by each local query slot of `tp_rank` (see `gqa_layout`)."""
        layout = GQAHeadLayout(tp_size, num_attention_heads, num_key_value_heads, kv_size_multiplier)
        return layout.query_indices_for_rank(tp_rank)

    @staticmethod
    def create_kv_proj_local_weight_from_regular_weight(
        weight_data: torch.Tensor, kv_size_multiplier: int, output_size_per_partition: int
    ) -> torch.Tensor:
        """Rows `[r*L, (r+1)*L)` (`L = output_size_per_partition`) of K or V tiled `kv_size_multiplier`x."""
        _reject_parameter(weight_data)
        tp_size, tp_rank = get_tensor_model_parallel_size(), get_tensor_model_parallel_rank()
        tiled = weight_data.repeat(kv_size_multiplier, *([1] * (weight_data.dim() - 1)))
        if tiled.shape[0] != tp_size * output_size_per_partition:
            raise ValueError(
                f"K/V of {weight_data.shape[0]} rows tiled {kv_size_multiplier} times has {tiled.shape[0]} "
                f"rows, not tp_size {tp_size} x {output_size_per_partition} per partition"
            )
        return tiled.narrow(0, tp_rank * output_size_per_partition, output_size_per_partition).clone()

    @staticmethod
    def create_query_or_output_projection_local_weight_from_regular_weight(
        weight_data: torch.Tensor,
        num_attention_heads: int,
        num_key_value_heads: int,
        kv_size_multiplier: int,
        query_or_output_proj: Literal["query", "output"],
    ) -> torch.Tensor:
        """This rank's query rows (`(H*d, D) -> (H/T*d, D)`) or output columns (`(D, H*d) -> (D, H/T*d)`)."""
        if query_or_output_proj not in ("query", "output"):
            raise ValueError(
                f"query_or_output_proj must be 'query' or 'output', not {query_or_output_proj!r}"
            )
        _reject_parameter(weight_data)
        tp_size, tp_rank = get_tensor_model_parallel_size(), get_tensor_model_parallel_rank()
        layout = GQAHeadLayout(tp_size, num_attention_heads, num_key_value_heads, kv_size_multiplier)
        axis = 0 if query_or_output_proj == "query" else 1
        return gather_heads(weight_data, num_attention_heads, layout.query_indices_for_rank(tp_rank), axis)

    @staticmethod
    def create_gqa_query_or_output_projection_weight_from_full_weight(
        full_weight: torch.Tensor,
        tp_size: int,
        num_attention_heads: int,
        num_key_value_heads: int,
        kv_size_multiplier: int,
        query_or_output: Literal["query", "output"],
    ) -> torch.Tensor:
        """Undo the query permutation on the rank-ordered concatenation of local query (or output) tensors."""
        if query_or_output not in ("query", "output"):
            raise ValueError(f"query_or_output must be 'query' or 'output', not {query_or_output!r}")
        layout = GQAHeadLayout(tp_size, num_attention_heads, num_key_value_heads, kv_size_multiplier)
        axis = 0 if query_or_output == "query" else 1
        return gather_heads(full_weight, num_attention_heads, layout.inverse_query_indices(), axis)

    def guess_peft_type(self, model: nn.Module, module_fully_qualified_name: str) -> str | None:
        qkv = model.get_submodule(f"{module_fully_qualified_name}.{self.gqa_qkv_projection_name}")
        return "lora" if _is_lora_wrapper(qkv) else None

    def adapt_peft_config(self, peft_config: PeftConfig, inplace: bool = False) -> PeftConfig:
        if not inplace:
            peft_config = copy.deepcopy(peft_config)
        _require_lora(peft_config, self)
        _fuse_target_modules(
            peft_config, self._qkv_names(), self.gqa_qkv_projection_name, type(self).__name__
        )
        return peft_config

    def to_original_peft_config(self, peft_config: PeftConfig, inplace: bool = False) -> PeftConfig:
        if not inplace:
            peft_config = copy.deepcopy(peft_config)
        _require_lora(peft_config, self)
        _unfuse_target_modules(peft_config, self._qkv_names(), self.gqa_qkv_projection_name)
        return peft_config

    # Local (rank) tensors from original ones.

    def _local_query(self, weight: torch.Tensor) -> torch.Tensor:
        return self.create_query_or_output_projection_local_weight_from_regular_weight(
            weight, self.num_attention_heads, self.num_key_value_heads, self.kv_size_multiplier, "query"
        )

    def _local_output(self, weight: torch.Tensor) -> torch.Tensor:
        return self.create_query_or_output_projection_local_weight_from_regular_weight(
            weight, self.num_attention_heads, self.num_key_value_heads, self.kv_size_multiplier, "output"
        )

    def _local_kv(self, weight: torch.Tensor) -> torch.Tensor:
        return self.create_kv_proj_local_weight_from_regular_weight(
            weight, self.kv_size_multiplier, self.kv_output_size_per_partition
        )

    def _load_qkv(
        self,
        state_dict: dict[str, torch.Tensor],
        upstanding: dict[str, torch.Tensor],
        sources: list[str],
        target_prefix: str,
    ) -> None:
        """q/k/v `sources` -> `{target_prefix}_qkv` (fused, once all three are seen) or `_q`, `_k`, `_v`."""
        convert = [self._local_query, self._local_kv, self._local_kv]
        if self.fuse_qkv:
            parts = _take_group(state_dict, upstanding, sources)
            if parts is not None:
                state_dict[f"{target_prefix}_qkv"] = torch.cat([f(t) for f, t in zip(convert, parts)], dim=0)
            return
        for source, suffix, f in zip(sources, ("q", "k", "v"), convert):
            if source in state_dict:
                state_dict[f"{target_prefix}_{suffix}"] = f(state_dict.pop(source))

    def _adapt_state_dict(
        self,
        module_fully_qualified_name: str,
        named_parameters: dict[str, nn.Parameter],
        orig_state_dict: dict[str, torch.Tensor],
        upstanding_sharded_params: dict[str, torch.Tensor],
        inplace: bool = False,
    ) -> dict[str, torch.Tensor]:
        fqn = module_fully_qualified_name
        state_dict = orig_state_dict if inplace else dict(orig_state_dict)
        for pn in _param_names(self.bias):
            sources = [f"{fqn}.{proj}.{pn}" for proj in self._qkv_names()]
            self._load_qkv(
                state_dict, upstanding_sharded_params, sources, f"{fqn}.{self.gqa_qkv_projection_name}.{pn}"
            )
            output_name = f"{fqn}.{self.output_projection_name}.{pn}"
            # The o_proj bias lives on the output features: replicated, not permuted.
            if pn == "weight" and output_name in state_dict:
                state_dict[output_name] = self._local_output(state_dict[output_name])
        return state_dict

    def _lora_adapt_state_dict(
        self,
        module_fully_qualified_name: str,
        named_parameters: dict[str, nn.Parameter],
        orig_state_dict: dict[str, torch.Tensor],
        upstanding_sharded_params: dict[str, torch.Tensor],
        inplace: bool = False,
    ) -> dict[str, torch.Tensor]:
        """lora_A = mean of the q/k/v lora_A; lora_B follows the base layout; o_proj's lora_A is permuted.

        The fused lora_B goes to `qkv_proj.lora_B.{pn}_qkv`, the parameter's own name (deviation ON-02).
        """
        fqn, gqa = module_fully_qualified_name, self.gqa_qkv_projection_name
        state_dict = orig_state_dict if inplace else dict(orig_state_dict)
        for pn in _param_names(self.bias):
            lora_a = _take_group(
                state_dict,
                upstanding_sharded_params,
                [f"{fqn}.{proj}.lora_A.{pn}" for proj in self._qkv_names()],
            )
            if lora_a is not None:
                logger.warning(_LORA_MEAN_WARNING)
                state_dict[f"{fqn}.{gqa}.lora_A.{pn}"] = torch.mean(torch.stack(lora_a, dim=0), dim=0)
            sources = [f"{fqn}.{proj}.lora_B.{pn}" for proj in self._qkv_names()]
            self._load_qkv(state_dict, upstanding_sharded_params, sources, f"{fqn}.{gqa}.lora_B.{pn}")
            output_lora_a = f"{fqn}.{self.output_projection_name}.lora_A.{pn}"
            if output_lora_a in state_dict:
                state_dict[output_lora_a] = self._local_output(state_dict[output_lora_a])
        return state_dict

    # Original tensors from per-rank ones.

    def _split_fused_qkv(self, shards: list[torch.Tensor]) -> tuple[list[torch.Tensor], ...]:
        q_pp, kv_pp = self.q_output_size_per_partition, self.kv_output_size_per_partition
        for shard in shards:
            if shard.shape[0] != q_pp + 2 * kv_pp:
                raise ValueError(f"fused qkv shard of {shard.shape[0]} rows, expected {q_pp} + 2 x {kv_pp}")
        return (
            [s[:q_pp] for s in shards],
            [s[q_pp : q_pp + kv_pp] for s in shards],
            [s[q_pp + kv_pp :] for s in shards],
        )

    def _full_query(self, shards: list[torch.Tensor], partition_dim: int) -> torch.Tensor:
        full = torch.cat(shards, dim=partition_dim)
        return self.create_gqa_query_or_output_projection_weight_from_full_weight(
            full,
            self.tp_size,
            self.num_attention_heads,
            self.num_key_value_heads,
            self.kv_size_multiplier,
            "query",
        )

    def _full_output(self, shards: list[torch.Tensor], partition_dim: int) -> torch.Tensor:
        full = torch.cat(shards, dim=partition_dim)
        return self.create_gqa_query_or_output_projection_weight_from_full_weight(
            full,
            self.tp_size,
            self.num_attention_heads,
            self.num_key_value_heads,
            self.kv_size_multiplier,
            "output",
        )

    def _full_kv(self, shards: list[torch.Tensor], partition_dim: int) -> torch.Tensor:
        """Replica 0 of the tiled K or V; the other replicas are dropped, as optimum-neuron does."""
        tiled = torch.cat(shards, dim=partition_dim)
        return torch.chunk(tiled, self.kv_size_multiplier, dim=0)[0].clone()

    def _qkv_shards(
        self,
        sharded_state_dicts: dict[str, list[torch.Tensor]],
        parameters_metadata: dict[str, dict[str, Any]],
        prefix: str,
        metadata_name: Any,
    ) -> tuple[dict[str, tuple[list[torch.Tensor], int]], list[str]]:
        """`{"q"|"k"|"v": (per-rank shards, partition dim)}` for `{prefix}_qkv` or `{prefix}_q/_k/_v`.

        `metadata_name(adapter_free_name)` gives the metadata name to read and remove, or None when the
        tensor was not saved (then it is skipped).
        """
        found: dict[str, tuple[list[torch.Tensor], int]] = {}
        to_remove: list[str] = []
        if self.fuse_qkv:
            meta = metadata_name(f"{prefix}_qkv")
            if meta is not None:
                # NxD rebuilds `weight_qkv` without tensor-parallel attributes: it is column-parallel, dim 0.
                shards = _shards(sharded_state_dicts, remove_adapter_name(meta), self.tp_size)
                for key, part in zip(("q", "k", "v"), self._split_fused_qkv(shards)):
                    found[key] = (part, 0)
                to_remove.append(meta)
            return found, to_remove
        for key in ("q", "k", "v"):
            meta = metadata_name(f"{prefix}_{key}")
            if meta is not None:
                shards = _shards(sharded_state_dicts, remove_adapter_name(meta), self.tp_size)
                found[key] = (shards, parameters_metadata[meta].get("partition_dim", 0))
                to_remove.append(meta)
        return found, to_remove

    def _rebuild_qkv(
        self, found: dict[str, tuple[list[torch.Tensor], int]], original_names: dict[str, str]
    ) -> dict[str, torch.Tensor]:
        rebuild = {"q": self._full_query, "k": self._full_kv, "v": self._full_kv}
        return {original_names[key]: rebuild[key](shards, dim) for key, (shards, dim) in found.items()}

    def _to_original_weights(
        self,
        module_fully_qualified_name: str,
        sharded_state_dicts: dict[str, list[torch.Tensor]],
        parameters_metadata: dict[str, dict[str, Any]],
    ) -> tuple[dict[str, torch.Tensor], list[str]]:
        fqn, gqa = module_fully_qualified_name, self.gqa_qkv_projection_name
        weights: dict[str, torch.Tensor] = {}
        keys_to_remove: list[str] = []
        for pn in _param_names(self.bias):
            found, to_remove = self._qkv_shards(
                sharded_state_dicts, parameters_metadata, f"{fqn}.{gqa}.{pn}", lambda name: name
            )
            originals = dict(zip(("q", "k", "v"), (f"{fqn}.{proj}.{pn}" for proj in self._qkv_names())))
            weights.update(self._rebuild_qkv(found, originals))
            keys_to_remove += to_remove
            if pn == "weight":
                output_name = f"{fqn}.{self.output_projection_name}.{pn}"
                shards = _shards(sharded_state_dicts, output_name, self.tp_size)
                weights[output_name] = self._full_output(
                    shards, parameters_metadata[output_name]["partition_dim"]
                )
        return weights, keys_to_remove

    def _lora_to_original_weights(
        self,
        module_fully_qualified_name: str,
        sharded_state_dicts: dict[str, list[torch.Tensor]],
        parameters_metadata: dict[str, dict[str, Any]],
    ) -> tuple[dict[str, torch.Tensor], list[str]]:
        fqn, gqa = module_fully_qualified_name, self.gqa_qkv_projection_name
        weights: dict[str, torch.Tensor] = {}
        keys_to_remove: list[str] = []

        def metadata_name(adapter_free_name: str) -> str | None:
            return _find_parameter(parameters_metadata, adapter_free_name)

        for pn in _param_names(self.bias):
            found, to_remove = self._qkv_shards(
                sharded_state_dicts, parameters_metadata, f"{fqn}.{gqa}.lora_B.{pn}", metadata_name
            )
            originals = dict(
                zip(("q", "k", "v"), (f"{fqn}.{proj}.lora_B.{pn}" for proj in self._qkv_names()))
            )
            keys_to_remove += to_remove
            lora_a_meta = metadata_name(f"{fqn}.{gqa}.lora_A.{pn}")
            if lora_a_meta is not None:
                lora_a = _shards(sharded_state_dicts, remove_adapter_name(lora_a_meta), self.tp_size)[0]
                for proj in self._qkv_names():
                    weights[f"{fqn}.{proj}.lora_A.{pn}"] = lora_a.clone()
                keys_to_remove.append(lora_a_meta)
            weights.update(self._rebuild_qkv(found, originals))
            output_lora_a = f"{fqn}.{self.output_projection_name}.lora_A.{pn}"
            output_meta = metadata_name(output_lora_a)
            if output_meta is not None:
                shards = _shards(sharded_state_dicts, output_lora_a, self.tp_size)
                weights[output_lora_a] = self._full_output(
                    shards, parameters_metadata[output_meta]["partition_dim"]
                )
                keys_to_remove.append(output_meta)
        return weights, keys_to_remove


# --- whole-model helpers -------------------------------------------------------------------------------


def _parameters_for_current_stage(model: nn.Module) -> set[str]:
    names = getattr(model, "parameters_for_current_stage", None)
    return set(model.state_dict().keys()) if names is None else names


def _custom_modules(model: nn.Module) -> Iterator[tuple[str, CustomModule]]:
    for name, module in model.named_modules():
        if isinstance(module, CustomModule):
            yield name, module


def specialize_transformation_specs_for_model(model: nn.Module) -> None:
    """Name every custom module's specs after its path in `model` and guess their PEFT type.

    Names are relative to the object passed in (`model.layers.0.mlp`, or
    `base_model.model.model.layers.0.mlp` for a PEFT model); call it again after wrapping.
    """
    for name, module in _custom_modules(model):
        module.specs.module_fully_qualified_name = name
        for spec in module.specs:
            spec.peft_type = spec.guess_peft_type(model, name)


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


def _expand_all_linear(model: nn.Module, peft_config: PeftConfig) -> None:
    targets = getattr(peft_config, "target_modules", None)
    if isinstance(targets, str) and targets.lower() == _ALL_LINEAR:
        peft_config.target_modules = _all_linear_module_names(model)


def _each_config(peft_config: PeftConfig | dict[str, PeftConfig]) -> list[PeftConfig]:
    return list(peft_config.values()) if isinstance(peft_config, dict) else [peft_config]


def adapt_peft_config_for_model(
    model: nn.Module, peft_config: PeftConfig | dict[str, PeftConfig], inplace: bool = False
) -> PeftConfig | dict[str, PeftConfig]:
    """The config(s) with target modules renamed for the custom model (one deep copy unless `inplace`).

    `target_modules="all-linear"` is first expanded to the custom model's linear layer names (ON-06).
    """
    adapted = peft_config if inplace else copy.deepcopy(peft_config)
    for config in _each_config(adapted):
        _expand_all_linear(model, config)
    for _, module in _custom_modules(model):
        for spec in module.specs:
            for config in _each_config(adapted):
                spec.adapt_peft_config(config, inplace=True)
    return adapted


def to_original_peft_config_for_model(
    model: nn.Module, peft_config: PeftConfig | dict[str, PeftConfig], inplace: bool = False
) -> PeftConfig | dict[str, PeftConfig]:
    """The inverse of `adapt_peft_config_for_model`: target modules named as in the Transformers model."""
    restored = peft_config if inplace else copy.deepcopy(peft_config)
    for _, module in _custom_modules(model):
        for spec in module.specs:
            for config in _each_config(restored):
                spec.to_original_peft_config(config, inplace=True)
    return restored


def adapt_state_dict(
    model: nn.Module,
    state_dict: dict[str, torch.Tensor],
    upstanding_sharded_params: dict[str, torch.Tensor],
    inplace: bool = False,
    **peft_kwargs: Any,
) -> dict[str, torch.Tensor]:
    """This TP rank's custom state dict from one file of a Transformers (or PEFT adapter) checkpoint.

    The specs of every custom module convert their tensors; then every other tensor-parallel parameter is
    sharded along its `partition_dim` (with its stride), and non-parallel ones stay full. Keys of
    parameters outside the current stage and of PEFT base layers are dropped. With `adapter_name=...`,
    only that adapter's parameters are sharded.

    Call it once per checkpoint file with the same `upstanding_sharded_params` dict, then
    `check_no_upstanding_sharded_params(upstanding_sharded_params)` after the last one (ON-03).
    """
    stage = _parameters_for_current_stage(model)
    named_parameters = {name: p for name, p in model.named_parameters() if name in stage}
    incoming = dict(state_dict)
    stage_without_adapter = {remove_adapter_name(name) for name in stage}
    for _, module in _custom_modules(model):
        state_dict = module.specs.adapt_state_dict(
            named_parameters,
            state_dict,
            upstanding_sharded_params=upstanding_sharded_params,
            parameters_for_current_stage=stage_without_adapter,
            inplace=inplace,
        )
    # A spec produced these entries (new keys, or a new tensor under an incoming key): already local.
    converted = {key for key, tensor in state_dict.items() if incoming.get(key) is not tensor}

    adapter_name = peft_kwargs.pop("adapter_name", None)
    for name, param in model.named_parameters():
        key = remove_adapter_name(name)
        if name not in stage or is_base_layer(key):
            state_dict.pop(key, None)
            continue
        if adapter_name is not None and adapter_name not in name:
            continue
        if key in converted or not getattr(param, "tensor_model_parallel", False):
            continue
        if param.partition_dim not in (0, 1):
            raise ValueError(f"{name}: partition_dim {param.partition_dim}; only 0 and 1 are supported")
        if key not in state_dict:
            continue
        try:
            state_dict[key] = create_local_weight_with_padding(
                state_dict.pop(key), param.partition_dim, param.partition_stride
            )
        except ValueError as error:
            raise ValueError(f"{key}: {error}") from error
    return state_dict


def to_original_weights(
    transformations_specs: list[ModelWeightTransformationSpecs],
    sharded_state_dicts: dict[str, list[torch.Tensor]],
    parameters_metadata: dict[str, dict[str, Any]],
    **peft_kwargs: Any,
) -> dict[str, torch.Tensor]:
    """One Transformers-named state dict from the per-rank tensors of a checkpoint (consolidation).

    `sharded_state_dicts` maps saved (adapter-free) names to per-TP-rank tensors in rank order and
    `parameters_metadata` is the metadata's "parameters" section. With `adapter_name=...`, only base-layer
    entries and that adapter's entries of the metadata are considered. Tensors no spec covers are
    concatenated along their `partition_dim` when tensor-parallel, else rank 0's copy is taken; their
    `partition_stride` is ignored, as in optimum-neuron (every strided parameter has a spec).
    """
    adapter_name = peft_kwargs.pop("adapter_name", None)
    if adapter_name is not None:
        parameters_metadata = {
            name: meta
            for name, meta in parameters_metadata.items()
            if is_base_layer(name) or get_adapter_name(name) == adapter_name
        }
    consolidated: dict[str, torch.Tensor] = {}
    to_remove: set[str] = set()
    for specs in transformations_specs:
        weights, keys = specs.to_original_weights(sharded_state_dicts, parameters_metadata)
        consolidated.update(weights)
        to_remove.update(keys)
    for name, meta in parameters_metadata.items():
        key = remove_adapter_name(name)
        if key in consolidated or name in to_remove or key not in sharded_state_dicts:
            continue
        shards = sharded_state_dicts[key]
        if meta["tensor_model_parallel"]:
            if meta.get("partition_stride", 1) != 1 and len(shards) > 1:
                logger.warning(
                    "%s has partition_stride %s but no transformation spec: concatenated as if stride 1, "
                    "as optimum-neuron does",
                    key,
                    meta["partition_stride"],
                )
            consolidated[key] = torch.cat(shards, dim=meta["partition_dim"])
        else:
            consolidated[key] = shards[0]
    return consolidated


def get_tensor_model_parallel_attributes(tensor: torch.Tensor) -> dict[str, Any]:
    """The four tensor-parallel attributes checkpoints record, or {} for an untagged tensor."""
    if not hasattr(tensor, "tensor_model_parallel"):
        return {}
    return {
        "tensor_model_parallel": tensor.tensor_model_parallel,
        "partition_dim": tensor.partition_dim,
        "partition_stride": tensor.partition_stride,
        "num_partitions": tensor.num_partitions,
    }


def create_parameter_metadata(model: nn.Module) -> dict[str, Any]:
    """The metadata saved next to the shards (`mp_metadata_pp_rank_{p}.json`), which consolidation needs.

    `{"parameters": {in-memory name: tensor-parallel attributes or {"tensor_model_parallel": False}},
    "model_weight_transformation_specs": [specs.to_metadata(...) for every custom module]}`; call
    `specialize_transformation_specs_for_model(model)` first so the specs are named.
    """
    stage = _parameters_for_current_stage(model)
    parameters: dict[str, dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if name not in stage:
            continue
        if getattr(param, "tensor_model_parallel", False):
            parameters[name] = get_tensor_model_parallel_attributes(param)
        else:
            parameters[name] = {"tensor_model_parallel": False}
    stage_without_adapter = {remove_adapter_name(name) for name in stage}
    specs = [
        module.specs.to_metadata(parameters_for_current_stage=stage_without_adapter)
        for _, module in _custom_modules(model)
    ]
    return {"parameters": parameters, "model_weight_transformation_specs": specs}
