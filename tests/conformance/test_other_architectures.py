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


def test_a_scaffolded_architecture_outside_the_catalogue_runs_the_quick_profile(
    generated: Callable[[str], Path], checkpoint_cache: Path, tmp_path: Path
) -> None:
    package = generated("starcoder2")
    console = Console(width=200, record=True)
    arguments = ["--cache-dir", str(checkpoint_cache), "--out", str(tmp_path)]
    status = main(["starcoder2", "--package", str(package), *arguments], console=console)
    results = json.loads((tmp_path / "starcoder2" / "results.json").read_text())
    rows = results["results"]
    # starcoder2's q/k/v biases (use_bias) cannot sit in NxD's GQA layer on Trainium: the cases that reach
    # it (mqa at T=2) pass here but are WARNs naming NXD-09 / ON-10. Its config sets no dropout, so the dropout
    # check has nothing to show: a SKIP with the reason. Every other case is a PASS, init included: the
    # generated pretrained class zeroes the parallel linears' biases as transformers' _init_weights zeroes
    # every Linear bias (NxD's layers draw them uniformly; NXS006), so the run exits 0.
    assert status == 0, console.export_text()
    for row in rows:
        expected = (
            "SKIP" if row["check"] == "dropout" else "WARN" if "NXD-09" in row["deviations"] else "PASS"
        )
        assert row["status"] == expected, console.export_text()
    (init,) = [row for row in rows if row["check"] == "init"]
    assert init["figures"]["parameters_compared"] > 0 and init["figures"]["parameters_differing"] == 0
    assert sum(row["status"] == "WARN" for row in rows) >= 2
    assert {row["check"] for row in rows} == {planned.name for planned in plan("starcoder2", "quick")}
    assert len({row["check"] for row in rows}) == 9
    assert all(row["configuration"]["variant"].startswith("starcoder2/") for row in rows)
