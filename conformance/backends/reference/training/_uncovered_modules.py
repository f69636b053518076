"""Initialising the modules of a loaded model that the checkpoint files did not cover.

The real loader initialises such modules before loading; here it happens after, keeping every loaded
parameter, and an uncovered `ParallelEmbedding` is initialised too (deviation ON-13).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

logger = logging.getLogger(__name__)


def initialize_uncovered_modules(model: nn.Module, loaded: set[str]) -> None:
    """Initialise every module with a parameter no checkpoint file provided, keeping the loaded ones.

    Parallel linears use their own `initialize_weight_and_bias` (NxD's master-then-split init, which
    re-creates the parameters), then every such module goes through the model's `_init_weights`, as
    optimum-neuron's fast init does. A `ParallelEmbedding` is re-drawn with its `init_weight_cpu` (the
    real fast init leaves it uninitialised). A module none of these can initialise (the GQA layer, which
    optimum-neuron skips too) is reported, since its weights are then arbitrary.
    """
    for module_name, module in list(model.named_modules()):
        own = dict(module.named_parameters(recurse=False))
        full = {name: f"{module_name}.{name}" if module_name else name for name in own}
        uncovered = [full[name] for name in own if full[name] not in loaded]
        if not uncovered:
            continue
        keep = {name: p.detach().clone() for name, p in own.items() if full[name] in loaded}
        handled = (
            isinstance(module, (nn.Linear, nn.Embedding, nn.LayerNorm)) or "Norm" in type(module).__name__
        )
        with torch.no_grad():
            if callable(getattr(module, "initialize_weight_and_bias", None)):
                module.initialize_weight_and_bias()
                handled = True
            elif callable(getattr(module, "init_weight_cpu", None)):
                module.init_weight_cpu()
                handled = True
            if hasattr(model, "_init_weights"):
                model._init_weights(module)
            for name, value in keep.items():
                getattr(module, name).copy_(value)
        if not handled:
            logger.warning(
                f"{uncovered} are not in the checkpoint and {type(module).__name__} has no initialisation the "
                "loader can run: their values are arbitrary."
            )
