"""A model that refuses a configuration with a clear error while it is built is UNSUPPORTED; a crash while
it is built is a FAIL.

Oracle: the rule written in `conformance.harness.job_errors` (Python's `NotImplementedError`, or a
`ValueError` that says "not supported", raised during construction) on hand-made errors, and two
hand-written copies of the generated llama: one whose causal LM refuses `fuse_qkv` with a
`NotImplementedError` naming it, one that reads an attribute it never set.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from conformance.checks import RunSettings
from conformance.checks.round_trip import CHECK, RoundTripConfig
from conformance.harness.job_errors import JobError, is_refusal
from conformance.results import Status

CONSTRUCTOR = "        self.trn_config = trn_config\n        self.model = LlamaModel(config, trn_config)\n"
REFUSES_FUSE_QKV = (
    CONSTRUCTOR,
    "        if trn_config.fuse_qkv:\n"
    '            raise NotImplementedError("fuse_qkv is not supported by this model; use fuse_qkv=False")\n'
    + CONSTRUCTOR,
)
CRASHES_WHEN_FUSED = (
    CONSTRUCTOR,
    "        if trn_config.fuse_qkv:\n            self.qkv_layout.check()\n" + CONSTRUCTOR,
)


@pytest.mark.parametrize(
    ("exception_type", "message", "refusal"),
    [
        ("NotImplementedError", "NotImplementedError: sliding windows on the flash path", True),
        ("ValueError", "ValueError: fuse_qkv is not supported with 2 kv heads", True),
        ("ValueError", "ValueError: this model does not support pipeline parallelism", True),
        ("ValueError", "ValueError: expected 4 heads, got 3", False),
        ("AttributeError", "AttributeError: 'Foo' object has no attribute 'bar' (not supported)", False),
        ("RuntimeError", "RuntimeError: shape '[2, 8]' is invalid for input of size 12", False),
        ("AssertionError", "AssertionError: not supported", False),
    ],
)
def test_only_a_clear_refusal_is_one(exception_type: str, message: str, refusal: bool) -> None:
    assert is_refusal(exception_type, message) is refusal
    during_construction = JobError("from_pretrained at T=2", exception_type, message, "", construction=True)
    assert during_construction.refusal is refusal
    # The same error while running (not building) the model, or a crashed rank call, is never a refusal.
    assert not JobError("the forward at T=2", exception_type, message, "").refusal
    assert not JobError(
        "the rank call at T=2", exception_type, message, "", construction=True, crashed=True
    ).refusal


def test_a_refused_configuration_is_unsupported(
    broken_copy: Callable[[str, list[tuple[str, str]]], Path], checkpoint_cache: Path
) -> None:
    settings = RunSettings(cache_dir=checkpoint_cache)
    configurations = [RoundTripConfig("llama/mha", 1, fuse_qkv=True), RoundTripConfig("llama/mha", 1)]
    refused, plain = CHECK.run(broken_copy("llama", [REFUSES_FUSE_QKV]), configurations, settings)
    assert refused.status is Status.UNSUPPORTED
    (reason,) = refused.reasons
    assert reason.startswith(
        "the model refuses this configuration while it is built: NotImplementedError: fuse_qkv is not "
        "supported by this model; use fuse_qkv=False [at "
    )
    assert (
        refused.figures == {"refused_at": "from_pretrained at T=1"}
        and "modeling_llama.py" in refused.traceback
    )
    assert plain.status is Status.PASS, plain.reasons


def test_a_crash_while_the_model_is_built_is_a_fail(
    broken_copy: Callable[[str, list[tuple[str, str]]], Path], checkpoint_cache: Path
) -> None:
    settings = RunSettings(cache_dir=checkpoint_cache)
    fused = RoundTripConfig("llama/mha", 1, fuse_qkv=True)
    (crashed,) = CHECK.run(broken_copy("llama", [CRASHES_WHEN_FUSED]), [fused], settings)
    assert crashed.status is Status.FAIL
    assert crashed.reasons[0].startswith("from_pretrained at T=1 failed: rank 0: AttributeError: ")
    assert "qkv_layout" in crashed.reasons[0]
