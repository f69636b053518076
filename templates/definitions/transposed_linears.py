"""Definitions NXS027 (source-fused-checkpoint) inserts whole, once per file and after those of
source_fused_linears.py, into a model whose transformers source builds linears as transformers' `Conv1D`.

`Conv1D(nf, nx)` stores its weight transposed, `[nx, nf]` (input features first), where the generated
model's parallel linear holds `[nf, nx]`. `TransposedSourceFusedLinearSpec` is `SourceFusedLinearSpec` for
such a checkpoint tensor: loading transposes the weight before splitting it into the parts (one part, the
linear itself, when the source does not split it) and sharding it; consolidation joins the parts and
transposes the weight back, bit for bit. Biases, and LoRA's `lora_A`/`lora_B` (PEFT shapes them as for a
linear whatever the base layer stores), are not transposed; the adapter config's `fan_in_fan_out` follows
the layer (off on the generated model, on in the original).
"""

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..transformations_utils import ModelWeightTransformationSpecs
from .source_fused_linears import SourceFusedLinearSpec, register_spec, with_source_fused_linear


@dataclass
class TransposedSourceFusedLinearSpec(SourceFusedLinearSpec):
    """`SourceFusedLinearSpec` for a checkpoint linear `source_name` whose weight is stored `[in, out]`.

    LoRA: PEFT adapts a `Conv1D` with `fan_in_fan_out=True` (its base weight is `[in, out]`); the generated
    model's parallel linear holds `[out, in]`, so its adapter config has it off, and the original's on.
    """

    def adapt_peft_config(self, peft_config: Any, inplace: bool = False) -> Any:
        peft_config = super().adapt_peft_config(peft_config, inplace=inplace)
        peft_config.fan_in_fan_out = False
        return peft_config

    def to_original_peft_config(self, peft_config: Any, inplace: bool = False) -> Any:
        peft_config = super().to_original_peft_config(peft_config, inplace=inplace)
        peft_config.fan_in_fan_out = True
        return peft_config

    def _adapt_state_dict(
        self,
        module_fully_qualified_name: str,
        named_parameters: dict[str, nn.Parameter],
        orig_state_dict: dict[str, torch.Tensor],
        upstanding_sharded_params: dict[str, torch.Tensor],
        inplace: bool = False,
    ) -> dict[str, torch.Tensor]:
        state_dict = orig_state_dict if inplace else dict(orig_state_dict)
        weight = f"{module_fully_qualified_name}.{self.source_name}.weight"
        if weight in state_dict:
            state_dict[weight] = state_dict[weight].t().contiguous()
        return super()._adapt_state_dict(
            module_fully_qualified_name, named_parameters, state_dict, upstanding_sharded_params, inplace=True
        )

    def _lora_adapt_state_dict(
        self,
        module_fully_qualified_name: str,
        named_parameters: dict[str, nn.Parameter],
        orig_state_dict: dict[str, torch.Tensor],
        upstanding_sharded_params: dict[str, torch.Tensor],
        inplace: bool = False,
    ) -> dict[str, torch.Tensor]:
        if not self.inner and self.part_names == [self.source_name]:
            # one plain parallel linear under its own name: the host shards its adapter by the layer's own
            # layout (a row-parallel layer's lora_A by its input features), as for any parallel linear
            return orig_state_dict if inplace else dict(orig_state_dict)
        return super()._lora_adapt_state_dict(
            module_fully_qualified_name, named_parameters, orig_state_dict, upstanding_sharded_params, inplace
        )

    def _to_original_weights(
        self,
        module_fully_qualified_name: str,
        sharded_state_dicts: dict[str, list[torch.Tensor]],
        parameters_metadata: dict[str, dict[str, Any]],
    ) -> tuple[dict[str, torch.Tensor], list[str]]:
        weights, removed = super()._to_original_weights(
            module_fully_qualified_name, sharded_state_dicts, parameters_metadata
        )
        weight = f"{module_fully_qualified_name}.{self.source_name}.weight"
        weights[weight] = weights[weight].t().contiguous()
        return weights, removed


def with_transposed_source_fused_linear(
    specs: ModelWeightTransformationSpecs,
    source_name: str,
    part_names: list[str],
    part_sizes: list[int],
    bias: bool,
    groups: int = 1,
) -> ModelWeightTransformationSpecs:
    """`with_source_fused_linear` for a checkpoint linear whose weight is stored transposed."""
    return with_source_fused_linear(
        specs, source_name, part_names, part_sizes, bias, groups, TransposedSourceFusedLinearSpec
    )


register_spec(TransposedSourceFusedLinearSpec)
