"""Which local classes compute a norm (analysis/norms.py's `norm_classes`), on hand-written classes.

Oracle: the math each snippet writes, read by a person (dividing by the root of the mean square is an RMS
norm; subtracting the mean as well is a layer norm; a root of a scalar or a root not divided by is no norm).
"""

from __future__ import annotations

from textwrap import dedent

import libcst as cst

from scaffold.analysis.classes import collect_classes, map_module
from scaffold.analysis.norms import norm_classes
from scaffold.analysis.parsing import SourceIndex

SOURCE = """
import math

import torch
from torch import nn


class DividedRms(nn.Module):
    def __init__(self, dim, eps=1e-6, with_scale=True):
        super().__init__()
        self.eps = eps
        if with_scale:
            self.weight = nn.Parameter(torch.ones(dim))
        else:
            self.register_buffer("weight", torch.tensor(1.0), persistent=False)

    def _norm(self, x):
        return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)

    def forward(self, x):
        return self._norm(x.float()) * self.weight.float()


class MethodSqrtLayer(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        x = x - x.mean(-1, keepdim=True)
        return self.weight * x / (x.pow(2).mean(-1, keepdim=True) + 1e-5).sqrt()


class ScaledInit(nn.Module):
    def __init__(self, dim, layers):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.layers = layers

    def forward(self, x):
        return self.weight * x

    def _init_weights(self):
        self.weight.data.normal_(std=0.02 / math.sqrt(2.0 * self.layers))


class Magnitude(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return torch.sqrt(x.pow(2).mean(-1, keepdim=True)) * self.scale
"""


def test_a_division_by_a_square_root_of_the_mean_square_is_a_norm():
    module = cst.parse_module(dedent(SOURCE))
    index = SourceIndex(module, "m.py", "transformers.models.m")
    facts = collect_classes(map_module(module), index)
    assert norm_classes(facts, index) == {"DividedRms": "rms", "MethodSqrtLayer": "layer"}
