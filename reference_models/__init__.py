"""Tiny reference models: a catalogue of small configurations per architecture, and a builder of HF checkpoints.

    from reference_models import build, variant

    checkpoint = build(variant("llama/gqa"))  # a cached transformers checkpoint folder

The catalogue chooses sizes so that every attention variant of the generated models is reached at small
tensor-parallel sizes (see `catalogue`); the builder writes deterministic checkpoints locally, nothing is
downloaded (see `builder`). Every scalar field the model reads holds a non-default value (see `nondefault`),
and every configuration overfits its batch in transformers itself (tests/reference_models/test_overfitting.py). `python -m
reference_models list|build` is the command line.
"""

from .builder import build, build_all, cache_root
from .catalogue import (
    ARCHITECTURES,
    CATALOGUE,
    Variant,
    attention_variant,
    dropout_fields,
    unsupported_reason,
    variant,
    variants_for,
)
from .nondefault import FieldChoice

__all__ = [
    "ARCHITECTURES",
    "CATALOGUE",
    "FieldChoice",
    "Variant",
    "attention_variant",
    "build",
    "build_all",
    "cache_root",
    "dropout_fields",
    "unsupported_reason",
    "variant",
    "variants_for",
]
