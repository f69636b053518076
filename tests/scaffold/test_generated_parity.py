"""Generated models match transformers: `scaffold new-model <type> --out DIR` for the five target models,
then the parity harness over the whole catalogue matrix of that architecture (T in {1, 2, 4}, SP on/off,
fuse_qkv where it changes the layout), which reaches every attention layout at T = 2 and T = 4.

The oracle is transformers' own model (eager, fp32) on the same tiny checkpoint; see
conformance/checks/parity.py for what is compared and the tolerances.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from conformance.checks import RunSettings
from conformance.checks.parity import CHECK, matrix
from conformance.results import Status
from reference_models import ARCHITECTURES

LAYOUTS = {"separate", "fused", "gqa"}


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_generated_model_matches_transformers(
    model_type: str, generated: Callable[[str], Path], checkpoint_cache: Path
) -> None:
    package = generated(model_type)  # `scaffold new-model <type> --out DIR`, once per session
    results = CHECK.run(package, matrix(model_type), RunSettings(cache_dir=checkpoint_cache))

    failed = [
        f"{r.label}: {r.status} {r.reasons}" for r in results if r.status not in (Status.PASS, Status.WARN)
    ]
    assert not failed, f"{len(failed)}/{len(results)} parity cases failed:\n" + "\n".join(failed)
    for tp_size in (2, 4):
        for sp in (False, True):
            reached = {
                layout
                for result in results
                if (result.configuration["tp_size"], result.configuration["sequence_parallel"])
                == (tp_size, sp)
                for layout in result.figures.get("attention_layouts", [])
            }
            assert reached == LAYOUTS, (tp_size, sp, reached)
