"""An architecture outside the built-in catalogue: scaffolded, then checked end to end (quick profile).

starcoder2 differs from the built-in five where it matters to the rules: LayerNorm with biases, an MLP
named `c_fc`/`c_proj` with biases, and biased q/k/v/o projections. The catalogue derives its variants from
its config class, so `nox -s conformance -- starcoder2` works as the scaffolder's "Next:" line says.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
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
    # starcoder2's q/k/v biases (use_bias) cannot sit in NxD's GQA layer on Trainium: the cases that reach
    # it (mqa at T=2) pass here but are WARNs naming NXD-09 / ON-10; every other case is a PASS.
    for row in rows:
        expected = "WARN" if "NXD-09" in row["deviations"] else "PASS"
        assert row["status"] == expected, console.export_text()
    assert sum(row["status"] == "WARN" for row in rows) == 2
    assert {row["check"] for row in rows} == {planned.check for planned in plan("starcoder2", "quick")}
    assert len({row["check"] for row in rows}) == 6
    assert all(row["configuration"]["variant"].startswith("starcoder2/") for row in rows)


def test_a_padding_token_is_a_trainium_difference_only_where_nxd_treats_it_differently(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """NxD drops padding_idx 0 (its row then gets gradient) and returns bf16 from fp16 embeddings; a
    nonzero padding index in fp32 or bf16 behaves as nn.Embedding's (NXD-05, semantics doc §6). The
    catalogue never uses pad 0 (its token ids start at 3), so gemma's default of 0 is put back here."""
    from conformance.checks import parity
    from reference_models import Variant, variant

    assert variant("gemma/gqa").config().pad_token_id == 5
    catalogue_gemma = variant("gemma/gqa")
    default_pad = Variant("gemma", "gqa", "pad 0", (*catalogue_gemma.overrides, ("pad_token_id", 0)))
    monkeypatch.setattr(parity, "variant", lambda key: default_pad if key == "gemma/gqa" else variant(key))
    assert "NXD-05" in parity.touched_deviations("gemma/gqa", 2, True, ["separate"])
    monkeypatch.undo()
    assert "NXD-05" not in parity.touched_deviations("gemma/gqa", 2, True, ["separate"])
    assert "NXD-05" not in parity.touched_deviations("helium/gqa", 2, True, ["separate"], dtype="bfloat16")
    assert "NXD-05" in parity.touched_deviations("helium/gqa", 2, True, ["separate"], dtype="float16")
    assert "NXD-05" in parity.touched_deviations("llama/gqa", 2, True, ["separate"], dtype="float16")


def test_attention_biases_on_the_gqa_layer_are_a_trainium_difference_for_every_architecture() -> None:
    """NxD's GQA layer cannot hold q/k/v biases (NXD-09, ON-10): qwen2, whose biases need no config field,
    is flagged like llama with `attention_bias`; without the GQA layer nothing is flagged."""
    from conformance.checks.parity import touched_deviations

    for key in ("qwen2/mqa", "llama/features", "starcoder2/mqa"):
        assert {"NXD-09", "ON-10"} <= set(touched_deviations(key, 2, True, ["gqa"])), key
        assert not {"NXD-09", "ON-10"} & set(touched_deviations(key, 2, True, ["separate"])), key
    assert not {"NXD-09", "ON-10"} & set(touched_deviations("llama/mqa", 2, True, ["gqa"]))
