"""nki_flash_attn_func against eager causal attention, in both input layouts, and the kernel's limits."""

from __future__ import annotations

import pytest
import torch

from conformance.backends.reference.neuronx_distributed.kernels import flash_attn
from conformance.backends.reference.neuronx_distributed.kernels.flash_attn import (
    FlashAttentionSequenceLengthError,
    nki_flash_attn_func,
)

B, H, S, D = 2, 3, 8, 4


@pytest.fixture
def short_sequences(monkeypatch):
    monkeypatch.delenv(flash_attn.SEQ_MULTIPLE_ENV, raising=False)
    monkeypatch.setattr(flash_attn, "SEQUENCE_LENGTH_MULTIPLE", 4)


def _eager(q, k, v, scale, causal=True):
    """softmax(q k^T * scale + mask) v on (B, H, S, d), the mask written out entry by entry."""
    scores = q @ k.transpose(-1, -2) * scale
    if causal:
        mask = torch.zeros(S, S)
        for i in range(S):
            for j in range(i + 1, S):
                mask[i, j] = float("-inf")
        scores = scores + mask
    return torch.softmax(scores, dim=-1) @ v


def _qkv(seed: int):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, S, D, generator=gen) for _ in range(3)]


@pytest.mark.parametrize("transpose_nki_inputs", [True, False])
@pytest.mark.parametrize(("causal", "scale"), [(True, None), (True, 0.3), (False, None)])
def test_equals_eager_attention_values_and_gradients(short_sequences, transpose_nki_inputs, causal, scale):
    q, k, v = _qkv(0)
    grad_out = torch.randn(B, H, S, D, generator=torch.Generator().manual_seed(1))
    inputs = [t.clone().requires_grad_(True) for t in (q, k, v)]
    # The kernel's native layout is (B, H, d, S); the output is (B, H, S, d) either way.
    fed = [t.transpose(-1, -2) for t in inputs] if transpose_nki_inputs else inputs
    out = nki_flash_attn_func(
        *fed, dropout_p=0.0, softmax_scale=scale, causal=causal, transpose_nki_inputs=transpose_nki_inputs
    )
    out.backward(grad_out)

    ref_inputs = [t.clone().requires_grad_(True) for t in (q, k, v)]
    expected = _eager(*ref_inputs, D**-0.5 if scale is None else scale, causal=causal)
    expected.backward(grad_out)
    assert out.shape == (B, H, S, D)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    for got, want in zip(inputs, ref_inputs):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-5, atol=1e-5)


def test_output_feeds_llamas_reshape_back_to_hidden_states(short_sequences):
    # optimum-neuron's Llama (no SP) does out.transpose(1, 2).reshape(B, S, H * d) after the call.
    q, k, v = _qkv(2)
    out = nki_flash_attn_func(*(t.transpose(-1, -2) for t in (q, k, v)), softmax_scale=D**-0.5)
    hidden = out.transpose(1, 2).reshape(B, S, H * D)
    expected = _eager(q, k, v, D**-0.5).transpose(1, 2).reshape(B, S, H * D)
    torch.testing.assert_close(hidden, expected, rtol=1e-5, atol=1e-5)


def test_bf16_inputs_are_computed_in_fp32_and_returned_in_bf16(short_sequences):
    q, k, v = (t.bfloat16() for t in _qkv(3))
    out = nki_flash_attn_func(q, k, v, transpose_nki_inputs=False, mixed_precision=True)
    assert out.dtype == torch.bfloat16
    expected = _eager(q.float(), k.float(), v.float(), D**-0.5).bfloat16()
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_sequence_length_must_be_a_multiple_of_2048_by_default(monkeypatch):
    monkeypatch.delenv(flash_attn.SEQ_MULTIPLE_ENV, raising=False)
    assert flash_attn.SEQUENCE_LENGTH_MULTIPLE == 2048
    q, k, v = _qkv(4)
    with pytest.raises(FlashAttentionSequenceLengthError, match="multiples of 2048; got 8"):
        nki_flash_attn_func(q, k, v, transpose_nki_inputs=False)
    # With transposed inputs the sequence is the last axis: (B, H, d=8, S=4) is a sequence of 4.
    with pytest.raises(NotImplementedError, match="got 4"):
        nki_flash_attn_func(q, k, v, transpose_nki_inputs=True)
    monkeypatch.setenv(flash_attn.SEQ_MULTIPLE_ENV, "8")
    assert nki_flash_attn_func(q, k, v, transpose_nki_inputs=False).shape == (B, H, S, D)


def test_grouped_kv_heads_must_be_expanded_first(short_sequences):
    q, k, v = _qkv(5)
    with pytest.raises(ValueError, match="repeat_kv"):
        nki_flash_attn_func(q, k[:, :1], v[:, :1], transpose_nki_inputs=False)
