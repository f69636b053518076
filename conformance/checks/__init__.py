"""Conformance checks (DESIGN §5): one module per check, each defining `CHECK`, an instance of the check
protocol (`conformance.harness.protocol.Check`): a typed configuration, a plan per profile, one function
run on the ranks through the shared harness, and a judge that gives one `CheckResult` per configuration.
The registry (`conformance.harness.registry`) finds them here; nothing else lists them.

    from conformance.checks import RunSettings, parity

    results = parity.CHECK.run(package_dir, [parity.ParityConfig("llama/gqa", 2)], RunSettings())

A fault of the model (it does not load, a tensor is off, keys are missing) is a FAIL whose reasons name the
cause; a clear refusal of the configuration while the model is built is UNSUPPORTED; a crashed or hung
rank is a FAIL of each job of its launcher call, with the rank's traceback or stacks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunSettings:
    """How checks run: the backend, the host code, the checkpoint cache, the per-call timeout, the device."""

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
