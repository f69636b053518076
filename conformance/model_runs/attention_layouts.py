"""Which attention layout each attention module of a parallel model reached (contributing guide)."""

from __future__ import annotations

import torch

SEPARATE, FUSED, GQA = "separate", "fused", "gqa"


def attention_layouts(model: torch.nn.Module) -> dict[str, str]:
    """Per attention module: "gqa" (NxD's GQA QKV layer), "fused" (one `qkv_proj`) or "separate" q/k/v."""
    from neuronx_distributed.modules.qkv_linear import GQAQKVColumnParallelLinear

    found = {}
    for name, module in model.named_modules():
        children = dict(module.named_children())
        if "qkv_proj" in children:
            found[name] = GQA if isinstance(children["qkv_proj"], GQAQKVColumnParallelLinear) else FUSED
        elif {"q_proj", "k_proj", "v_proj"} <= set(children):
            found[name] = SEPARATE
    return found
