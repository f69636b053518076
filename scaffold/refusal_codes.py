"""Stable codes for constructs the scaffolder refuses to convert.

A code never changes meaning once released; `--allow-unsupported` (a later stage) writes `TODO(<code>)`
at the location instead of refusing. Each entry says what was found and why a plain tensor-parallel
rewrite would be wrong.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RefusalCode:
    """One refusal class: its code, short name and the reason it cannot be converted."""

    code: str
    name: str
    why: str


MOE = RefusalCode(
    "R001",
    "mixture-of-experts",
    "expert lists and top-k routing need expert parallelism, which the generated models do not implement",
)
CONV1D_TRANSPOSED = RefusalCode(
    "R002",
    "conv1d-weights",
    "transformers' Conv1D stores linear weights transposed; the parallel layers and specs assume nn.Linear",
)
INTERLEAVED_QKV = RefusalCode(
    "R003",
    "interleaved-fused-qkv",
    "a fused projection whose output interleaves q, k and v per head cannot be column-split contiguously",
)
FULL_WIDTH_NORM = RefusalCode(
    "R004",
    "full-width-norm",
    "a norm over the full width of a column-parallel output reduces across ranks (needs a distributed norm)",
)
NON_SOFTMAX_MIXER = RefusalCode(
    "R005",
    "non-softmax-mixer",
    "convolution, state-space or recurrent token mixers have no tensor-parallel rule",
)
CROSS_ATTENTION = RefusalCode(
    "R006",
    "cross-attention",
    "keys and values computed from another input than the queries (encoder states) are out of scope",
)
FUSED_PROJECTION = RefusalCode(
    "R007",
    "fused-projection",
    "a projection split contiguously in the source (q|k|v or gate|up) needs a per-part split of its weight",
)
UNKNOWN_ROLE = RefusalCode(
    "R008",
    "unknown-role",
    "neither the config's tp plan nor the dataflow says whether this layer is column or row parallel",
)
ROLE_CONFLICT = RefusalCode(
    "R009",
    "role-conflict",
    "the config's tp plan and the dataflow in the source give this layer different roles",
)
CHAINED_PROJECTION = RefusalCode(
    "R010",
    "chained-projection",
    "a linear that consumes one projection and feeds another (low-rank / latent attention) fits no role",
)
UNMAPPED_PARAMETER = RefusalCode(
    "R011",
    "unmapped-parameter",
    "a bare nn.Parameter outside a norm has no sharding rule",
)
UNKNOWN_LAYER = RefusalCode(
    "R012",
    "unknown-layer",
    "a torch.nn layer with parameters that the analysis does not know",
)
LAYER_STACK = RefusalCode(
    "R013",
    "layer-stack",
    "the decoder-layer list mixes classes or builds them indirectly, so no single layer class can be planned",
)

UNRECOGNISED_ATTENTION = RefusalCode(
    "R014",
    "unrecognised-attention",
    "projections are split into heads but no attention over separate q, k and v projections was found",
)

HEAD_SHARDED_NORM = RefusalCode(
    "R015",
    "per-head-norm-weights",
    "a norm applied per head whose weight is not one head_dim vector (e.g. one row per head) must be "
    "sharded by head",
)

ALL_CODES: tuple[RefusalCode, ...] = (
    MOE,
    CONV1D_TRANSPOSED,
    INTERLEAVED_QKV,
    FULL_WIDTH_NORM,
    NON_SOFTMAX_MIXER,
    CROSS_ATTENTION,
    FUSED_PROJECTION,
    UNKNOWN_ROLE,
    ROLE_CONFLICT,
    CHAINED_PROJECTION,
    UNMAPPED_PARAMETER,
    UNKNOWN_LAYER,
    LAYER_STACK,
    UNRECOGNISED_ATTENTION,
    HEAD_SHARDED_NORM,
)
