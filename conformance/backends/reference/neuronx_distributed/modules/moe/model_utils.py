"""Activation table, GLU variants and defaults shared by the MoE modules (NxD's `moe/model_utils.py`)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from enum import Enum

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

ACT2FN: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,
    "leaky_relu": F.leaky_relu,
    "relu": F.relu,
    "sigmoid": torch.sigmoid,
    "silu": F.silu,
    "tanh": torch.tanh,
}
"""The expert activations NxD accepts, by `hidden_act` name (a subset of transformers' ACT2FN)."""

DEFAULT_BLOCK_SIZE = 512
"""Tokens per block of NxD's blockwise expert matmul (a kernel setting; no effect here)."""

DEFAULT_LNC_SIZE = 1
"""Logical NeuronCore size; NxD reads it from the platform (1 on trn1, 2 on trn2). No effect here."""


class GLUType(Enum):
    """How the gate and up projections combine: `act(gate) * up` (GLU) or `gate * act(gate) * up` (SWIGLU)."""

    GLU = "glu"
    SWIGLU = "swiglu"

    @classmethod
    def validate(cls, glu_type):
        """The member for `glu_type` (a member or its value; None means GLU, with a warning)."""
        if isinstance(glu_type, cls):
            return glu_type
        if glu_type is None:
            logger.warning("glu_type is None, default to basic GLU")
            glu_type = "glu"
        values = [member.value for member in cls]
        if glu_type not in values:
            raise ValueError(f"glu_type={glu_type} not supported, must be one of {values}")
        return cls(glu_type)
