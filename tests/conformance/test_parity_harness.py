"""The parity harness on the hand-written tiny parallel Llama (tests/backend/tiny_parallel_llama), which is
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

from conformance.checks.parity import (
    FAIL,
    PASS,
    REJECTED,
    ParityCase,
    ParityResult,
    check_parity,
    check_parity_cases,
    parity_matrix,
)
from reference_models import build, variant

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
def matrix(cache: Path) -> list[ParityResult]:
    return check_parity_cases(TINY_LLAMA, parity_matrix("llama", variants=VARIANTS), cache_dir=cache)


def _broken_copy(tmp_path: Path, name: str, old: str, new: str) -> Path:
    """The tiny Llama package copied under another folder name, with one source edit."""
    target = tmp_path / name
    shutil.copytree(TINY_LLAMA, target, ignore=shutil.ignore_patterns("__pycache__"))
    modeling = target / "modeling_llama.py"
    source = modeling.read_text()
    assert source.count(old) >= 1, f"the fixture changed: {old!r} not found"
    modeling.write_text(source.replace(old, new))
    return target


def test_the_matrix_covers_every_tp_size_sp_setting_and_layout(matrix: list[ParityResult]) -> None:
    cases = {(r.case.variant, r.case.tp_size, r.case.sequence_parallel, r.case.fuse_qkv) for r in matrix}
    assert len(cases) == len(matrix) == 39
    for tp_size, sp in ((1, False), (2, False), (2, True), (4, False), (4, True)):
        reached = {
            layout
            for r in matrix
            if (r.case.tp_size, r.case.sequence_parallel) == (tp_size, sp)
            for layout in r.attention.values()
        }
        assert reached == ({SEP, FUSED} if tp_size == 1 else {SEP, FUSED, GQA}), (tp_size, sp)


def test_every_case_of_the_hand_written_llama_passes(matrix: list[ParityResult]) -> None:
    failed = [r.summary() for r in matrix if not r.passed]
    assert not failed, "\n".join(failed)


def test_reported_attention_layout_is_the_prescribed_one(matrix: list[ParityResult]) -> None:
    for result in matrix:
        name = result.case.variant.split("/")[1]
        expected = LAYOUT.get((name, result.case.tp_size, result.case.fuse_qkv))
        if expected is None:
            assert result.outcome == REJECTED, result.summary()
            continue
        assert result.expected_attention == expected
        assert result.attention == {f"model.layers.{i}.self_attn": expected for i in range(2)}, (
            result.case.label
        )


def test_figures_are_recorded_and_within_the_stated_tolerances(matrix: list[ParityResult]) -> None:
    transformers_names = {}
    for result in matrix:
        if result.outcome == REJECTED:
            continue
        checkpoint = result.checkpoint
        if checkpoint not in transformers_names:
            model = transformers.AutoModelForCausalLM.from_pretrained(checkpoint)
            transformers_names[checkpoint] = {name for name, _ in model.named_parameters()}
        tol = result.tolerances
        assert result.logits_max_abs_diff is not None and result.logits_max_abs_diff <= tol.logits_atol
        assert result.loss_abs_diff is not None and result.loss_abs_diff <= tol.loss_atol
        assert abs(result.reference_loss - 5.5) < 0.5  # ~log(256): the figures come from a real forward
        assert set(result.gradients) == transformers_names[checkpoint], result.case.label
        assert all(figure.within and figure.reference_max_abs > 0 for figure in result.gradients.values())
        assert result.sequence_parallel_effective == (
            result.case.sequence_parallel and result.case.tp_size > 1
        )
        assert result.seconds > 0 and "fp32" in tol.reason
        assert json.loads(json.dumps(result.to_dict()))["label"] == result.case.label
        assert not (result.missing_keys or result.unexpected_keys or result.no_gradient)
        norms = {name for name in result.gradients if name.endswith("norm.weight")}
        assert norms <= set(result.replicated_disagreement) and len(norms) == 5
        assert max(result.replicated_disagreement.values()) <= 1e-7, result.case.label


def test_replicated_kv_heads_hold_identical_gradients(matrix: list[ParityResult]) -> None:
    replicated = [r for r in matrix if r.attention and set(r.attention.values()) == {GQA}]
    assert replicated
    for result in replicated:
        names = set(result.kv_replica_disagreement)
        per_layer = {f"model.layers.{i}.self_attn.{p}_proj.weight" for i in range(2) for p in "kv"}
        assert names == per_layer, result.case.label  # m = T / kv heads >= 2 in every GQA case here
        assert max(result.kv_replica_disagreement.values()) <= 1e-7


def test_vocabulary_not_divisible_by_t_is_refused_clearly(matrix: list[ParityResult]) -> None:
    refused = [r for r in matrix if r.case.variant == "llama/odd-vocab" and r.case.tp_size == 4]
    assert refused and all(r.outcome == REJECTED and r.status == PASS for r in refused)
    assert "250" in refused[0].error and "4" in refused[0].error


def test_swapped_gate_and_up_fail_on_logits_and_gradients(tmp_path: Path, cache: Path) -> None:
    broken = _broken_copy(
        tmp_path,
        "tiny_llama_swapped_gate_up",
        "gate, up = self.gate_up_proj(x).split(self.split_size, dim=2)",
        "up, gate = self.gate_up_proj(x).split(self.split_size, dim=2)",
    )
    cases = [ParityCase("llama/gqa", 1), ParityCase("llama/gqa", 2, sequence_parallel=True)]
    for result in check_parity_cases(broken, cases, cache_dir=cache):
        assert result.status == FAIL, result.summary()
        assert result.logits_max_abs_diff > 1e-3
        assert any("logits differ" in reason for reason in result.reasons)
        assert not result.gradients["model.layers.0.mlp.gate_proj.weight"].within
        assert result.attention == {f"model.layers.{i}.self_attn": SEP for i in range(2)}


def test_norm_not_marked_for_sequence_parallelism_fails_on_gradients_only(
    tmp_path: Path, cache: Path
) -> None:
    broken = _broken_copy(
        tmp_path,
        "tiny_llama_unmarked_norm",
        "self.weight.sequence_parallel_enabled = sequence_parallel_enabled",
        "self.weight.sequence_parallel_enabled = False",
    )
    on, off = check_parity_cases(
        broken,
        [ParityCase("llama/gqa", 2, sequence_parallel=True), ParityCase("llama/gqa", 2)],
        cache_dir=cache,
    )
    # The forward is right; each rank's norm gradient covers only its sequence shard and is never summed.
    assert on.status == FAIL and on.logits_max_abs_diff <= on.tolerances.logits_atol
    assert on.loss_abs_diff <= on.tolerances.loss_atol
    over = {name for name, figure in on.gradients.items() if not figure.within}
    assert over == {"model.norm.weight"} | {
        f"model.layers.{i}.{norm}.weight"
        for i in range(2)
        for norm in ("input_layernorm", "post_attention_layernorm")
    }
    assert any("gradient(s) out of bounds" in reason for reason in on.reasons)
    # The diagnosis: those replicated gradients differ between the two ranks.
    assert {name for name, spread in on.replicated_disagreement.items() if spread > 1e-6} == over
    assert any("different gradients on different ranks" in reason for reason in on.reasons)
    assert off.status == PASS, off.summary()  # without SP the flag is irrelevant


def test_dropped_spec_fails_with_loading_and_gradient_name_figures(tmp_path: Path, cache: Path) -> None:
    broken = _broken_copy(
        tmp_path,
        "tiny_llama_no_mlp_spec",
        "        self.gate_up_proj = ColumnParallelLinear(",
        "        self.specs = ModelWeightTransformationSpecs()\n        self.gate_up_proj = ColumnParallelLinear(",
    )
    result = check_parity(broken, "llama/gqa", 2, cache_dir=cache)
    assert result.status == FAIL
    assert "model.layers.0.mlp.gate_up_proj.weight" in result.missing_keys
    assert "model.layers.0.mlp.gate_proj.weight" in result.unexpected_keys
    assert "model.layers.0.mlp.gate_proj.weight" in result.missing_gradients
    assert "model.layers.0.mlp.gate_up_proj.weight" in result.unexpected_gradients
    assert result.logits_max_abs_diff > 1e-3
    summary = result.summary()
    assert "FAIL" in summary and "checkpoint keys not loaded" in summary and "max |d logits|" in summary


def test_a_package_that_cannot_load_is_an_error_result(tmp_path: Path, cache: Path) -> None:
    broken = _broken_copy(
        tmp_path, "tiny_llama_bad_import", "from ..config import", "from ..no_such_module import"
    )
    result = check_parity(broken, "llama/gqa", 2, cache_dir=cache)
    assert result.status == FAIL and result.outcome == "error"
    assert "no_such_module" in result.error


def test_checkpoints_come_from_the_reference_model_cache(matrix: list[ParityResult], cache: Path) -> None:
    for result in matrix:
        assert Path(result.checkpoint) == build(variant(result.case.variant), cache)
