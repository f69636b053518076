"""Fixtures of the expert-weight spec tests: the spec template under a host, and transformers MoE checkpoints.

`templates/modules/moe_expert_weights.py` is what the scaffolder inserts into a generated MoE package, where
`..transformations_utils` is the training host's module. `load_spec_template(host_package)` imports it
the same way under any host package: the reference host or the released optimum-neuron code loaded as an
oracle (`oracle_optimum_neuron`).

The checkpoints come from transformers' own MoE modules (Mixtral's and Qwen-MoE's sparse blocks, Llama 4's
and gpt-oss's packed experts): `DenseWeights` are read off each module by its own attribute names (the
transformers layout, independent of the spec), and `moe_dense.nxd_expert_shards` turns them into the
per-rank tensors NxD's `MoE` holds.
"""

from __future__ import annotations

import importlib
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch
from torch import nn
from transformers import (
    GptOssConfig,
    GraniteMoeConfig,
    Llama4TextConfig,
    MixtralConfig,
    Qwen2MoeConfig,
    Qwen3MoeConfig,
)
from transformers.models.gpt_oss.modeling_gpt_oss import GptOssExperts
from transformers.models.granitemoe.modeling_granitemoe import GraniteMoeMoE
from transformers.models.llama4.modeling_llama4 import Llama4TextExperts
from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock
from transformers.models.qwen2_moe.modeling_qwen2_moe import Qwen2MoeSparseMoeBlock
from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock

from .moe_dense import DenseWeights

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "templates" / "modules" / "moe_expert_weights.py"
TINY_MOE = Path(__file__).resolve().parent / "tiny_moe"
REFERENCE_HOST = "conformance.backends.reference.training"
TEMPLATE_PACKAGE = "moe_template"


def load_spec_template(host_package: str) -> ModuleType:
    """The template imported as `<host_package>.moe_template.moe_expert_weights` (once per process)."""
    name = f"{host_package}.{TEMPLATE_PACKAGE}.moe_expert_weights"
    if name not in sys.modules:
        importlib.import_module(host_package)
        package = ModuleType(f"{host_package}.{TEMPLATE_PACKAGE}")
        package.__path__ = [str(TEMPLATE.parent)]
        sys.modules[package.__name__] = package
    return importlib.import_module(name)


def tiny_moe_package(destination: Path) -> Path:
    """A model package folder as the scaffolder lays one out: the tiny MoE model plus the spec template."""
    folder = destination / TINY_MOE.name
    shutil.copytree(TINY_MOE, folder, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(TEMPLATE, folder / TEMPLATE.name)
    return folder


# --- transformers sources ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """A transformers MoE layout: which block, the names of its expert linears, the spec's arguments."""

    kind: str  # mixtral | qwen3_moe | qwen2_moe | llama4 | gpt_oss | granitemoe
    experts: int
    hidden: int
    intermediate: int

    @property
    def layout(self) -> str:
        packed = {
            "llama4": "packed_concatenated",
            "gpt_oss": "packed_interleaved",
            "granitemoe": "packed_concatenated",
        }
        return packed.get(self.kind, "per_expert")

    @property
    def linears(self) -> tuple[str, str, str]:
        """(gate, up, down) names of one expert's linears (per-expert layouts)."""
        return ("w1", "w3", "w2") if self.kind == "mixtral" else ("gate_proj", "up_proj", "down_proj")


def _randomized(module: nn.Module, seed: int) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=generator))
    return module


def transformers_block(source: Source, seed: int = 0) -> nn.Module:
    """The transformers module holding the experts, with random weights."""
    E, H, inter = source.experts, source.hidden, source.intermediate
    if source.kind == "mixtral":
        config = MixtralConfig(
            hidden_size=H, intermediate_size=inter, num_local_experts=E, num_experts_per_tok=2
        )
        block = MixtralSparseMoeBlock(config)
    elif source.kind == "qwen3_moe":
        config = Qwen3MoeConfig(
            hidden_size=H, moe_intermediate_size=inter, num_experts=E, num_experts_per_tok=2
        )
        block = Qwen3MoeSparseMoeBlock(config)
    elif source.kind == "qwen2_moe":
        config = Qwen2MoeConfig(
            hidden_size=H,
            moe_intermediate_size=inter,
            shared_expert_intermediate_size=2 * inter,
            num_experts=E,
            num_experts_per_tok=2,
        )
        block = Qwen2MoeSparseMoeBlock(config)
    elif source.kind == "granitemoe":
        block = GraniteMoeMoE(
            GraniteMoeConfig(
                hidden_size=H, intermediate_size=inter, num_local_experts=E, num_experts_per_tok=2
            )
        )
    elif source.kind == "llama4":
        block = Llama4TextExperts(
            Llama4TextConfig(hidden_size=H, intermediate_size=inter, num_local_experts=E)
        )
    else:
        block = GptOssExperts(GptOssConfig(hidden_size=H, intermediate_size=inter, num_local_experts=E))
    return _randomized(block, seed)


