"""Shared helpers for the scaffold tests: one analysis per model type per session."""

from __future__ import annotations

import functools

import pytest

from scaffold.analysis import analyze
from scaffold.blueprint import Blueprint
from scaffold.source import ModelSource, locate

TARGETS = ("llama", "mistral", "qwen2", "qwen3", "granite")
MOE_TARGETS = ("mixtral", "qwen3_moe")  # the mixture-of-experts models NXS040's examples come from
NORM_TARGETS = ("olmo2", "cohere")  # the q/k norms NXS026 shards: full width, one row per head
ACTIVATION_TARGETS = ("apertus",)  # NXS025: an activation with parameters (xIELU)
EXAMPLE_MODELS = (
    *TARGETS,
    "phi3",
    "gpt_neox",
    "falcon",
    "codegen",
    *MOE_TARGETS,
    *NORM_TARGETS,
    *ACTIVATION_TARGETS,
    "gemma3_text",
    "qwen2_moe",
    "gpt2",
    "modernbert-decoder",
    "gpt_bigcode",
    "bloom",
    "mpt",
)  # rules may show their examples on these (phi3: projections fused in the source; gpt_neox: q|k|v
# interleaved per head in the source; falcon: q|k|v split by a layout helper, ALiBi read as off; codegen:
# q|v|k cut into groups in the forward; gemma3_text: a config flag that sets a mask option; qwen2_moe: the
# pre-refactor attention and mask forms, read as the current ones by scaffold.analysis.current_forms; gpt2:
# a cross-attention path a causal LM never takes; modernbert-decoder: _init_weights re-draws child layers;
# gpt_bigcode: a scaled re-draw by module class; bloom: an ALiBi bias built once for every layer, added to
# inline eager scores; mpt: the same, the attention filling a boolean mask)


@functools.cache
def located(model_type: str) -> ModelSource:
    """The installed source of `model_type` (cached)."""
    return locate(model_type)


@functools.cache
def blueprint_of(model_type: str) -> Blueprint:
    """The Blueprint of the installed `model_type` (cached: analysis is deterministic)."""
    return analyze(located(model_type))


def source_line(model_type: str, line: int) -> str:
    """Text of a 1-based line of the installed modeling file."""
    return located(model_type).modeling_file.read_text(encoding="utf-8").splitlines()[line - 1]


@pytest.fixture(params=TARGETS)
def target(request: pytest.FixtureRequest) -> str:
    """Each of the five target model types."""
    return request.param
