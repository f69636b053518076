"""A deterministic PEFT LoRA adapter for a catalogue checkpoint, made here with the `peft` library (what a
user's adapter is): seeded values, lora_B non-zero, every attention and MLP projection targeted; in a
mixture of experts the attention projections only, which is what a MoE package adapts (the expert-weight
specs refuse LoRA on the experts and the router, docs/moe-expert-weights.md)."""

from __future__ import annotations

from pathlib import Path

import torch

LORA_RANK = 4
LORA_ALPHA = 8
ADAPTER_SEED = 0
ADAPTER_SCALE = 0.1
TARGET_MODULES = ("down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj")
MOE_TARGET_MODULES = ("k_proj", "o_proj", "q_proj", "v_proj")
ADAPTER_FILE = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


def target_modules(model_type: str) -> tuple[str, ...]:
    """The projections the check's adapter targets for an architecture (see the module docstring)."""
    from reference_models.catalogue import is_moe

    return MOE_TARGET_MODULES if is_moe(model_type) else TARGET_MODULES


def make_adapter(
    checkpoint: str | Path,
    out_dir: str | Path,
    seed: int = ADAPTER_SEED,
    targets: tuple[str, ...] = TARGET_MODULES,
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
        target_modules=list(targets),
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
