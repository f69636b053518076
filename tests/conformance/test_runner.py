"""The conformance runner: profiles, a crashed or hung rank as a FAIL with its traceback, the command line
end to end (reports written, exit status), and where the checked package comes from."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from rich.console import Console

from conformance.checks import RunSettings
from conformance.checks.parity import CHECK as PARITY
from conformance.checks.parity import ParityConfig
from conformance.cli import main
from conformance.coverage import not_tested
from conformance.harness.registry import check_names
from conformance.model_location import locate_package
from conformance.profiles import ModelCatalogue, PlannedCheck, plan, smallest_gqa_tp
from conformance.results import Status
from conformance.runner import run_check
from reference_models import attention_variant, variant, variants_for
from reference_models.catalogue import key_value_heads

MLP_FORWARD = "        gate, up = self.gate_up_proj(x).split(self.split_size, dim=-1)\n"


def _layouts(configurations: tuple[ParityConfig, ...], tp_size: int) -> set[str]:
    found = set()
    for configuration in configurations:
        if configuration.tp_size != tp_size:
            continue
        config = variant(configuration.variant).config()
        found.add(
            attention_variant(
                config.num_attention_heads, key_value_heads(config), tp_size, configuration.fuse_qkv
            )
        )
    return found


def test_an_architecture_without_kv_heads_plans_on_its_first_variant_without_repeats() -> None:
    """gpt_neox has one K/V head per query head: no variant reaches the GQA layer (heads that divide T never
    need it, the others cannot be spread), so the checks that add "the smallest GQA case" run the base
    variant at T=2 instead: its fused-qkv case is new, the others it repeats are planned once."""
    catalogue = ModelCatalogue.of("gpt_neox")
    assert catalogue.base == "gpt_neox/mha-8"
    assert catalogue.smallest_gqa() == ("gpt_neox/mha-8", 2)
    with pytest.raises(LookupError):
        smallest_gqa_tp(catalogue.variants)
    planned = {entry.name: entry.configurations for entry in plan("gpt_neox", "quick")}
    for name, configurations in planned.items():
        assert len(set(configurations)) == len(configurations), name
    assert {c.fuse_qkv for c in planned["parity"]} == {False, True}
    assert _layouts(planned["parity"], 2) <= {"separate", "fused"}


def test_quick_profile_covers_tp_1_and_2_and_the_smallest_tp_reaching_the_gqa_layer() -> None:
    (parity,) = [planned for planned in plan("llama", "quick") if planned.name == "parity"]
    assert {configuration.tp_size for configuration in parity.configurations} == {1, 2}
    # llama/mqa (8 heads, 1 kv head) reaches NxD's GQA layer already at T=2 (kv heads < T).
    assert smallest_gqa_tp({entry.name: entry for entry in variants_for("llama")}) == ("mqa", 2)
    assert "gqa" in _layouts(parity.configurations, 2)
    assert {True, False} == {configuration.sequence_parallel for configuration in parity.configurations}
    assert [planned.name for planned in plan("llama", "quick")] == [
        "parity",
        "round_trip",
        "topology_change",
        "lora_round_trip",
        "init",
        "overfit",
        "replicas",
        "bf16_smoke",
        "dropout",
    ]


def test_full_profile_reaches_every_attention_layout_up_to_tp_8_with_sp_and_the_flash_path() -> None:
    (parity,) = [planned for planned in plan("qwen3", "full") if planned.name == "parity"]
    for tp_size in (2, 4):
        assert _layouts(parity.configurations, tp_size) == {"separate", "fused", "gqa"}
    assert max(configuration.tp_size for configuration in parity.configurations) == 8
    assert any(
        configuration.attn_implementation == "flash_attention_2" for configuration in parity.configurations
    )
    assert {(c.tp_size > 1, c.sequence_parallel) for c in parity.configurations} >= {
        (True, True),
        (True, False),
    }


def test_the_full_profile_sets_every_option_that_changes_the_computation_both_ways() -> None:
    """Issue 8: each `TrainingNeuronConfig` option that changes the computation path is exercised somewhere
    in the full profile; the quick one covers the cheap ones (the mask honoured, gradient checkpointing)."""
    full = not_tested("llama", plan("llama", "full"), check_names())
    assert not [line for line in full if "TrainingNeuronConfig" in line], full
    quick = not_tested("llama", plan("llama", "quick"), check_names())
    assert "TrainingNeuronConfig recompute_causal_mask=False" not in quick
    assert "TrainingNeuronConfig gradient_checkpointing=True" not in quick
    # the flash path (and its transpose_nki_inputs) is full only: quick names the whole path as left out
    assert any(line.startswith("the Neuron flash-attention path") for line in quick), quick
    (parity,) = [planned for planned in plan("llama", "full") if planned.name == "parity"]
    explicit = [c for c in parity.configurations if c.kv_size_multiplier is not None]
    # llama/gqa at T=4 (2 kv heads): twice the inferred multiplier, so a model ignoring the option differs.
    assert ("llama/gqa", 4, 4) in {(c.variant, c.tp_size, c.kv_size_multiplier) for c in explicit}


def test_unknown_profile_and_check_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown profile"):
        plan("llama", "slow")
    with pytest.raises(ValueError, match="unknown checks"):
        plan("llama", "quick", ["parity", "speed"])


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        ("        if torch.distributed.get_rank() == 1:\n            os._exit(3)\n", "exited with status 3"),
        (
            "        if torch.distributed.get_rank() == 1:\n            time.sleep(600)\n",
            "timed out|past|timeout",
        ),
    ],
    ids=["crashed-rank", "hung-rank"],
)
def test_a_crashed_or_hung_rank_is_a_fail_with_its_traceback(
    fault: str,
    expected: str,
    broken_copy: Callable[[str, list[tuple[str, str]]], Path],
    checkpoint_cache: Path,
) -> None:
    package = broken_copy("llama", [(MLP_FORWARD, "        import os, time\n" + fault + MLP_FORWARD)])
    planned = PlannedCheck(PARITY, (ParityConfig("llama/gqa", 2),))
    (result,) = run_check(planned, package, RunSettings(cache_dir=checkpoint_cache, timeout=8))
    assert result.status is Status.FAIL
    assert result.traceback, "the rank's traceback or stacks must reach the report"
    text = " ".join(result.reasons) + result.traceback
    assert re.search(expected, text, flags=re.IGNORECASE), text


def test_command_line_writes_every_report_and_exits_by_the_verdict(
    generated: Callable[[str], Path],
    broken_copy: Callable[[str, list[tuple[str, str]]], Path],
    checkpoint_cache: Path,
    tmp_path: Path,
) -> None:
    arguments = [
        "--checks",
        "round_trip",
        "--cache-dir",
        str(checkpoint_cache),
        "--out",
        str(tmp_path / "ok"),
    ]
    console = Console(width=200, record=True)
    assert main(["llama", "--package", str(generated("llama")), *arguments], console=console) == 0
    written = tmp_path / "ok" / "llama"
    assert {path.name for path in written.iterdir()} == {
        "report.md",
        "report.html",
        "junit.xml",
        "results.json",
    }
    results = json.loads((written / "results.json").read_text())
    assert [row["check"] for row in results["results"]] == ["round_trip", "round_trip"]
    assert str(tmp_path / "ok") in console.export_text()

    # A package that cannot load its checkpoint fails the run: exit status 1.
    broken = broken_copy("llama", [(MLP_FORWARD, MLP_FORWARD)])  # same text: a copy
    (broken / "__init__.py").write_text("raise ImportError('this package is broken on purpose')\n")
    arguments[-1] = str(tmp_path / "broken")
    assert main(["llama", "--package", str(broken), *arguments], console=Console(width=200)) == 1


def test_missing_default_package_is_scaffolded_and_an_existing_one_left_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    first = locate_package("llama")
    assert first.scaffolded and (first.path / "modeling_llama.py").is_file()
    edited = first.path / "modeling_llama.py"
    edited.write_text(edited.read_text() + "\n# a contributor's edit\n")
    again = locate_package("llama")
    assert not again.scaffolded and edited.read_text().endswith("# a contributor's edit\n")


def test_checks_run_in_parts_by_tp_size_and_a_topology_change_stays_whole() -> None:
    planned = {entry.name: entry for entry in plan("llama", "full")}
    parts = planned["parity"].parts()
    assert [part.tp_sizes for part in parts] == [(1,), (2,), (4,), (8,)]
    together = [configuration for part in parts for configuration in part.configurations]
    assert sorted(map(repr, together)) == sorted(map(repr, planned["parity"].configurations))
    assert planned["topology_change"].parts() == [planned["topology_change"]]


def test_a_pass_that_touched_a_result_changing_deviation_is_a_warn_naming_it() -> None:
    from conformance.backends.reference.deviations import by_id
    from conformance.harness.protocol import warn_where_trainium_differs
    from conformance.results import CheckResult

    layout_only = CheckResult("round_trip", {"tp_size": 2}, Status.PASS, deviations=["ON-11"])
    warn_where_trainium_differs(layout_only)
    assert layout_only.status is Status.PASS and layout_only.reasons == []

    bf16_without_sp = CheckResult("bf16_smoke", {"tp_size": 2}, Status.PASS, deviations=["ON-11", "NXD-07"])
    warn_where_trainium_differs(bf16_without_sp)
    assert bf16_without_sp.status is Status.WARN
    assert bf16_without_sp.reasons == [
        f"passes on the reference backend, but NXD-07 applies: {by_id('NXD-07').trainium_impact}"
    ]

    failed = CheckResult(
        "parity", {"tp_size": 2}, Status.FAIL, reasons=["logits differ"], deviations=["NXD-07"]
    )
    warn_where_trainium_differs(failed)
    assert failed.status is Status.FAIL and failed.reasons == ["logits differ"]


def test_a_pass_with_replicated_kv_heads_carries_over_to_trn1_but_is_a_warn_on_trn2() -> None:
    """NXD-11: the reference always uses TRN1's K/V layout; TRN2 pairs other ranks (deviations.py)."""
    from conformance.backends.reference.deviations import by_id
    from conformance.harness.protocol import warn_where_trainium_differs
    from conformance.results import CheckResult

    on_trn1 = CheckResult("parity", {"tp_size": 4}, Status.PASS, deviations=["NXD-11", "NXD-12"])
    warn_where_trainium_differs(on_trn1, "trn1")
    assert on_trn1.status is Status.PASS and on_trn1.reasons == []

    on_trn2 = CheckResult("parity", {"tp_size": 4}, Status.PASS, deviations=["NXD-11", "NXD-12"])
    warn_where_trainium_differs(on_trn2, "trn2")
    assert on_trn2.status is Status.WARN
    assert on_trn2.reasons == [
        f"passes on the reference backend, but NXD-11 applies: {by_id('NXD-11').trainium_impact}"
    ]
    with pytest.raises(ValueError, match="unknown platform 'trn9'"):
        warn_where_trainium_differs(on_trn1, "trn9")


def test_with_the_checkout_host_the_kit_hosts_deviations_are_not_cited() -> None:
    """ON-* deviations describe the kit's host; with --host checkout the release's own host ran."""
    from conformance.harness.protocol import drop_kit_host_deviations, warn_where_trainium_differs
    from conformance.results import CheckResult

    result = CheckResult("overfit", {"tp_size": 2}, Status.PASS, deviations=["NXD-12", "ON-07", "ON-11"])
    drop_kit_host_deviations(result)
    warn_where_trainium_differs(result)
    assert result.deviations == ["NXD-12"] and result.status is Status.PASS


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--host", "checkout"], "--host checkout needs --repo PATH"),
        (["--host", "checkout", "--repo", "."], "not an optimum-neuron checkout"),
    ],
)
def test_the_checkout_host_without_a_checkout_is_a_usage_error(
    arguments: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["llama", "--checks", "parity", *arguments], console=Console(width=300))
    assert status == 2
    assert message in capsys.readouterr().err
