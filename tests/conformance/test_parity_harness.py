"""The parity check on the hand-written tiny parallel Llama (tests/backend/tiny_parallel_llama), which is
known to be right: every case of the llama matrix passes with its figures, the attention layout it reports
is the one written out below, and deliberately broken copies of the package fail with figures that show
the mismatch. The oracle is transformers' model (eager, fp32) on the same checkpoint; the gradient names
are checked against transformers' own parameter list.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import transformers

from conformance.checks import RunSettings
from conformance.checks.parity import CHECK, ParityConfig, matrix
from conformance.results import CheckResult, Status
from reference_models import build, variant
from reference_models.catalogue import kv_size_multiplier

TINY_LLAMA = Path(__file__).parents[1] / "backend" / "tiny_parallel_llama"
# The hand-written model refuses attention/MLP biases, so `llama/features` is not for it.
VARIANTS = ["gqa", "mqa", "mha", "tied", "head-dim", "odd-vocab"]
SEP, FUSED, GQA = "separate", "fused", "gqa"
# (variant, T, fuse_qkv) -> layout every layer must report (contributing guide's rule, by hand).
LAYOUT = {
    **{("gqa", t, f): SEP for t in (1, 2) for f in (False, True)},
    ("gqa", 4, False): GQA,
    ("gqa", 4, True): GQA,
    ("mqa", 1, False): SEP,
    **{("mqa", t, f): GQA for t in (2, 4) for f in (False, True)},
    **{("mha", t, False): SEP for t in (1, 2, 4)},
    **{("mha", t, True): FUSED for t in (1, 2, 4)},
    **{("tied", t, False): SEP for t in (1, 2, 4)},
    **{("head-dim", t, False): SEP for t in (1, 2)},
    ("head-dim", 4, False): GQA,
    ("head-dim", 4, True): GQA,
    **{("odd-vocab", t, False): SEP for t in (1, 2)},
}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("reference-models")


@pytest.fixture(scope="module")
def settings(cache: Path) -> RunSettings:
    return RunSettings(cache_dir=cache)


@pytest.fixture(scope="module")
def results(settings: RunSettings) -> list[CheckResult]:
    return CHECK.run(TINY_LLAMA, matrix("llama", variants=VARIANTS), settings)


def _broken_copy(tmp_path: Path, name: str, old: str, new: str) -> Path:
    """The tiny Llama package copied under another folder name, with one source edit."""
    target = tmp_path / name
    shutil.copytree(TINY_LLAMA, target, ignore=shutil.ignore_patterns("__pycache__"))
    modeling = target / "modeling_llama.py"
    source = modeling.read_text()
    assert source.count(old) >= 1, f"the fixture changed: {old!r} not found"
    modeling.write_text(source.replace(old, new))
    return target


def _key(result: CheckResult) -> tuple[str, int, bool]:
    c = result.configuration
    return c["variant"].split("/")[1], c["tp_size"], c["fuse_qkv"]


def test_the_matrix_covers_every_tp_size_sp_setting_and_layout(results: list[CheckResult]) -> None:
    cases = {tuple(r.configuration.values()) for r in results}
    assert len(cases) == len(results) == 39
    for tp_size, sp in ((1, False), (2, False), (2, True), (4, False), (4, True)):
        reached = {
            layout
            for r in results
            if (r.configuration["tp_size"], r.configuration["sequence_parallel"]) == (tp_size, sp)
            for layout in r.figures.get("attention_layouts", [])
        }
        assert reached == ({SEP, FUSED} if tp_size == 1 else {SEP, FUSED, GQA}), (tp_size, sp)


def test_every_case_of_the_hand_written_llama_passes(results: list[CheckResult]) -> None:
    failed = [f"{r.label}: {r.reasons}" for r in results if r.status is not Status.PASS]
    assert not failed, "\n".join(failed)


def test_reported_attention_layout_is_the_prescribed_one(results: list[CheckResult]) -> None:
    for result in results:
        expected = LAYOUT.get(_key(result))
        if expected is None:
            assert result.figures["outcome"] == "rejected", result.label
            continue
        assert result.figures["expected_attention"] == expected
        assert result.figures["attention_by_module"] == {
            f"model.layers.{i}.self_attn": expected for i in range(2)
        }, result.label


def test_figures_are_recorded_and_within_the_stated_tolerances(
    results: list[CheckResult], cache: Path
) -> None:
    transformers_names = {}
    for result in results:
        figures = result.figures
        if figures["outcome"] == "rejected":
            continue
        key = result.configuration["variant"]
        if key not in transformers_names:
            model = transformers.AutoModelForCausalLM.from_pretrained(build(variant(key), cache))
            transformers_names[key] = {name for name, _ in model.named_parameters()}
        tol = CHECK.tolerances
        assert figures["logits_max_abs_diff"] <= tol.logits_atol and figures["loss_abs_diff"] <= tol.loss_atol
        assert abs(figures["reference_loss"] - 5.5) < 0.5  # ~log(256): the figures come from a real forward
        assert set(figures["gradient_ratios"]) == transformers_names[key], result.label
        assert all(0 <= ratio <= 1 for ratio in figures["gradient_ratios"].values())
        assert figures["tensors_within_bound"] == figures["tensors_compared"] == len(transformers_names[key])
        assert figures["sequence_parallel_effective"] == (
            result.configuration["sequence_parallel"] and result.configuration["tp_size"] > 1
        )
        assert figures["logits_layout"] == "vocab-parallel"
        assert result.seconds > 0 and "fp32" in result.tolerance
        assert CheckResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result
        assert not (figures["load_missing_keys"] or figures["load_unexpected_keys"] or figures["no_gradient"])
        norms = {name for name in figures["gradient_ratios"] if name.endswith("norm.weight")}
        assert norms <= set(figures["replicated_disagreement"]) and len(norms) == 5
        assert max(figures["replicated_disagreement"].values()) <= 1e-7, result.label


def test_replicated_kv_heads_hold_identical_gradients(results: list[CheckResult]) -> None:
    replicated = [r for r in results if r.figures.get("attention_layouts") == [GQA]]
    assert replicated
    for result in replicated:
        names = set(result.figures["kv_replica_disagreement"])
        per_layer = {f"model.layers.{i}.self_attn.{p}_proj.weight" for i in range(2) for p in "kv"}
        assert names == per_layer, result.label  # m = T / kv heads >= 2 in every GQA case here
        assert max(result.figures["kv_replica_disagreement"].values()) <= 1e-7
        # The reference backend went through the GQA layer's collectives, and through the tile layout's
        # kv-shared groups where TRN2 would pair other ranks (1 < m < T).
        tp_size = result.configuration["tp_size"]
        m = kv_size_multiplier(variant(result.configuration["variant"]).config().num_key_value_heads, tp_size)
        assert "NXD-12" in result.deviations
        assert ("NXD-11" in result.deviations) == (1 < m < tp_size), result.label


def test_vocabulary_not_divisible_by_t_is_refused_clearly(results: list[CheckResult]) -> None:
    refused = [r for r in results if _key(r)[:2] == ("odd-vocab", 4)]
    assert refused and all(r.figures["outcome"] == "rejected" and r.status is Status.PASS for r in refused)
    assert "250" in refused[0].traceback and "4" in refused[0].traceback
    assert refused[0].reasons[0].startswith("refused as expected: ")


def test_swapped_gate_and_up_fail_on_logits_and_gradients(tmp_path: Path, settings: RunSettings) -> None:
    broken = _broken_copy(
        tmp_path,
        "tiny_llama_swapped_gate_up",
        "gate, up = self.gate_up_proj(x).split(self.split_size, dim=2)",
        "up, gate = self.gate_up_proj(x).split(self.split_size, dim=2)",
    )
    configurations = [ParityConfig("llama/gqa", 1), ParityConfig("llama/gqa", 2, sequence_parallel=True)]
    for result in CHECK.run(broken, configurations, settings):
        assert result.status is Status.FAIL, result.label
        assert result.figures["logits_max_abs_diff"] > 1e-3
        assert any("logits differ" in reason for reason in result.reasons)
        assert "model.layers.0.mlp.gate_proj.weight" in result.figures["gradients_out_of_bound"]
        assert result.figures["attention_layouts"] == [SEP]


def test_norm_not_marked_for_sequence_parallelism_fails_on_gradients_only(
    tmp_path: Path, settings: RunSettings
) -> None:
    broken = _broken_copy(
        tmp_path,
        "tiny_llama_unmarked_norm",
        "self.weight.sequence_parallel_enabled = sequence_parallel_enabled",
        "self.weight.sequence_parallel_enabled = False",
    )
    on, off = CHECK.run(
        broken, [ParityConfig("llama/gqa", 2, sequence_parallel=True), ParityConfig("llama/gqa", 2)], settings
    )
    # The forward is right; each rank's norm gradient covers only its sequence shard and is never summed.
    assert on.status is Status.FAIL and on.figures["logits_max_abs_diff"] <= CHECK.tolerances.logits_atol
    assert on.figures["loss_abs_diff"] <= CHECK.tolerances.loss_atol
    over = set(on.figures["gradients_out_of_bound"])
    assert over == {"model.norm.weight"} | {
        f"model.layers.{i}.{norm}.weight"
        for i in range(2)
        for norm in ("input_layernorm", "post_attention_layernorm")
    }
    assert any("gradient(s) out of bounds" in reason for reason in on.reasons)
    # The diagnosis: those replicated gradients differ between the two ranks.
    assert {name for name, spread in on.figures["replicated_disagreement"].items() if spread > 1e-6} == over
    assert any("different gradients on different ranks" in reason for reason in on.reasons)
    assert off.status is Status.PASS, off.reasons  # without SP the flag is irrelevant


def test_dropped_spec_fails_with_loading_and_gradient_name_figures(
    tmp_path: Path, settings: RunSettings
) -> None:
    broken = _broken_copy(
        tmp_path,
        "tiny_llama_no_mlp_spec",
        "        self.gate_up_proj = ColumnParallelLinear(",
        "        self.specs = ModelWeightTransformationSpecs()\n        self.gate_up_proj = ColumnParallelLinear(",
    )
    (result,) = CHECK.run(broken, [ParityConfig("llama/gqa", 2)], settings)
    figures = result.figures
    assert result.status is Status.FAIL
    assert "model.layers.0.mlp.gate_up_proj.weight" in figures["load_missing_keys"]
    assert "model.layers.0.mlp.gate_proj.weight" in figures["load_unexpected_keys"]
    assert "model.layers.0.mlp.gate_proj.weight" in figures["missing_gradients"]
    assert "model.layers.0.mlp.gate_up_proj.weight" in figures["unexpected_gradients"]
    assert figures["logits_max_abs_diff"] > 1e-3
    assert any(reason.startswith("checkpoint keys not loaded") for reason in result.reasons)
    assert "ON-13" in result.deviations  # the reference host named and initialised the uncovered layer


def test_a_package_that_cannot_load_is_a_fail_naming_the_import(
    tmp_path: Path, settings: RunSettings
) -> None:
    broken = _broken_copy(
        tmp_path, "tiny_llama_bad_import", "from ..config import", "from ..no_such_module import"
    )
    (result,) = CHECK.run(broken, [ParityConfig("llama/gqa", 2)], settings)
    assert result.status is Status.FAIL and result.figures["outcome"] == "error"
    assert result.reasons[0].startswith("mounting the package failed: ")
    assert "no_such_module" in result.reasons[0] and "no_such_module" in result.traceback
