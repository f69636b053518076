"""Definitions NXS027 (source-fused-checkpoint) inserts whole, once per file, into a model whose transformers
source computes several projections with one linear split along its output features (`q|k|v` as Phi-3's
`qkv_proj`, `gate|up` as Phi-3's and GLM's `gate_up_proj`).

The generated model holds those parts as the standard parallel layers (NxD's attention variants, the fused
`gate_up_proj`), whose own specs map separate transformers linears. `SourceFusedLinearSpec` puts the
checkpoint's fused tensor in front of them: loading splits it into its parts and hands those to the spec
that owns them (or shards them itself when no spec does), and consolidation joins the parts that spec gives
back, so the round trip returns the fused tensor bit for bit. It subclasses the released
`ModelWeightTransformationSpec`, and the spec it wraps is kept as its class name and fields so that the
host's checkpoint metadata can rebuild both.
"""

import copy
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from .. import transformations_utils
from ..transformations_utils import (
    ModelWeightTransformationSpec,
    ModelWeightTransformationSpecs,
    create_local_weight_with_padding,
    remove_adapter_name,
)


@dataclass
class SourceFusedLinearSpec(ModelWeightTransformationSpec):
    """The checkpoint's linear `source_name` (`[sum(part_sizes), in]`, the parts one after the other) <->
    the generated model's layers `part_names`, through the spec `inner` (`[class name, fields]`, empty when
    the parts are plain parallel linears).

    `groups` > 1: the parts are interleaved, the rows forming `groups` equal groups that each hold
    `part_sizes[i] // groups` rows of every part in turn (per head `[q k v]`, as GPT-NeoX's
    `query_key_value`); loading de-interleaves them and consolidation interleaves them again.

    LoRA: the checkpoint has one lora_A and one lora_B for the source linear; lora_B is split like the
    weight and every part gets a copy of lora_A. The wrapped spec merges those copies into one by their
    mean; the generated layer gets the checkpoint's lora_A itself, so that nothing is rounded.
    """

    source_name: str
    part_names: list[str]
    part_sizes: list[int]
    bias: bool
    inner: list = field(default_factory=list)
    groups: int = 1

    def _inner_spec(self) -> ModelWeightTransformationSpec | None:
        """The spec of the parts in the generated model, rebuilt from its class name and fields."""
        if not self.inner:
            return None
        class_name, fields = self.inner
        spec = getattr(transformations_utils, class_name)(**fields)
        spec.peft_type = self.peft_type
        return spec

    def _split(self, fused: torch.Tensor) -> list[torch.Tensor]:
        """The parts of a fused tensor (along its rows), de-interleaved when they come in groups."""
        if self.groups == 1:
            return [part.contiguous() for part in torch.split(fused, self.part_sizes, dim=0)]
        grouped = fused.reshape(self.groups, -1, *fused.shape[1:])
        shares = [size // self.groups for size in self.part_sizes]
        return [
            part.reshape(-1, *fused.shape[1:]).contiguous() for part in torch.split(grouped, shares, dim=1)
        ]

    def _join(self, parts: list[torch.Tensor]) -> torch.Tensor:
        """The fused tensor of its parts: the inverse of `_split`."""
        if self.groups == 1:
            return torch.cat(parts, dim=0).contiguous()
        grouped = [part.reshape(self.groups, -1, *part.shape[1:]) for part in parts]
        return torch.cat(grouped, dim=1).reshape(-1, *parts[0].shape[1:]).contiguous()

    def _param_names(self) -> list[str]:
        return ["weight", "bias"] if self.bias else ["weight"]

    def get_relevant_parameter_names(self, module_fully_qualified_name: str) -> set[str]:
        prefix = module_fully_qualified_name
        inner = self._inner_spec()
        names = set() if inner is None else inner.get_relevant_parameter_names(prefix)
        for module in [self.source_name, *self.part_names]:
            names.update(f"{prefix}.{module}.{param}" for param in self._param_names())
            names.update(f"{prefix}.{module}.{lora}.weight" for lora in ("lora_A", "lora_B"))
        return names

    # --- PEFT ---------------------------------------------------------------------------------------

    def guess_peft_type(self, model: nn.Module, module_fully_qualified_name: str) -> str | None:
        inner = self._inner_spec()
        if inner is not None:
            return inner.guess_peft_type(model, module_fully_qualified_name)
        part = model.get_submodule(f"{module_fully_qualified_name}.{self.part_names[0]}")
        return "lora" if hasattr(part, "lora_A") and hasattr(part, "lora_B") else None

    def adapt_peft_config(self, peft_config: Any, inplace: bool = False) -> Any:
        peft_config = peft_config if inplace else copy.deepcopy(peft_config)
        _rename_targets(peft_config, [self.source_name], self.part_names)
        inner = self._inner_spec()
        return peft_config if inner is None else inner.adapt_peft_config(peft_config, inplace=True)

    def to_original_peft_config(self, peft_config: Any, inplace: bool = False) -> Any:
        peft_config = peft_config if inplace else copy.deepcopy(peft_config)
        inner = self._inner_spec()
        if inner is not None:
            peft_config = inner.to_original_peft_config(peft_config, inplace=True)
        _rename_targets(peft_config, self.part_names, [self.source_name])
        return peft_config

    # --- load ---------------------------------------------------------------------------------------

    def _adapt_state_dict(
        self,
        module_fully_qualified_name: str,
        named_parameters: dict[str, nn.Parameter],
        orig_state_dict: dict[str, torch.Tensor],
        upstanding_sharded_params: dict[str, torch.Tensor],
        inplace: bool = False,
    ) -> dict[str, torch.Tensor]:
        state_dict = orig_state_dict if inplace else dict(orig_state_dict)
        prefix = module_fully_qualified_name
        inner = self._inner_spec()
        for param in self._param_names():
            source = f"{prefix}.{self.source_name}.{param}"
            if source not in state_dict:
                continue  # in another file of the checkpoint: split when that file is loaded
            parts = self._split(state_dict.pop(source))
            for name, part in zip(self.part_names, parts, strict=True):
                target = f"{prefix}.{name}.{param}"
                if inner is not None:
                    state_dict[target] = part  # the wrapped spec shards it
                else:
                    state_dict[target] = _local(part, named_parameters.get(target))
        if inner is not None:
            state_dict = inner.adapt_state_dict(
                prefix, named_parameters, state_dict, upstanding_sharded_params, inplace=True
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
        state_dict = orig_state_dict if inplace else dict(orig_state_dict)
        prefix = module_fully_qualified_name
        source_a = f"{prefix}.{self.source_name}.lora_A.weight"
        source_b = f"{prefix}.{self.source_name}.lora_B.weight"
        if source_a not in state_dict or source_b not in state_dict:
            return state_dict  # no adapter on this linear
        lora_a = state_dict.pop(source_a)
        parts_b = self._split(state_dict.pop(source_b))
        inner = self._inner_spec()
        before = set(state_dict)
        for name, part_b in zip(self.part_names, parts_b, strict=True):
            if inner is not None:
                state_dict[f"{prefix}.{name}.lora_A.weight"] = lora_a.clone()
                state_dict[f"{prefix}.{name}.lora_B.weight"] = part_b
            else:  # the parts are column-parallel: lora_A whole on every rank, lora_B sharded
                state_dict[f"{prefix}.{name}.lora_A.weight"] = lora_a.clone()
                state_dict[f"{prefix}.{name}.lora_B.weight"] = create_local_weight_with_padding(part_b, 0, 1)
        if inner is not None:
            state_dict = inner.adapt_state_dict(
                prefix, named_parameters, state_dict, upstanding_sharded_params, inplace=True
            )
            for name in set(state_dict) - before:  # the merged lora_A: the checkpoint's, not a mean
                if name.endswith(".lora_A.weight") and state_dict[name].shape == lora_a.shape:
                    state_dict[name] = lora_a.clone()
        return state_dict

    # --- consolidate --------------------------------------------------------------------------------

    def _to_original_weights(
        self,
        module_fully_qualified_name: str,
        sharded_state_dicts: dict[str, list[torch.Tensor]],
        parameters_metadata: dict[str, dict[str, Any]],
    ) -> tuple[dict[str, torch.Tensor], list[str]]:
        prefix = module_fully_qualified_name
        inner = self._inner_spec()
        if inner is not None:
            weights, removed = inner.to_original_weights(prefix, sharded_state_dicts, parameters_metadata)
        else:
            weights, removed = {}, []
            for param in self._param_names():
                for name in self.part_names:
                    key = f"{prefix}.{name}.{param}"
                    weights[key] = _full(sharded_state_dicts[key], parameters_metadata[key])
                    removed.append(key)
        for param in self._param_names():
            parts = [weights.pop(f"{prefix}.{name}.{param}") for name in self.part_names]
            weights[f"{prefix}.{self.source_name}.{param}"] = self._join(parts)
        return weights, removed

    def _lora_to_original_weights(
        self,
        module_fully_qualified_name: str,
        sharded_state_dicts: dict[str, list[torch.Tensor]],
        parameters_metadata: dict[str, dict[str, Any]],
    ) -> tuple[dict[str, torch.Tensor], list[str]]:
        prefix = module_fully_qualified_name
        inner = self._inner_spec()
        if inner is not None:
            weights, removed = inner.to_original_weights(prefix, sharded_state_dicts, parameters_metadata)
        else:
            weights, removed = {}, []
            saved = {remove_adapter_name(name): name for name in parameters_metadata}
            for name in self.part_names:
                for lora in ("lora_A", "lora_B"):
                    key = f"{prefix}.{name}.{lora}.weight"
                    if key in saved:
                        weights[key] = _full(sharded_state_dicts[key], parameters_metadata[saved[key]])
                        removed.append(saved[key])
        names_a = [f"{prefix}.{name}.lora_A.weight" for name in self.part_names]
        names_b = [f"{prefix}.{name}.lora_B.weight" for name in self.part_names]
        if not all(name in weights for name in names_a + names_b):
            return weights, removed  # no adapter on these layers
        copies = [weights.pop(name) for name in names_a]
        weights[f"{prefix}.{self.source_name}.lora_A.weight"] = copies[0]
        parts_b = [weights.pop(name) for name in names_b]
        weights[f"{prefix}.{self.source_name}.lora_B.weight"] = self._join(parts_b)
        return weights, removed


def _local(part: torch.Tensor, parameter: nn.Parameter | None) -> torch.Tensor:
    """This rank's shard of a part held by a plain parallel linear (the whole part if not parallel)."""
    if parameter is None or not getattr(parameter, "tensor_model_parallel", False):
        return part
    return create_local_weight_with_padding(part, parameter.partition_dim, parameter.partition_stride)


def _full(shards: list[torch.Tensor], metadata: dict[str, Any]) -> torch.Tensor:
    """A plain parallel linear's full tensor from its shards (in rank order)."""
    if metadata.get("tensor_model_parallel", False):
        return torch.cat(shards, dim=metadata["partition_dim"])
    return shards[0]


def _rename_targets(peft_config: Any, old: list[str], new: list[str]) -> None:
    """LoRA target modules listing every name of `old` list those of `new` instead (a pattern or
    "all-linear" stays as it is)."""
    if peft_config.peft_type != "LORA":
        raise NotImplementedError(f"SourceFusedLinearSpec supports LoRA only, not {peft_config.peft_type}")
    targets = peft_config.target_modules
    if not isinstance(targets, set | list) or not all(name in targets for name in old):
        return
    kept = [name for name in targets if name not in old]
    peft_config.target_modules = set(kept + new)


def with_source_fused_linear(
    specs: ModelWeightTransformationSpecs,
    source_name: str,
    part_names: list[str],
    part_sizes: list[int],
    bias: bool,
    groups: int = 1,
    spec_class: type[SourceFusedLinearSpec] | None = None,
) -> ModelWeightTransformationSpecs:
    """`specs` with the spec that owns the parts (if any) wrapped by a `SourceFusedLinearSpec`, or by the
    subclass `spec_class` (`groups` > 1: the parts interleaved in that many groups)."""
    spec_class = spec_class or SourceFusedLinearSpec
    wrapped = ModelWeightTransformationSpecs(module_fully_qualified_name=specs.module_fully_qualified_name)
    owner = None
    for spec in specs:
        relevant = spec.get_relevant_parameter_names("")
        if owner is None and any(f".{name}.weight" in relevant for name in part_names):
            owner = [type(spec).__name__, asdict(spec)]
            spec = spec_class(source_name, part_names, part_sizes, bias, owner, groups)
        wrapped.add_spec(spec)
    if owner is None:
        wrapped.add_spec(spec_class(source_name, part_names, part_sizes, bias, groups=groups))
    return wrapped


def register_spec(spec_class: type[ModelWeightTransformationSpec]) -> None:
    """Register a spec class in optimum-neuron's transformations_utils module, where the host looks a spec's
    class up by name to rebuild it from checkpoint metadata (the first copy stays)."""
    if not hasattr(transformations_utils, spec_class.__name__):
        setattr(transformations_utils, spec_class.__name__, spec_class)


register_spec(SourceFusedLinearSpec)
