"""Profiles: which checks run, in which configurations, for one architecture.

- `quick` (the default, minutes on a laptop): TP 1 and 2, and the smallest TP that reaches NxD's GQA
  layer; one of each checkpoint check; overfit with sequence parallelism; a bf16 smoke run.
- `full`: TP up to 8, every catalogue variant and attention layout, sequence parallelism on and off, the
  Neuron flash-attention path, checkpoint checks across TP sizes.

A configuration is plain data (it goes into reports as is). The catalogue decides what each variant
reaches at each TP size (`reference_models.attention_variant`); a variant that cannot be built at a TP
size is still planned for parity, where the expected outcome is a clear refusal.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from reference_models import Variant, variants_for

PROFILES = ("quick", "full")
CHECK_ORDER = ("parity", "round_trip", "topology_change", "lora_round_trip", "overfit", "bf16_smoke")

OVERFIT_STEPS = 30
BF16_STEPS = 8


@dataclass(frozen=True)
class PlannedCheck:
    """One check and the configurations it runs in (one result per configuration)."""

    check: str
    configurations: tuple[dict[str, Any], ...]

    def __len__(self) -> int:
        return len(self.configurations)

    @property
    def tp_sizes(self) -> tuple[int, ...]:
        """The TP sizes the configurations run at, in order of first appearance (none for a check whose
        configurations span two sizes, a topology change)."""
        if any("source_tp_size" in c or "tp_size" not in c for c in self.configurations):
            return ()
        return tuple(dict.fromkeys(int(c["tp_size"]) for c in self.configurations))

    def parts(self) -> list[PlannedCheck]:
        """The configurations split by TP size (one launcher call each, reported as it finishes); checks
        whose configurations span two sizes (a topology change) stay whole."""
        if not self.tp_sizes:
            return [self]
        return [
            PlannedCheck(self.check, tuple(c for c in self.configurations if int(c["tp_size"]) == tp_size))
            for tp_size in self.tp_sizes
        ]


def plan(model_type: str, profile: str = "quick", checks: Iterable[str] | None = None) -> list[PlannedCheck]:
    """The checks of `profile` for `model_type`, in `CHECK_ORDER`, optionally limited to `checks`."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    variants = {entry.name: entry for entry in variants_for(model_type)}
    wanted = set(CHECK_ORDER if checks is None else checks)
    unknown = wanted - set(CHECK_ORDER)
    if unknown:
        raise ValueError(f"unknown checks {sorted(unknown)}; known: {', '.join(CHECK_ORDER)}")
    builder = _quick if profile == "quick" else _full
    planned = builder(model_type, variants)
    return [
        PlannedCheck(name, tuple(planned[name]))
        for name in CHECK_ORDER
        if name in wanted and planned.get(name)
    ]


def smallest_gqa_tp(variants: dict[str, Variant], tp_sizes: Iterable[int] = (2, 4, 8)) -> tuple[str, int]:
    """The (variant, TP size) with the smallest TP at which a catalogue variant reaches the GQA layer."""
    for tp_size in tp_sizes:
        for name, entry in variants.items():
            if entry.unsupported_reason(tp_size) is None and entry.attention(tp_size, False) == "gqa":
                return name, tp_size
    raise LookupError("no catalogue variant reaches the GQA layer at TP <= 8")


def _key(model_type: str, name: str) -> str:
    return f"{model_type}/{name}"


def _parity(
    variant_key: str, tp_size: int, sequence_parallel: bool = False, fuse_qkv: bool = False, **extra: Any
):
    return {
        "variant": variant_key,
        "tp_size": tp_size,
        "sequence_parallel": sequence_parallel,
        "fuse_qkv": fuse_qkv,
        **extra,
    }


def _quick(model_type: str, variants: dict[str, Variant]) -> dict[str, list[dict[str, Any]]]:
    base = _key(model_type, "gqa")
    gqa_name, gqa_tp = smallest_gqa_tp(variants)
    gqa = _key(model_type, gqa_name)
    parity = [
        _parity(base, 1),
        _parity(base, 2),
        _parity(base, 2, sequence_parallel=True),
        _parity(gqa, gqa_tp, sequence_parallel=True),
    ]
    round_trip = [{"variant": base, "tp_size": 2, "fuse_qkv": False}]
    if "tied" in variants:
        round_trip.append({"variant": _key(model_type, "tied"), "tp_size": 2, "fuse_qkv": False})
    return {
        "parity": parity,
        "round_trip": round_trip,
        "topology_change": [{"variant": base, "source_tp_size": 2, "tp_size": 1}],
        "lora_round_trip": [{"variant": gqa, "tp_size": gqa_tp, "fuse_qkv": False}],
        "overfit": [{"variant": base, "tp_size": 2, "sequence_parallel": True, "steps": OVERFIT_STEPS}],
        "bf16_smoke": [{"variant": base, "tp_size": 2, "sequence_parallel": True, "steps": BF16_STEPS}],
    }


def _full(model_type: str, variants: dict[str, Variant]) -> dict[str, list[dict[str, Any]]]:
    tp_sizes = (1, 2, 4, 8)
    parity = []
    for entry in variants.values():
        for tp_size in tp_sizes:
            plain, fused = entry.attention(tp_size, False), entry.attention(tp_size, True)
            for sp in (False, True):
                if sp and tp_size == 1:
                    continue  # TrainingNeuronConfig turns SP off at T=1: the SP-off case again
                parity.append(_parity(entry.key, tp_size, sp))
                if plain != fused or (plain == "gqa" and sp):
                    parity.append(_parity(entry.key, tp_size, sp, fuse_qkv=True))
    base = _key(model_type, "gqa")
    gqa_name, gqa_tp = smallest_gqa_tp(variants)
    parity += [
        _parity(base, tp, sp, attn_implementation="flash_attention_2")
        for tp, sp in ((1, False), (2, True), (4, True))
    ]
    buildable = [
        (entry, tp)
        for entry in variants.values()
        for tp in (1, 2, 4, 8)
        if entry.unsupported_reason(tp) is None
    ]
    round_trip = [
        {"variant": entry.key, "tp_size": tp, "fuse_qkv": entry.attention(tp, True) == "fused"}
        for entry, tp in buildable
        if tp in (2, 4)
    ]
    topology = [
        {"variant": base, "source_tp_size": source, "tp_size": target}
        for source, target in ((1, 2), (2, 1), (4, 8), (8, 4), (2, 4), (8, 2))
    ]
    lora = [
        {"variant": base, "tp_size": 2, "fuse_qkv": False},
        {"variant": _key(model_type, gqa_name), "tp_size": gqa_tp, "fuse_qkv": False},
        {"variant": base, "tp_size": 4, "fuse_qkv": False},
    ]
    overfit = [
        {"variant": base, "tp_size": tp, "sequence_parallel": sp, "steps": OVERFIT_STEPS}
        for tp, sp in ((1, False), (2, False), (2, True), (4, True))
    ]
    bf16 = [{"variant": base, "tp_size": tp, "sequence_parallel": True, "steps": BF16_STEPS} for tp in (2, 4)]
    return {
        "parity": parity,
        "round_trip": round_trip,
        "topology_change": topology,
        "lora_round_trip": lora,
        "overfit": overfit,
        "bf16_smoke": bf16,
    }
