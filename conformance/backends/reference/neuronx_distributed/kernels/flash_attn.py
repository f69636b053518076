"""Torch stand-in for NxD's NKI flash-attention entry point, `nki_flash_attn_func`.

Layouts (NxD's wrapper around the NKI `flash_fwd` / `flash_attn_bwd` kernels):

- `transpose_nki_inputs=True` (NxD's default, optimum-neuron's too): q, k, v are `(B, heads, d, S)`, the
  kernel's native layout; the sequence is the LAST axis.
- `transpose_nki_inputs=False`: q, k, v are `(B, heads, S, d)`; the wrapper permutes them.
- The output is `(B, heads, S, d)` in BOTH cases: the kernel writes `o` as `(bs, n_heads, seq_q, d)`.
  (NxD's docstring says `(batch, seqlen, nheads, headdim)`; that is stale.) optimum-neuron's Llama relies
  on the real layout: it follows the call with `transpose(1, 2)` (no SP) or `permute(2, 0, 1, 3)` (SP) to
  reach `(B, S, h, d)` / `(S, B, h, d)`.

Constraints the real kernel imposes, enforced here so a CPU pass predicts a Trainium pass:

- the sequence length must be a multiple of 2048 (NxD raises NotImplementedError). Tests and CPU
  conformance runs at short sequence lengths lower the multiple with the environment variable
  `NXD_REFERENCE_FLASH_ATTN_SEQ_MULTIPLE` (read at every call, so it reaches spawned ranks) or the
  module constant `SEQUENCE_LENGTH_MULTIPLE`; the environment variable wins.
- q, k and v have the same number of heads (the training kernels index K/V by the query head: callers
  expand GQA K/V with `repeat_kv` first) and the same sequence length.

Numerics: the result is `softmax(q k^T * scale + causal mask) v`. With `mixed_precision` the softmax and
the accumulations are fp32 and the output is cast back to q's dtype; the real kernel additionally runs its
matmuls in bf16, so on Trainium fp32 inputs agree only to bf16 precision. Dropout (the real kernel drops
attention probabilities with its own RNG) uses torch's RNG here.
"""

from __future__ import annotations

import os

import torch

from ...deviation_record import note

SEQUENCE_LENGTH_MULTIPLE = 2048
SEQ_MULTIPLE_ENV = "NXD_REFERENCE_FLASH_ATTN_SEQ_MULTIPLE"


class FlashAttentionSequenceLengthError(NotImplementedError, ValueError):
    """The sequence length is not a multiple the NKI kernel supports.

    A NotImplementedError like NxD's, and a ValueError since it is a bad argument.
    """


def required_sequence_multiple() -> int:
    """The multiple the sequence length must have: the environment override, else the module constant."""
    override = os.environ.get(SEQ_MULTIPLE_ENV)
    return int(override) if override else SEQUENCE_LENGTH_MULTIPLE


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lnc: int) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(
            f"q, k, v must be 4-D, got shapes {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if lnc not in (1, 2):
        raise ValueError(f"lnc must be 1 or 2, got {lnc}")
    if not (q.shape[1] == k.shape[1] == v.shape[1]):
        raise ValueError(
            f"q, k, v must have the same number of heads (got {q.shape[1]}, {k.shape[1]}, {v.shape[1]}): "
            "expand grouped K/V heads with repeat_kv before calling the flash-attention kernel"
        )
    if k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
        raise ValueError(
            f"q, k, v must share batch, sequence and head dim; got {tuple(q.shape)}, {tuple(k.shape)}, "
            f"{tuple(v.shape)} (after bringing them to (B, heads, S, d))"
        )
    seq_len, multiple = q.shape[2], required_sequence_multiple()
    if seq_len % multiple != 0:
        raise FlashAttentionSequenceLengthError(
            f"NKI flash attention supports only sequence lengths that are multiples of {multiple}; got "
            f"{seq_len}. Pad or bucket the sequence, or use eager attention (for short CPU runs set "
            f"{SEQ_MULTIPLE_ENV}=1)."
        )


def nki_flash_attn_func(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    lnc: int = 1,
    dropout_p: float = 0.0,
    softmax_scale: float | None = None,
    causal: bool = True,
    mixed_precision: bool = True,
    seed: torch.Tensor | None = None,
    hardware_type: object | None = None,
    transpose_nki_inputs: bool = True,
) -> torch.Tensor:
    """Causal (by default) scaled dot-product attention; returns `(B, heads, S, d)`.

    Inputs are `(B, heads, d, S)` with `transpose_nki_inputs` (the default), else `(B, heads, S, d)`.
    `softmax_scale` defaults to `d ** -0.5`. `seed` and `hardware_type` are accepted for signature
    compatibility and ignored.
    """
    del seed, hardware_type
    if mixed_precision or dropout_p:
        note("NXD-18")  # the NKI kernel's matmuls run in bf16 and its dropout has its own RNG
    if transpose_nki_inputs:
        q, k, v = (t.transpose(-1, -2) for t in (q, k, v))
    _check(q, k, v, lnc)
    scale = softmax_scale if softmax_scale is not None else q.shape[-1] ** -0.5
    compute_dtype = torch.float32 if mixed_precision and q.dtype != torch.float64 else q.dtype
    qc, kc, vc = (t.to(compute_dtype) for t in (q, k, v))
    scores = torch.matmul(qc, kc.transpose(-1, -2)) * scale
    if causal:
        seq_len = scores.shape[-1]
        future = torch.ones(seq_len, seq_len, dtype=torch.bool, device=scores.device).triu(1)
        scores = scores.masked_fill(future, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    if dropout_p > 0.0:
        probs = torch.nn.functional.dropout(probs, p=dropout_p, training=True)
    return torch.matmul(probs, vc).to(q.dtype)
