"""Persistent buffers that the host's consolidation leaves out of the consolidated checkpoint.

optimum-neuron 0.4.5 consolidates the tensors named in the checkpoint metadata's `parameters`, and
`create_parameter_metadata` fills those from `named_parameters()`: `to_original_weights` never writes a
persistent buffer, although `save_pretrained` saved it in every shard (the model's state dict). The kit's
host does the same, on purpose: a verdict must hold on Trainium. A model with persistent buffers
(transformers' xIELU activation registers `beta` and `eps`) therefore gets a consolidated checkpoint
without them, there as here; neither transformers nor the package can change that.

What it costs depends on the values. Whoever loads the consolidated checkpoint (transformers'
`from_pretrained`, the package's) reports the keys missing and keeps the values the module's constructor
gave the buffers. Where those equal the saved ones, the checkpoint still loads into the same model: the
checks WARN and name the buffers. Where they differ (a buffer the model changed or loaded), the
consolidated checkpoint loads into another model: a FAIL that names them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from conformance.comparisons.state_dicts import names

HOST_DEFECT = (
    "optimum-neuron 0.4.5's consolidation writes parameters only (transformations_utils.to_original_weights "
    "consolidates the names create_parameter_metadata took from named_parameters()), so it drops every "
    "persistent buffer, on Trainium as on the kit's host, which mirrors it"
)


def persistent_buffer_names(model: torch.nn.Module) -> set[str]:
    """The state-dict keys of `model` that are not parameters: its persistent buffers."""
    parameters = {name for name, _ in model.named_parameters()}
    return {name for name in model.state_dict() if name not in parameters}


def constructor_buffers(checkpoint: str | Path) -> dict[str, torch.Tensor]:
    """The persistent buffers of transformers' model built from the checkpoint's config: the values a
    loader keeps for buffers the checkpoint lacks."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(checkpoint)
    with torch.random.fork_rng(devices=[]):
        model = AutoModelForCausalLM.from_config(config)
    kept = persistent_buffer_names(model)
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items() if name in kept}


@dataclass
class DroppedBuffers:
    """Persistent buffers of the original checkpoint that the consolidated one lacks, split by whether a
    loader's fallback (the constructor's value) restores them."""

    restored: list[str] = field(default_factory=list)
    """Their saved value is the constructor's (same dtype, shape and values)."""
    lost: dict[str, str] = field(default_factory=dict)
    """name -> how the saved value differs from the constructor's (or that the constructor has none)."""

    @property
    def names(self) -> list[str]:
        return sorted([*self.restored, *self.lost])

    def warning(self) -> str | None:
        """The WARN reason for restored buffers (None when there are none)."""
        if not self.restored:
            return None
        return (
            f"the consolidated checkpoint lacks {len(self.restored)} persistent buffer(s): "
            f"{names(self.restored)} ({HOST_DEFECT}); each holds its constructor's value, so transformers and "
            "from_pretrained rebuild the same model from it, reporting the keys missing"
        )

    def failures(self) -> list[str]:
        """FAIL reasons for buffers whose saved value a loader cannot restore."""
        if not self.lost:
            return []
        listed = "; ".join(f"{name}: {why}" for name, why in sorted(self.lost.items())[:8])
        return [
            f"the consolidated checkpoint lacks {len(self.lost)} persistent buffer(s) whose saved value is not "
            f"their constructor's, so loading it gives another model ({HOST_DEFECT}): {listed}"
        ]


def classify(
    dropped: Iterable[str],
    saved: Mapping[str, torch.Tensor],
    fallback: Mapping[str, torch.Tensor],
) -> DroppedBuffers:
    """Split the dropped buffer names by whether `fallback` (the constructor's buffers) holds their `saved`
    value exactly."""
    found = DroppedBuffers()
    for name in sorted(dropped):
        mine, theirs = saved[name], fallback.get(name)
        if theirs is None:
            found.lost[name] = "the constructor registers no such buffer"
        elif mine.dtype != theirs.dtype or mine.shape != theirs.shape:
            found.lost[name] = (
                f"saved {mine.dtype} {tuple(mine.shape)}, constructed {theirs.dtype} {tuple(theirs.shape)}"
            )
        elif not torch.equal(mine, theirs):
            delta = float((mine.double() - theirs.double()).abs().max())
            found.lost[name] = f"saved value differs from the constructor's by max |Δ| {delta:.3g}"
        else:
            found.restored.append(name)
    return found
