"""Conformance checks (DESIGN §5): each runs a model package on the active backend and returns one
`CheckResult` per configuration, with figures, whether the check passes or not.

Every check module exposes the same entry point, which the runner calls:

    run(package_dir: Path, configurations: Sequence[Mapping[str, Any]], settings: RunSettings)
        -> list[CheckResult]          # one per configuration, in order

A fault of the model (it does not load, a tensor is off, keys are missing) is a FAIL result whose reasons
name the cause; an exception escaping `run` (a crashed or hung rank) is turned into FAIL results by the
runner, with the rank's traceback.

- `parity`: logits, loss and consolidated gradients against transformers, per TP size, SP and attention
  variant.
- `round_trip`, `topology_change`, `lora_round_trip`: checkpoints through the host's save and consolidation.
- `overfit`, `bf16_smoke`: training on a fixed batch, against transformers trained identically.
- `gradient_consolidation`: per-rank gradients back to transformers names (a helper of parity).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunSettings:
    """How checks run: the backend, the checkpoint cache, the per-call timeout and the device."""

    backend: str = "reference"
    cache_dir: Path | None = None
    timeout: float = 180.0
    """Seconds one launcher call (one batch of configurations on the ranks) may take before it is a FAIL."""
    device: str = "cpu"
    repo: Path | None = None
    """The optimum-neuron checkout whose training host the neuron backend's ranks import (`--repo`)."""
    platform: str = "trn1"
    """The Trainium generation verdicts are for (`--platform`, `deviations.PLATFORMS`): a pass that touched a
    deviation which does not carry over to it is a WARN. The reference backend computes the same either way."""
    host: str = "reference"
    """Which training host the model runs over on the reference backend (`--host`, `host_choice.HOSTS`):
    the kit's reference host, or the optimum-neuron checkout's own host modules."""
