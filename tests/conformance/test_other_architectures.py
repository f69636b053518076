"""An architecture outside the built-in catalogue: scaffolded, then checked end to end (quick profile).

starcoder2 differs from the built-in five where it matters to the rules: LayerNorm with biases, an MLP
named `c_fc`/`c_proj` with biases, and biased q/k/v/o projections. The catalogue derives its variants from
its config class, so `nox -s conformance -- starcoder2` works as the scaffolder's "Next:" line says.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from conformance.cli import main
from conformance.profiles import plan


def test_a_scaffolded_architecture_outside_the_catalogue_passes_the_quick_profile(
    generated: Callable[[str], Path], checkpoint_cache: Path, tmp_path: Path
) -> None:
    package = generated("starcoder2")
    console = Console(width=200, record=True)
    arguments = ["--cache-dir", str(checkpoint_cache), "--out", str(tmp_path)]
    status = main(["starcoder2", "--package", str(package), *arguments], console=console)
    assert status == 0, console.export_text()
    results = json.loads((tmp_path / "starcoder2" / "results.json").read_text())
    rows = results["results"]
    assert {row["status"] for row in rows} == {"PASS"}, console.export_text()
    assert {row["check"] for row in rows} == {planned.check for planned in plan("starcoder2", "quick")}
    assert len({row["check"] for row in rows}) == 6
    assert all(row["configuration"]["variant"].startswith("starcoder2/") for row in rows)


def test_a_padding_token_is_a_trainium_difference_only_where_nxd_treats_it_differently() -> None:
    """NxD drops padding_idx 0 (its row then gets gradient) and returns bf16 from fp16 embeddings; a
    nonzero padding index in fp32 or bf16 behaves as nn.Embedding's (NXD-05, semantics doc §6)."""
    from conformance.checks.parity import touched_deviations
    from reference_models import variant

    assert variant("gemma/gqa").config().pad_token_id == 0
    assert variant("helium/gqa").config().pad_token_id == 3
    assert "NXD-05" in touched_deviations("gemma/gqa", 2, True, ["separate"])
    assert "NXD-05" not in touched_deviations("helium/gqa", 2, True, ["separate"])
    assert "NXD-05" not in touched_deviations("helium/gqa", 2, True, ["separate"], dtype="bfloat16")
    assert "NXD-05" in touched_deviations("helium/gqa", 2, True, ["separate"], dtype="float16")
    assert "NXD-05" not in touched_deviations("llama/gqa", 2, True, ["separate"], dtype="float16")
