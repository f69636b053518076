"""A deterministic PEFT LoRA adapter for a catalogue checkpoint, made here with the `peft` library (what a
user's adapter is): seeded values, lora_B non-zero, every attention and MLP projection targeted (by the
names the transformers model gives its linears: `q_proj`... for Llama, `qkv_proj` and `gate_up_proj` for a
model that fuses them); in a mixture of experts the attention projections only, which is what a MoE package
adapts (the expert-weight specs refuse LoRA on the experts and the router, docs/moe-expert-weights.md)."""

from __future__ import annotations

from pathlib import Path

import torch

LORA_RANK = 4
LORA_ALPHA = 8
ADAPTER_SEED = 0
ADAPTER_SCALE = 0.1
MOE_TARGET_MODULES = ("k_proj", "o_proj", "q_proj", "v_proj")
ADAPTER_FILE = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


def target_modules(model_type: str) -> tuple[str, ...] | None:
    """The projections the check's adapter targets for an architecture (see the module docstring); None:
    every linear projection of the model (`projection_names`)."""
    from reference_models.catalogue import is_moe

    return MOE_TARGET_MODULES if is_moe(model_type) else None


def make_adapter(
    checkpoint: str | Path,
    out_dir: str | Path,
    seed: int = ADAPTER_SEED,
    targets: tuple[str, ...] | None = None,
) -> Path:
    """A PEFT LoRA adapter on `targets` for the checkpoint, every value drawn from `seed` (lora_B non-zero),
    saved."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(checkpoint), dtype=torch.float32)
    config = LoraConfig(
        r=LORA_RANK,
        lora_alpha=LORA_ALPHA,
        lora_dropout=0.0,
        target_modules=list(targets) if targets is not None else projection_names(base),
        task_type="CAUSAL_LM",
        init_lora_weights=False,
    )
    model = get_peft_model(base, config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in sorted(model.named_parameters()):
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * ADAPTER_SCALE)
    out_dir = Path(out_dir)
    model.save_pretrained(str(out_dir))
    return out_dir


def projection_names(model: torch.nn.Module) -> list[str]:
    """The names of the model's linear layers other than its output embeddings (the LM head), sorted;
    transformers' `Conv1D` (a linear stored transposed, GPT-2's) counts as one: PEFT adapts it as well."""
    from transformers.pytorch_utils import Conv1D

    head = model.get_output_embeddings()
    return sorted(
        {
            name.rpartition(".")[2]
            for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear | Conv1D) and module is not head
        }
    )
