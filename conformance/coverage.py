"""What a profile does not test, computed from its plan (never a fixed text): TP sizes no check runs at,
the flash-attention path, pipeline parallelism, `TrainingNeuronConfig` options and values no configuration
sets, dtypes, attention layouts no configuration reaches, catalogue variants and checks left out.

Each configuration says what it exercises (`CheckConfig.exercised`); whatever the universe below holds and
no configuration exercised is listed, so the list shrinks by itself when a check starts covering more.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from reference_models import variant, variants_for
from reference_models.catalogue import is_moe

from .harness.protocol import Exercised
from .profiles import PlannedCheck

TP_SIZES = (1, 2, 4, 8)
EP_SIZES = (1, 2)
"""Expert-parallel sizes a mixture-of-experts model is expected to be checked at."""
LAYOUTS = ("separate", "fused", "gqa")
DTYPES = ("float32", "bfloat16")
OPTIONS: tuple[tuple[str, tuple[Any, ...]], ...] = (
    ("sequence_parallel_enabled", (False, True)),
    ("fuse_qkv", (False, True)),
    ("recompute_causal_mask", (True, False)),
    ("gradient_checkpointing", (False, True)),
    ("transpose_nki_inputs", (True, False)),
    ("kv_size_multiplier", ("auto", "explicit")),
)
"""`TrainingNeuronConfig` options that change the computation path, and the values each can take
(`kv_size_multiplier`: inferred by the model, or given explicitly; only where the GQA layer is reached)."""
FLASH = "flash_attention_2"
FLASH_ONLY = frozenset({"transpose_nki_inputs"})
"""Options that only change the flash-attention path."""


def not_tested(model_type: str, planned: Sequence[PlannedCheck], check_names: Iterable[str]) -> list[str]:
    """One line per thing the plan leaves out, in a fixed order."""
    exercised = [(config, config.exercised()) for entry in planned for config in entry.configurations]
    found: list[str] = []
    sizes = {size for _, facts in exercised for size in facts.tp_sizes}
    missing_sizes = [size for size in TP_SIZES if size not in sizes]
    if missing_sizes:
        found.append(f"TP sizes {', '.join(map(str, missing_sizes))}: no check runs at them")
    if is_moe(model_type):
        ep_sizes = {size for _, facts in exercised for size in facts.ep_sizes}
        missing_ep = [size for size in EP_SIZES if size not in ep_sizes]
        if missing_ep:
            found.append(f"expert-parallel sizes {', '.join(map(str, missing_ep))}: no check runs at them")
    if not any(facts.attn_implementation == FLASH for _, facts in exercised):
        found.append(
            "the Neuron flash-attention path (attn_implementation=flash_attention_2, transpose_nki_inputs)"
        )
    if not any(facts.pipeline_parallel_size > 1 for _, facts in exercised):
        found.append(
            "pipeline parallelism (PP > 1): no check runs it (the reference backend does not implement it)"
        )
    seen = {(name, value) for _, facts in exercised for name, value in facts.options}
    flash_run = any(facts.attn_implementation == FLASH for _, facts in exercised)
    for name, values in OPTIONS:
        if name in FLASH_ONLY and not flash_run:
            continue  # the flash-path line above covers it
        for value in values:
            if (name, value) not in seen:
                found.append(f"TrainingNeuronConfig {name}={value}")
    for dtype in DTYPES:
        if not any(facts.dtype == dtype for _, facts in exercised):
            found.append(f"training or running in {dtype}")
    reached = _layouts(exercised)
    missing_layouts = [layout for layout in LAYOUTS if layout not in reached]
    if missing_layouts:
        found.append(f"attention layouts {', '.join(missing_layouts)}: no configuration reaches them")
    used = {config.variant for config, _ in exercised}
    unused = [entry.key for entry in variants_for(model_type) if entry.key not in used]
    if unused:
        found.append(f"catalogue variants {', '.join(unused)}")
    run = {entry.name for entry in planned}
    left_out = [name for name in check_names if name not in run]
    if left_out:
        found.append(f"checks {', '.join(left_out)}: not run")
    return found


def _layouts(exercised: list[tuple[Any, Exercised]]) -> set[str]:
    reached = set()
    for config, facts in exercised:
        fuse_qkv = dict(facts.options).get("fuse_qkv", False)
        entry = variant(config.variant)
        for size in facts.tp_sizes:
            layout = entry.attention(size, bool(fuse_qkv))
            if layout is not None and not entry.unsupported_reason(size):
                reached.add(layout)
    return reached
