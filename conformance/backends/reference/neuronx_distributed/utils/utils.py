"""The Neuron platform enum (`hardware`), as NxD's `utils.utils` names it.

The reference backend always lays K/V replicas out as on TRN1 (tiled, deviation NXD-11); the enum exists
so that functions taking `hardware_type` keep NxD's signatures and TRN2's consecutive grouping can be asked for.
"""

from __future__ import annotations

from enum import Enum


class hardware(Enum):
    TRN1 = "trn1"
    TRN2 = "trn2"
    TRN3 = "trn3"
