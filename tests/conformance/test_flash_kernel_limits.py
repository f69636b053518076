"""Flash-attention cases whose config needs what the NKI kernel lacks: a refusal naming it is UNSUPPORTED.

Oracle for the limits: the configs themselves (a sliding window shorter than the sequence on some layer,
logit softcapping). End to end, mistral's sliding window (5 < 16 in every catalogue variant): the
generated model refuses its flash path naming the window, which is UNSUPPORTED (listed, not a pass, not a
defect); a copy whose guard was removed runs the kernel over the whole sequence, and parity against
transformers' windowed attention fails.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from conformance.checks import RunSettings
from conformance.checks.parity import CHECK, ParityConfig
from conformance.model_runs.flash_kernel_limits import (
    SLIDING_WINDOW,
    SOFTCAPPING,
    flash_kernel_limits,
    refusal_names_a_limit,
)
from conformance.results import Status
from reference_models import variant

SLIDING_WINDOW_GUARD = (
    "    if sliding_window is not None and sliding_window < query.shape[-2]:\n"
    "        raise NotImplementedError(",
    "    if False:\n        raise NotImplementedError(",
)
FLASH = "flash_attention_2"


@pytest.mark.parametrize(
    ("key", "length", "limits"),
    [
        ("llama/gqa", 16, []),
        ("mistral/gqa", 16, [SLIDING_WINDOW]),  # window 5 on every layer
        ("mistral/gqa", 4, []),  # the window covers the whole sequence
        ("qwen2/gqa", 16, []),  # use_sliding_window=False: no layer is windowed
        ("qwen2/features", 16, [SLIDING_WINDOW]),  # layer 1 is windowed
        ("gemma2/gqa", 16, [SLIDING_WINDOW, SOFTCAPPING]),  # window 5 on layer 0, softcapped logits
        ("gemma2/gqa", 4, [SOFTCAPPING]),  # the window covers the sequence; the softcap remains
    ],
)
def test_limits_are_read_from_the_config(key: str, length: int, limits: list[str]) -> None:
    assert flash_kernel_limits(variant(key).config(), length) == limits


def test_a_refusal_must_name_flash_attention_and_the_limit() -> None:
    named = "NotImplementedError: the NKI flash-attention kernel has no sliding window; use eager"
    assert refusal_names_a_limit(named, [SLIDING_WINDOW])
    assert not refusal_names_a_limit(named, [SOFTCAPPING])
    assert not refusal_names_a_limit("RuntimeError: sliding window too short", [SLIDING_WINDOW])


@pytest.fixture
def settings(checkpoint_cache: Path) -> RunSettings:
    return RunSettings(cache_dir=checkpoint_cache)


def test_the_generated_refusal_passes_and_a_missing_guard_fails(
    generated: Callable[[str], Path],
    broken_copy: Callable[[str, list[tuple[str, str]]], Path],
    settings: RunSettings,
) -> None:
    configurations = [ParityConfig("mistral/gqa", 2, sequence_parallel=True, attn_implementation=FLASH)]
    (refused,) = CHECK.run(generated("mistral"), configurations, settings)
    assert refused.status is Status.UNSUPPORTED, refused.reasons
    assert refused.figures["outcome"] == "rejected"
    assert "no sliding window" in refused.figures["refused_as_expected"]
    assert refused.reasons[0].startswith("the model refuses the flash-attention path: ")

    (unguarded,) = CHECK.run(broken_copy("mistral", [SLIDING_WINDOW_GUARD]), configurations, settings)
    assert unguarded.status is Status.FAIL
    assert unguarded.figures["outcome"] == "compared"
    assert any(reason.startswith("logits differ") for reason in unguarded.reasons), unguarded.reasons


def test_a_flash_case_is_labelled_apart_from_its_eager_twin(
    generated: Callable[[str], Path], settings: RunSettings
) -> None:
    eager = ParityConfig("mistral/gqa", 2, sequence_parallel=True)
    flash = ParityConfig("mistral/gqa", 2, sequence_parallel=True, attn_implementation=FLASH)
    results = CHECK.run(generated("mistral"), [eager, flash], settings)
    assert [result.label for result in results] == [
        "parity mistral/gqa T=2 SP=on fuse_qkv=off",
        "parity mistral/gqa T=2 SP=on fuse_qkv=off attn=flash_attention_2",
    ]
