"""Tiny reference models: a catalogue of small configurations per architecture, and a builder of HF checkpoints.

    from reference_models import build, variant

    checkpoint = build(variant("llama/gqa"))  # a cached transformers checkpoint folder

The catalogue chooses sizes so that every attention variant of the generated models is reached at small
tensor-parallel sizes (see `catalogue`); the builder writes deterministic checkpoints locally, nothing is
downloaded (see `builder`). `python -m reference_models list|build` is the command line.
"""

from .builder import build, build_all, cache_root
from .catalogue import (
    ARCHITECTURES,
    CATALOGUE,
    Variant,
    attention_variant,
    unsupported_reason,
    variant,
    variants_for,
)

__all__ = [
    "ARCHITECTURES",
    "CATALOGUE",
    "Variant",
    "attention_variant",
    "build",
    "build_all",
    "cache_root",
    "unsupported_reason",
    "variant",
    "variants_for",
]
