"""optimum-neuron's documented lossy LoRA rule for fused layers.

A fusion has one LoRA tensor where the original linears had several on its replicated side (lora_A of a
column fusion or GQA layer, lora_B of a row fusion): loading stores their mean, and consolidation gives
that mean back to every original linear.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

import torch

# The records keep the package's logger name, as when the specs lived in one module.
logger = logging.getLogger(__package__)

_LORA_MEAN_WARNING = (
    "Taking the mean of the LoRA A weights since there is only one LoRA A weight after fusing."
)


def average_lora_parts(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """The one fused tensor for `parts` (load side), with optimum-neuron's warning."""
    logger.warning(_LORA_MEAN_WARNING)
    return torch.mean(torch.stack(list(parts), dim=0), dim=0)


def duplicate_lora_mean(mean: torch.Tensor, original_names: Iterable[str]) -> dict[str, torch.Tensor]:
    """The consolidated tensors: a copy of the saved mean under every original name."""
    return {name: mean.clone() for name in original_names}
