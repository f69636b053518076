"""What each module holding a replicated parameter is applied to, on each rank: the evidence behind "why
does this parameter get a different gradient on each rank".

During the first forward a pre-hook records, for every module that directly owns a replicated parameter
(not `tensor_model_parallel`), the shape of its first tensor input and a fingerprint of its values. After
the forward, one collective says which inputs differ between ranks. A replicated parameter applied to an
input that differs per rank gets a per-rank partial gradient: either the rank's sequence shard (sequence
parallelism: the input is `(S/T, B, ...)`) or a column-sharded activation (the rank's own heads or
columns).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .replica_spread import replica_spreads


@dataclass(frozen=True)
class ModuleInput:
    """The first tensor input of a module holding replicated parameters, as seen on the ranks."""

    module: str
    shape: tuple[int, ...]
    differs_between_ranks: bool
    sequence_sharded: bool
    """The sequence-parallel layout `(S/T, B, ...)`: each rank holds its own slice of the sequence."""


class ModuleInputRecorder:
    """Records the first input of each module owning a replicated parameter (see the module docstring)."""

    def __init__(self, model: torch.nn.Module, replicated: set[str]):
        self._fingerprints: dict[str, torch.Tensor] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._handles = []
        for name, module in model.named_modules():
            owned = {f"{name}.{p}" if name else p for p, _ in module.named_parameters(recurse=False)}
            if owned & replicated:
                self._handles.append(module.register_forward_pre_hook(self._hook(name), with_kwargs=True))

    def _hook(self, name: str) -> Any:
        def record(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            if name in self._shapes:
                return
            value = next((a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), None)
            if value is None:
                return
            detached = value.detach().to(torch.float64)
            self._shapes[name] = tuple(value.shape)
            self._fingerprints[name] = torch.stack([detached.sum(), (detached * detached).sum()])

        return record

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()

    def observed(self, batch_size: int, seq_len: int, sequence_parallel: bool) -> dict[str, ModuleInput]:
        """Per module, what it was applied to (a collective: every rank recorded the same modules)."""
        from neuronx_distributed.parallel_layers.parallel_state import get_tensor_model_parallel_size

        tp_size = get_tensor_model_parallel_size()
        spreads = replica_spreads(self._fingerprints)
        found = {}
        for name, shape in self._shapes.items():
            sharded = (
                sequence_parallel
                and tp_size > 1
                and len(shape) >= 2
                and shape[0] * tp_size == seq_len
                and shape[1] == batch_size
            )
            found[name] = ModuleInput(name, shape, spreads.get(name, 0.0) > 0.0, sharded)
        return found
