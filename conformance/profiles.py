"""Profiles: which checks run, in which configurations, for one architecture.

- `quick` (the default, minutes on a laptop): TP 1 and 2, and the smallest TP that reaches NxD's GQA
  layer, with the padding mask honoured and gradient checkpointing at T=2; one of each checkpoint check;
  the init check at T=2; overfit with sequence parallelism; replicas with SP on and off and on the GQA
  layer; a bf16 smoke run.
- `full`: TP up to 8, every catalogue variant and attention layout, sequence parallelism on and off, the
  Neuron flash-attention path, every `TrainingNeuronConfig` option that changes the computation path both
  ways, checkpoint checks across TP sizes.

Each check plans its own configurations (`Check.plan(profile, catalogue)`); this module asks every
registered check, in order, and keeps the ones with something to run. The catalogue decides what each
variant reaches at each TP size (`reference_models.attention_variant`); a variant that cannot be built at a
TP size is still planned for parity, where the expected outcome is a clear refusal.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from reference_models import Variant, variants_for
from reference_models.catalogue import is_moe

from .harness.protocol import Check, CheckConfig
from .harness.registry import all_checks, check_names

PROFILES = ("quick", "full")
GQA_SEARCH_TP_SIZES = (2, 4, 8)


@dataclass(frozen=True)
class ModelCatalogue:
    """The catalogue variants of one architecture, as plans read them."""

    model_type: str
    variants: dict[str, Variant]

    @classmethod
    def of(cls, model_type: str) -> ModelCatalogue:
        """KeyError (saying why) for a model type the catalogue cannot describe."""
        return cls(model_type, {entry.name: entry for entry in variants_for(model_type)})

    def key(self, name: str) -> str:
        """`<model_type>/<name>`."""
        return f"{self.model_type}/{name}"

    @property
    def is_moe(self) -> bool:
        """Whether the architecture is a mixture of experts (its checks add expert-parallel cases)."""
        return is_moe(self.model_type)

    @property
    def base(self) -> str:
        """The variant most checks run: `<model_type>/gqa`, or the first variant of an architecture
        without K/V head count (`<model_type>/mha-8`)."""
        return self.key("gqa" if "gqa" in self.variants else next(iter(self.variants)))

    def smallest_gqa(self, tp_sizes: Iterable[int] = GQA_SEARCH_TP_SIZES) -> tuple[str, int]:
        """(variant key, TP size) with the smallest TP at which a variant reaches NxD's GQA layer; the base
        variant at T=2 for an architecture none of whose variants can (one K/V head per query head: the
        heads that divide T never need the GQA layer, the others cannot be spread at all)."""
        try:
            name, tp_size = smallest_gqa_tp(self.variants, tp_sizes)
        except LookupError:
            if "gqa" in self.variants:
                raise
            return self.base, 2
        return self.key(name), tp_size

    def buildable(self, tp_sizes: Iterable[int]) -> list[tuple[Variant, int]]:
        """Every (variant, T) of `tp_sizes` the catalogue can build."""
        return [
            (entry, tp)
            for entry in self.variants.values()
            for tp in tp_sizes
            if entry.unsupported_reason(tp) is None
        ]


@dataclass(frozen=True)
class PlannedCheck:
    """One check and the configurations it runs in (one result per configuration)."""

    check: Check[Any, Any, Any]
    configurations: tuple[CheckConfig, ...]

    @property
    def name(self) -> str:
        return self.check.name

    def __len__(self) -> int:
        return len(self.configurations)

    @property
    def tp_sizes(self) -> tuple[int, ...]:
        """The TP sizes the configurations run at, in order of first appearance (none for a check whose
        configurations span two sizes, a topology change)."""
        return tuple(dict.fromkeys(tp for tp, _ in self.parallel_sizes))

    @property
    def parallel_sizes(self) -> tuple[tuple[int, int], ...]:
        """The (TP, EP) sizes the configurations run at, in order of first appearance (none for a check
        whose configurations span two sizes, a topology change)."""
        if any(len(c.parallel_sizes) != 1 for c in self.configurations):
            return ()
        return tuple(dict.fromkeys(c.parallel_sizes[0] for c in self.configurations))

    def parts(self) -> list[PlannedCheck]:
        """The configurations split by (TP, EP) size (one launcher call each, reported as it finishes);
        checks whose configurations span two sizes (a topology change) stay whole."""
        if not self.parallel_sizes:
            return [self]
        return [
            PlannedCheck(self.check, tuple(c for c in self.configurations if c.parallel_sizes[0] == sizes))
            for sizes in self.parallel_sizes
        ]


def plan(model_type: str, profile: str = "quick", checks: Iterable[str] | None = None) -> list[PlannedCheck]:
    """The checks of `profile` for `model_type`, in registry order, optionally limited to `checks`.

    ValueError for an unknown profile or check, KeyError for a model type the catalogue cannot describe.
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    wanted = set(check_names() if checks is None else checks)
    unknown = wanted - set(check_names())
    if unknown:
        raise ValueError(f"unknown checks {sorted(unknown)}; known: {', '.join(check_names())}")
    catalogue = ModelCatalogue.of(model_type)
    planned = []
    for check in all_checks():
        if check.name not in wanted:
            continue
        configurations = tuple(check.plan(profile, catalogue))
        if configurations:
            planned.append(PlannedCheck(check, configurations))
    return planned


def smallest_gqa_tp(
    variants: dict[str, Variant], tp_sizes: Iterable[int] = GQA_SEARCH_TP_SIZES
) -> tuple[str, int]:
    """The (variant name, TP size) with the smallest TP at which a catalogue variant reaches the GQA layer."""
    for tp_size in tp_sizes:
        for name, entry in variants.items():
            if entry.unsupported_reason(tp_size) is None and entry.attention(tp_size, False) == "gqa":
                return name, tp_size
    raise LookupError("no catalogue variant reaches the GQA layer at TP <= 8")