def dense_weights(source: Source, block: nn.Module) -> DenseWeights:
    """The block's weights as `DenseWeights` (`[E, I, H]` gate/up, `[E, H, I]` down), read by transformers' names.

    Packed experts multiply `x @ W`: Llama 4 splits `gate_up_proj` `[E, H, 2I]` into halves (gate first),
    gpt-oss takes the even columns as the gate and the odd ones as up. The router is not part of the packed
    modules; a random one stands in.
    """
    if source.layout == "per_expert":
        gate, up, down = (
            torch.stack([getattr(expert, name).weight for expert in block.experts]).detach()
            for name in source.linears
        )
        router = block.gate.weight.detach()
        shared = {}
        if source.kind == "qwen2_moe":
            shared = {
                "shared_gate": block.shared_expert.gate_proj.weight.detach(),
                "shared_up": block.shared_expert.up_proj.weight.detach(),
                "shared_down": block.shared_expert.down_proj.weight.detach(),
            }
        return DenseWeights(router=router, gate=gate, up=up, down=down, **shared)
    if (
        source.kind == "granitemoe"
    ):  # `F.linear` layout: input_linear [E, 2I, H] (gate rows first), output [E, H, I]
        packed = block.input_linear.weight.detach()
        return DenseWeights(
            router=block.router.layer.weight.detach(),
            gate=packed[:, : source.intermediate].contiguous(),
            up=packed[:, source.intermediate :].contiguous(),
            down=block.output_linear.weight.detach().contiguous(),
        )
    gate_up = block.gate_up_proj.detach()
    if source.kind == "llama4":
        gate, up = gate_up[..., : source.intermediate], gate_up[..., source.intermediate :]
    else:
        gate, up = gate_up[..., 0::2], gate_up[..., 1::2]
    router = torch.randn(source.experts, source.hidden, generator=torch.Generator().manual_seed(99))
    return DenseWeights(
        router=router,
        gate=gate.transpose(1, 2).contiguous(),
        up=up.transpose(1, 2).contiguous(),
        down=block.down_proj.detach().transpose(1, 2).contiguous(),
    )


def expert_state_dict(source: Source, block: nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    """The block's checkpoint tensors (router and experts; shared experts for Qwen2-MoE), under `prefix`."""
    state = {name: tensor.detach().clone() for name, tensor in block.state_dict().items()}
    if source.kind == "granitemoe":  # the packed modules' tensors and the router module's linear, as named
        return {f"{prefix}{name}": tensor for name, tensor in state.items()}
    if source.layout != "per_expert":
        state = {f"experts.{name}": state[name] for name in ("gate_up_proj", "down_proj")}
    state.pop("shared_expert_gate.weight", None)  # NxD's MoE has no shared-expert gate
    return {f"{prefix}{name}": tensor for name, tensor in state.items()}


def spec_arguments(source: Source) -> dict[str, object]:
    """`ExpertMLPsSpec` arguments for the source (besides sizes)."""
    if source.kind == "granitemoe":
        return {
            "num_experts": source.experts,
            "layout": source.layout,
            "experts_name": "",
            "gate_up_proj_name": "input_linear.weight",
            "down_proj_name": "output_linear.weight",
            "transposed": True,
        }
    if source.layout != "per_expert":
        return {"num_experts": source.experts, "layout": source.layout}
    gate, up, down = source.linears
    return {"num_experts": source.experts, "gate_proj_name": gate, "up_proj_name": up, "down_proj_name": down}
