"""Weight transformation specs of a mixture-of-experts block built on NxD's `MoE`.

transformers keeps a sparse MoE block's weights per expert; NxD's `MoE` holds them in two 3-D tensors
sharded over tensor parallelism (TP, the intermediate dimension) and expert parallelism (EP, the experts),
and names its router and shared experts differently. These specs map one onto the other and back, bit for
bit, when a checkpoint is loaded (`adapt_state_dict`) and when saved shards are consolidated
(`to_original_weights`), under optimum-neuron's released host code.

- `ExpertMLPsSpec`: the routed experts. Sources: a `nn.ModuleList` of MLPs (Mixtral's `experts.{e}.w1/w3/w2`,
  Qwen-MoE's `experts.{e}.gate_proj/up_proj/down_proj`), optionally without a gate, or packed 3-D parameters
  `gate_up_proj` `[E, H, 2I]` (gate and up concatenated, as Llama 4 and Qwen3-VL-MoE, or interleaved, as
  gpt-oss) and `down_proj` `[E, I, H]`. Target: `expert_mlps.mlp_op.gate_up_proj.weight`
  `[E/EP, H, 2I/TP]` (`[gate columns of the rank | up columns of the rank]`, partition dim 2, stride 2) and
  `expert_mlps.mlp_op.down_proj.weight` `[E/EP, I/TP, H]` (partition dim 1), or `up_proj.weight`
  `[E/EP, H, I/TP]` without a gate. NxD multiplies `x @ W`, so a transformers `nn.Linear` weight is
  transposed. EP rank j holds experts `j E/EP ... (j+1) E/EP - 1`.
- `RenamedParametersSpec`: parameters that only move, such as the router (`gate.weight` ->
  `router.linear_router.weight`) and the shared experts (`shared_expert.gate_proj.weight` ->
  `shared_experts.gate_proj.weight`, with NxD's `SharedExperts(fused_gate_up_projection=False)`), sharded
  along the custom parameter's own `partition_dim` and stride.

Attach them like any spec, to a module that mixes in `CustomModule`, with names relative to it::

    class MixtralSparseMoeBlock(MoE, CustomModule):
        def __init__(self, config, trn_config):
            super().__init__(router, expert_mlps, ...)
            self.specs = ModelWeightTransformationSpecs(specs=[
                RenamedParametersSpec({"router.linear_router.weight": "gate.weight"}),
                ExpertMLPsSpec(num_experts=config.num_local_experts, gate_proj_name="w1",
                               up_proj_name="w3", down_proj_name="w2"),
            ])

Saved shards: every (EP, TP) rank saves its own file (NxD's `dp_rank_00_ep_rank_XX_tp_rank_XX_pp_rank_XX.pt`
with EP > 1). Consolidation hands a spec, for each expert-parallel name, the tensors of every file in
(EP rank, TP rank) order; for any other name it may hand the tensors of every file too (optimum-neuron
0.4.5) or of EP rank 0 only, so `RenamedParametersSpec` reads the first `num_partitions` of them.

LoRA: adapters on other modules (the attention projections) load and consolidate untouched, while a PEFT
config that would target the experts, the router or the shared experts is refused with a ValueError.

optimum-neuron's `ModelWeightTransformationSpecs.from_metadata` looks spec classes up by name in its
`transformations_utils` module, so importing this module registers both classes there; import the model
package before consolidating its checkpoints.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Any

import torch
from neuronx_distributed.parallel_layers.parallel_state import (
    get_expert_model_parallel_rank,
    get_expert_model_parallel_size,
    get_tensor_model_parallel_rank,
    get_tensor_model_parallel_size,
)
from torch import nn

from .. import transformations_utils
from ..transformations_utils import ModelWeightTransformationSpec, create_local_weight_with_padding


PER_EXPERT = "per_expert"
PACKED_CONCATENATED = "packed_concatenated"
PACKED_INTERLEAVED = "packed_interleaved"
LAYOUTS = (PER_EXPERT, PACKED_CONCATENATED, PACKED_INTERLEAVED)

StateDict = dict[str, torch.Tensor]


def _only_lora(peft_config: Any, inplace: bool, spec: ModelWeightTransformationSpec) -> Any:
    if not inplace:
        peft_config = copy.deepcopy(peft_config)
    if peft_config.peft_type != "LORA":
        raise NotImplementedError(
            f"PEFT type {peft_config.peft_type} is not supported by {type(spec).__name__}; only LoRA is."
        )
    return peft_config


def _targeted(target_modules: Any, module_names: list[str], prefix: str | None) -> list[str]:
    """The module names (relative to a spec's module at `prefix`) that PEFT `target_modules` would adapt.

    As PEFT matches them: a list names modules by their last components; a string is a regular expression
    over full names (searched in the relative names when the spec's module is not known yet), and
    "all-linear" adapts every linear layer.
    """
    if target_modules is None:
        return []
    if isinstance(target_modules, str):
        if target_modules.lower() == "all-linear":
            return list(module_names)
        if prefix is None:
            return [name for name in module_names if re.search(target_modules, name)]
        return [name for name in module_names if re.fullmatch(target_modules, f"{prefix}.{name}")]
    hits = []
    for name in module_names:
        for target in target_modules:
            if name == target or name.endswith(f".{target}") or target.endswith(f".{name}"):
                hits.append(name)
                break
    return hits


def _is_lora_wrapped(model: nn.Module, module_name: str) -> bool:
    """Whether PEFT wrapped this module in a LoRA layer (every LoRA wrapper holds `lora_A` and `lora_B`)."""
    module = model.get_submodule(module_name)
    return hasattr(module, "lora_A") and hasattr(module, "lora_B")


class LoRARefusingSpec(ModelWeightTransformationSpec):
    """The PEFT side of a spec whose modules take no LoRA adapter: a config targeting them is refused.

    Subclasses name the modules a config could target (`_module_names`, relative to the spec's module) and
    the custom ones a LoRA wrapper would replace (`_custom_module_names`). Adapters on other modules pass
    by: the spec's base-weight methods find none of their own names in an adapter checkpoint.
    """

    _refused_what = "these modules"

    def _module_names(self) -> list[str]:
        raise NotImplementedError

    def _custom_module_names(self) -> list[str]:
        raise NotImplementedError

    def guess_peft_type(self, model: nn.Module, module_fully_qualified_name: str) -> str | None:
        # Specialising the model calls this with the spec's module name, which makes regular-expression
        # targets exact in `adapt_peft_config`.
        self._module_fully_qualified_name = module_fully_qualified_name
        wrapped = any(
            _is_lora_wrapped(model, f"{module_fully_qualified_name}.{name}") for name in self._custom_module_names()
        )
        return "lora" if wrapped else None

    def adapt_peft_config(self, peft_config: Any, inplace: bool = False) -> Any:
        peft_config = _only_lora(peft_config, inplace, self)
        prefix = getattr(self, "_module_fully_qualified_name", None)
        hits = _targeted(peft_config.target_modules, self._module_names(), prefix)
        if hits:
            raise ValueError(
                f"{type(self).__name__}: LoRA on {self._refused_what} is not supported, but target_modules="
                f"{peft_config.target_modules!r} adapts {', '.join(sorted(hits))}. Target the attention "
                "projections by name instead, e.g. target_modules=['q_proj', 'k_proj', 'v_proj', 'o_proj']."
            )
        return peft_config

    def to_original_peft_config(self, peft_config: Any, inplace: bool = False) -> Any:
        return _only_lora(peft_config, inplace, self)

    def _lora_adapt_state_dict(self, module_fully_qualified_name: str, *args: Any, **kwargs: Any) -> StateDict:
        names = ", ".join(f"{module_fully_qualified_name}.{name}" for name in self._custom_module_names())
        raise NotImplementedError(
            f"LoRA adapters on {self._refused_what} ({names}) are not supported; adapt the attention projections only"
        )

    def _lora_to_original_weights(self, module_fully_qualified_name: str, *args: Any, **kwargs: Any) -> Any:
        return self._lora_adapt_state_dict(module_fully_qualified_name)


def _unshard(shards: list[torch.Tensor], dim: int, stride: int) -> torch.Tensor:
    """The full tensor whose NxD shards (`create_local_weight` with `stride`) are `shards`, in rank order.

    Split into `len(shards) * stride` pieces along `dim`, piece `r + j * T` is the j-th piece of rank r.
    """
    if stride == 1:
        return torch.cat(shards, dim=dim)
    pieces = [shard.chunk(stride, dim=dim) for shard in shards]
    return torch.cat([pieces[r][j] for j in range(stride) for r in range(len(shards))], dim=dim)


@dataclass
class ExpertMLPsSpec(LoRARefusingSpec):
    """transformers' routed experts <-> NxD's expert-fused `gate_up_proj` / `down_proj` (module docstring).

    `layout` is "per_expert" (`{experts_name}.{e}.{gate_proj_name|up_proj_name|down_proj_name}.weight`,
    `nn.Linear` weights; `gate_proj_name=None` for experts without a gate), "packed_concatenated" or
    "packed_interleaved" (`{experts_name}.{gate_up_proj_name}` `[E, H, 2I]`, gate then up along the last
    dimension or alternating, and `{experts_name}.{down_proj_name}` `[E, I, H]`; with `transposed`, stored
    `[E, 2I, H]` and `[E, H, I]`, as `F.linear` applies them; an empty `experts_name` for packed names that are
    paths of their own, e.g. `input_linear.weight`). `expert_mlps_name` is
    the path of NxD's `Experts` module (`MoE.expert_mlps.mlp_op`). All names are relative to the module
    holding the spec. `tp_size` and `ep_size` default to the live model-parallel sizes.
    """

    num_experts: int
    experts_name: str = "experts"
    layout: str = PER_EXPERT
    gate_proj_name: str | None = "gate_proj"
    up_proj_name: str = "up_proj"
    down_proj_name: str = "down_proj"
    gate_up_proj_name: str = "gate_up_proj"
    transposed: bool = False
    expert_mlps_name: str = "expert_mlps.mlp_op"
    tp_size: int = field(default_factory=get_tensor_model_parallel_size)
    ep_size: int = field(default_factory=get_expert_model_parallel_size)

    _refused_what = "the routed experts"

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"ExpertMLPsSpec: layout must be one of {LAYOUTS}, not {self.layout!r}")
        if self.transposed and self.layout == PER_EXPERT:
            raise ValueError(
                "ExpertMLPsSpec: `transposed` describes packed layouts; per-expert weights are nn.Linear's"
            )
        if self.num_experts % self.ep_size:
            raise ValueError(
                f"ExpertMLPsSpec: {self.num_experts} experts do not split over {self.ep_size} expert-parallel "
                "ranks; pick an expert parallel size that divides the number of experts"
            )

    # --- names ---------------------------------------------------------------------------------------

    @property
    def glu(self) -> bool:
        return self.layout != PER_EXPERT or self.gate_proj_name is not None

    def _custom_names(self, fqn: str) -> tuple[str, str]:
        """(input projection, down projection) parameter names of NxD's `Experts`."""
        prefix = f"{fqn}.{self.expert_mlps_name}"
        first = "gate_up_proj" if self.glu else "up_proj"
        return f"{prefix}.{first}.weight", f"{prefix}.down_proj.weight"

    def _expert_linears(self) -> list[str]:
        return [name for name in (self.gate_proj_name, self.up_proj_name, self.down_proj_name) if name]

    def _original_names(self, fqn: str, expert: int | None = None) -> list[str]:
        """The checkpoint names of one expert (per-expert layout) or of the packed tensors."""
        if self.layout != PER_EXPERT:
            return [f"{fqn}.{name}" for name in self._packed_names()]
        prefix = f"{fqn}.{self.experts_name}"
        experts = range(self.num_experts) if expert is None else [expert]
        return [f"{prefix}.{e}.{linear}.weight" for e in experts for linear in self._expert_linears()]

    def _packed_names(self) -> list[str]:
        """The packed gate | up and down parameters' names, relative to the spec's module."""
        prefix = f"{self.experts_name}." if self.experts_name else ""
        return [f"{prefix}{self.gate_up_proj_name}", f"{prefix}{self.down_proj_name}"]

    def _module_names(self) -> list[str]:
        """Modules a PEFT config could target: NxD's expert linears and transformers' experts."""
        nxd = [f"{self.expert_mlps_name}.{name}" for name in ("gate_up_proj", "up_proj", "down_proj")]
        if self.layout != PER_EXPERT:
            return [*nxd, *sorted({name.rpartition(".")[0] for name in self._packed_names()} - {""})]
        per_expert = [
            f"{self.experts_name}.{e}.{linear}" for e in range(self.num_experts) for linear in self._expert_linears()
        ]
        return [*nxd, self.experts_name, *per_expert]

    def get_relevant_parameter_names(self, module_fully_qualified_name: str) -> set[str]:
        return {
            *self._custom_names(module_fully_qualified_name),
            *self._original_names(module_fully_qualified_name),
        }

    def _custom_module_names(self) -> list[str]:
        linears = ("gate_up_proj", "down_proj") if self.glu else ("up_proj", "down_proj")
        return [f"{self.expert_mlps_name}.{name}" for name in linears]

    # --- load ----------------------------------------------------------------------------------------

    def _check_live_sizes(self) -> tuple[int, int]:
        """(TP rank, EP rank) of this process, once the live sizes are checked against the spec's."""
        live = (get_tensor_model_parallel_size(), get_expert_model_parallel_size())
        if live != (self.tp_size, self.ep_size):
            raise ValueError(
                f"ExpertMLPsSpec was built for tensor parallel size {self.tp_size} and expert parallel size "
                f"{self.ep_size}, but the model-parallel groups have sizes {live[0]} and {live[1]}"
            )
        return get_tensor_model_parallel_rank(), get_expert_model_parallel_rank()

    def _full_expert_weights(
        self, tensors: list[torch.Tensor]
    ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """(gate, up, down) of the given experts in NxD's orientation: `[e, H, I]`, `[e, H, I]`, `[e, I, H]`."""
        if self.layout == PER_EXPERT:
            per_expert = len(self._expert_linears())
            columns = [torch.stack([t.T for t in tensors[i::per_expert]]) for i in range(per_expert)]
            gate = columns[0] if self.glu else None
            return gate, columns[-2], columns[-1]
        gate_up, down = tensors
        if self.transposed:
            gate_up, down = gate_up.transpose(1, 2), down.transpose(1, 2)
        if gate_up.shape[-1] % 2:
            raise ValueError(
                f"ExpertMLPsSpec: a packed gate/up projection of shape {tuple(gate_up.shape)} is not even"
            )
        if self.layout == PACKED_INTERLEAVED:
            return gate_up[..., 0::2], gate_up[..., 1::2], down
        gate, up = gate_up.chunk(2, dim=-1)
        return gate, up, down

    def _local_weights(
        self, tensors: list[torch.Tensor], tp_rank: int, local_experts: slice
    ) -> tuple[torch.Tensor, torch.Tensor]:
        gate, up, down = self._full_expert_weights(tensors)
        if self.layout != PER_EXPERT:
            gate, up, down = gate[local_experts], up[local_experts], down[local_experts]
        intermediate = up.shape[-1]
        if intermediate % self.tp_size:
            raise ValueError(
                f"ExpertMLPsSpec: the experts' intermediate size {intermediate} does not split over "
                f"{self.tp_size} tensor-parallel ranks; pick a tensor parallel size that divides it"
            )
        width = intermediate // self.tp_size
        columns = slice(tp_rank * width, (tp_rank + 1) * width)
        first = up[..., columns] if gate is None else torch.cat([gate[..., columns], up[..., columns]], dim=-1)
        return first.contiguous(), down[:, columns, :].contiguous()

    def _adapt_state_dict(
        self,
        module_fully_qualified_name: str,
        named_parameters: dict[str, nn.Parameter],
        orig_state_dict: StateDict,
        upstanding_sharded_params: StateDict,
        inplace: bool = False,
    ) -> StateDict:
        """This rank's two expert tensors, once every weight of its experts has been seen.

        Weights of other ranks' experts are dropped; the rank's own wait in `upstanding_sharded_params`
        until the last of them arrives (a checkpoint may spread a layer's experts over several files).
        """
        state_dict = orig_state_dict if inplace else dict(orig_state_dict)
        fqn = module_fully_qualified_name
        if not any(name in state_dict for name in self._original_names(fqn)):
            return state_dict
        tp_rank, ep_rank = self._check_live_sizes()
        per_rank = self.num_experts // self.ep_size
        local_experts = slice(ep_rank * per_rank, (ep_rank + 1) * per_rank)
        if self.layout == PER_EXPERT:
            needed = [n for e in range(local_experts.start, local_experts.stop) for n in self._original_names(fqn, e)]
            for name in set(self._original_names(fqn)) - set(needed):
                state_dict.pop(name, None)
        else:
            needed = self._original_names(fqn)
        for name in needed:
            if name in state_dict:
                upstanding_sharded_params[name] = state_dict.pop(name)
        if not all(name in upstanding_sharded_params for name in needed):
            return state_dict
        tensors = [upstanding_sharded_params.pop(name) for name in needed]
        first, down = self._local_weights(tensors, tp_rank, local_experts)
        for name, tensor in zip(self._custom_names(fqn), (first, down), strict=True):
            param = named_parameters.get(name)
            if param is not None and tuple(param.shape) != tuple(tensor.shape):
                raise ValueError(
                    f"{name}: the checkpoint's experts give a shard of shape {tuple(tensor.shape)}, but the "
                    f"parameter has shape {tuple(param.shape)}; check num_experts and the expert weight names"
                )
            state_dict[name] = tensor
        return state_dict

    # --- consolidate ---------------------------------------------------------------------------------

    def _gather(self, shards: list[torch.Tensor], name: str, tp_dim: int, split: bool) -> list[torch.Tensor]:
        """Full tensors over every expert from (EP, TP)-ordered shards: [gate, up] if `split`, else [whole]."""
        if len(shards) != self.tp_size * self.ep_size:
            raise ValueError(
                f"{name}: {len(shards)} saved shards for experts saved with tensor parallel size {self.tp_size} "
                f"and expert parallel size {self.ep_size}"
            )
        parts = [shard.chunk(2, dim=tp_dim) if split else (shard,) for shard in shards]
        gathered = []
        for part in range(len(parts[0])):
            per_ep_rank = [
                torch.cat([parts[j * self.tp_size + r][part] for r in range(self.tp_size)], dim=tp_dim)
                for j in range(self.ep_size)
            ]
            gathered.append(torch.cat(per_ep_rank, dim=0))
        return gathered

    def _to_original_weights(
        self,
        module_fully_qualified_name: str,
        sharded_state_dicts: dict[str, list[torch.Tensor]],
        parameters_metadata: dict[str, dict[str, Any]],
    ) -> tuple[StateDict, list[str]]:
        """transformers' expert weights from every rank's shards.

        Nothing when the metadata does not list the experts (an adapter's consolidation only lists its own
        parameters and the base layers).
        """
        fqn = module_fully_qualified_name
        first_name, down_name = self._custom_names(fqn)
        if first_name not in parameters_metadata:
            return {}, []
        for name in (first_name, down_name):
            if name not in sharded_state_dicts:
                raise KeyError(f"the sharded checkpoint has no {name!r}, which ExpertMLPsSpec needs")
        first = self._gather(sharded_state_dicts[first_name], first_name, 2, split=self.glu)
        (down,) = self._gather(sharded_state_dicts[down_name], down_name, 1, split=False)
        if self.layout != PER_EXPERT:
            if self.layout == PACKED_INTERLEAVED:
                gate_up = torch.stack(first, dim=-1).flatten(start_dim=-2)
            else:
                gate_up = torch.cat(first, dim=-1)
            if self.transposed:
                gate_up, down = gate_up.transpose(1, 2).contiguous(), down.transpose(1, 2).contiguous()
            return dict(zip(self._original_names(fqn), (gate_up, down), strict=True)), [first_name, down_name]
        weights: StateDict = {}
        for e in range(self.num_experts):
            linears = [*(w[e].T.contiguous() for w in first), down[e].T.contiguous()]
            weights.update(zip(self._original_names(fqn, e), linears, strict=True))
        return weights, [first_name, down_name]


@dataclass
class RenamedParametersSpec(LoRARefusingSpec):
    """Parameters held under another name, e.g. `{"router.linear_router.weight": "gate.weight"}`.

    `custom_to_original` maps each custom parameter name to its transformers name, both relative to the
    module holding the spec. A tensor-parallel custom parameter is sharded (and gathered back) along its
    own `partition_dim` with its stride; any other is kept whole.
    """

    custom_to_original: dict[str, str]

    def _module_names(self) -> list[str]:
        names = [*self.custom_to_original, *self.custom_to_original.values()]
        return sorted({name.rpartition(".")[0] for name in names if "." in name})

    def get_relevant_parameter_names(self, module_fully_qualified_name: str) -> set[str]:
        fqn = module_fully_qualified_name
        return {f"{fqn}.{name}" for pair in self.custom_to_original.items() for name in pair}

    def _custom_module_names(self) -> list[str]:
        return sorted({name.rpartition(".")[0] for name in self.custom_to_original if "." in name})

    def _adapt_state_dict(
        self,
        module_fully_qualified_name: str,
        named_parameters: dict[str, nn.Parameter],
        orig_state_dict: StateDict,
        upstanding_sharded_params: StateDict,
        inplace: bool = False,
    ) -> StateDict:
        state_dict = orig_state_dict if inplace else dict(orig_state_dict)
        fqn = module_fully_qualified_name
        for custom, original in self.custom_to_original.items():
            if f"{fqn}.{original}" not in state_dict:
                continue
            full = state_dict.pop(f"{fqn}.{original}")
            param = named_parameters.get(f"{fqn}.{custom}")
            if getattr(param, "tensor_model_parallel", False):
                full = create_local_weight_with_padding(full, param.partition_dim, param.partition_stride)
            state_dict[f"{fqn}.{custom}"] = full
        return state_dict

    def _to_original_weights(
        self,
        module_fully_qualified_name: str,
        sharded_state_dicts: dict[str, list[torch.Tensor]],
        parameters_metadata: dict[str, dict[str, Any]],
    ) -> tuple[StateDict, list[str]]:
        """The original tensors; shards past `num_partitions` (other EP ranks' copies) are not read."""
        fqn = module_fully_qualified_name
        weights: StateDict = {}
        removed: list[str] = []
        for custom, original in self.custom_to_original.items():
            name = f"{fqn}.{custom}"
            if name not in parameters_metadata:
                continue
            if name not in sharded_state_dicts:
                raise KeyError(f"the sharded checkpoint has no {name!r}, which RenamedParametersSpec needs")
            shards, metadata = sharded_state_dicts[name], parameters_metadata[name]
            if metadata["tensor_model_parallel"]:
                count = metadata["num_partitions"]
                full = _unshard(shards[:count], metadata["partition_dim"], metadata["partition_stride"])
            else:
                full = shards[0]
            weights[f"{fqn}.{original}"] = full
            removed.append(name)
        return weights, removed


for _spec_class in (ExpertMLPsSpec, RenamedParametersSpec):
    # The first copy registered stays: every generated package inserts this same module.
    if not hasattr(transformations_utils, _spec_class.__name__):
        setattr(transformations_utils, _spec_class.__name__, _spec_class)
