"""Bounds written into tolerance texts from the values the checks apply, so the two cannot drift apart."""

from __future__ import annotations


def number(value: float) -> str:
    """A bound as a reader writes it: ``1e-5``, ``1e-4``, ``2.5e-7`` below 1e-3, ``0.001``, ``4`` above."""
    if value and abs(value) < 1e-3:
        mantissa, exponent = f"{value:.6e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    return f"{value:g}"
