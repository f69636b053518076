"""The output of each traced module during one forward, to find where a wrong forward first departs.

Traced: the token embedding, each decoder layer, its attention and MLP (or sparse MoE block: Mixtral's
`block_sparse_moe`; Qwen-MoE's is its `mlp`), and the final norm (transformers' module names, which
generated models keep).
"""

from __future__ import annotations

import re
from typing import Any

import torch

TRACED_MODULE = re.compile(r"^model\.(embed_tokens|norm|layers\.\d+(\.(self_attn|mlp|block_sparse_moe))?)$")


class ActivationRecorder:
    """Records the output of every traced module during one forward, in the order the modules ran."""

    def __init__(self, model: torch.nn.Module):
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles = [
            module.register_forward_hook(self._hook(name))
            for name, module in model.named_modules()
            if TRACED_MODULE.match(name)
        ]

    def _hook(self, name: str) -> Any:
        def record(module: torch.nn.Module, args: Any, output: Any) -> None:
            value = output[0] if isinstance(output, tuple) else output
            if isinstance(value, torch.Tensor) and name not in self.outputs:
                self.outputs[name] = value.detach()

        return record

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def gather_activations(
    outputs: dict[str, torch.Tensor], batch_size: int, seq_len: int, sequence_parallel: bool
) -> dict[str, torch.Tensor]:
    """Batch-first full-sequence activations: sequence-sharded (S/T, B, D) outputs are gathered over TP
    (a collective: every rank holds the same names and shapes, so every rank takes the same branches)."""
    from neuronx_distributed.parallel_layers.mappings import gather_from_sequence_parallel_region
    from neuronx_distributed.parallel_layers.parallel_state import get_tensor_model_parallel_size

    tp_size = get_tensor_model_parallel_size()
    gathered = {}
    for name, value in outputs.items():
        sharded = value.dim() == 3 and value.shape[0] * tp_size == seq_len and value.shape[1] == batch_size
        if sequence_parallel and sharded:
            value = gather_from_sequence_parallel_region(value.contiguous(), 0).transpose(0, 1)
        gathered[name] = value.contiguous()
    return gathered
