"""optimum-neuron's own released models, checked unmodified from a checkout (`--repo`) on the reference
backend: llama has no __init__.py, qwen3 imports `..llama.modeling_llama`, and both create tensors on the
"xla" device and checkpoint activations with torch_xla's checkpoint, which the reference backend supplies.
llama runs over the checkout's own host (`--host checkout`), qwen3 over the kit's.
The oracle is transformers; qwen3's per-head q/k norms are a real defect of the release (their gradients are
partial on each TP rank and nothing sums them), so its TP=2 parity must FAIL naming them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from conformance.checks import RunSettings
from conformance.checks.parity import CHECK, ParityConfig
from conformance.cli import main
from conformance.profiles import plan
from conformance.results import Status

TRAINING = Path("optimum/neuron/models/training")


@pytest.mark.slow
def test_released_llama_passes_parity_over_its_own_host_from_a_checkout(
    released_checkout: Path, checkpoint_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert not (released_checkout / TRAINING / "llama" / "__init__.py").exists()
    out = tmp_path / "report"
    status = main(
        [
            "llama",
            "--repo",
            str(released_checkout),
            "--host",
            "checkout",
            "--checks",
            "parity",
            "--out",
            str(out),
            "--cache-dir",
            str(checkpoint_cache),
        ],
        console=Console(width=200),
    )
    printed = capsys.readouterr().out
    assert status == 0, printed
    report = json.loads((out / "llama" / "results.json").read_text())
    assert report["package_dir"] == str((released_checkout / TRAINING / "llama").resolve())
    assert str(released_checkout) in report["environment"]["host"]
    assert report["environment"]["platform"] == "trn1"
    (planned,) = plan("llama", "quick", ["parity"])
    assert len(report["results"]) == len(planned.configurations)
    assert [row["status"] for row in report["results"]] == ["PASS"] * len(planned.configurations), report


@pytest.mark.slow
def test_released_qwen3_imports_its_llama_sibling_and_fails_on_its_partial_qk_norm_gradients(
    released_checkout: Path, checkpoint_cache: Path
) -> None:
    configurations = [ParityConfig("qwen3/gqa", 1), ParityConfig("qwen3/gqa", 2)]
    settings = RunSettings(cache_dir=checkpoint_cache, timeout=240.0)
    at_1, at_2 = CHECK.run(released_checkout / TRAINING / "qwen3", configurations, settings)
    assert at_1.status is Status.PASS, at_1.reasons
    assert at_2.status is Status.FAIL
    partial = [reason for reason in at_2.reasons if "is partial" in reason]
    assert partial and all("q_norm" in reason or "k_norm" in reason for reason in partial), at_2.reasons


@pytest.mark.slow
def test_released_llama_checkpoints_its_layers_with_torch_xla_over_the_kits_host(
    released_checkout: Path, checkpoint_cache: Path
) -> None:
    # The release checkpoints each decoder layer with the host's `checkpoint_with_kwargs` (torch_xla's
    # reentrant checkpoint), whose recomputation creates the causal mask on "xla" again in the backward pass
    configurations = [ParityConfig("llama/gqa", 2, True, gradient_checkpointing=True)]
    settings = RunSettings(cache_dir=checkpoint_cache, timeout=240.0)
    (result,) = CHECK.run(released_checkout / TRAINING / "llama", configurations, settings)
    assert result.status is Status.PASS, result.reasons
    assert result.figures["logits_without_checkpointing_max_abs_diff"] < 1e-5
