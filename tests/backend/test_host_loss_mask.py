"""The host's vocab-parallel causal-LM loss against transformers' `ForCausalLMLoss` / `F.cross_entropy` on the
gathered logits (values and gradients), and `create_causal_mask` against a mask built by hand.
"""

from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F
from transformers.loss.loss_utils import ForCausalLMLoss as transformers_causal_lm_loss

from conformance.backends import activate
from conformance.tensor_parallel_run import run_tensor_parallel

from .host_fixtures import tiny_llama_config

B, S, V = 3, 7, 16
CLOSE = {"rtol": 1e-6, "atol": 1e-6}


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(B, S, V, generator=generator) * 3
    labels = torch.randint(0, V, (B, S), generator=generator)
    labels[0, :3] = -100
    labels[2, -2:] = -100
    labels[1, 4] = V - 1  # the last vocabulary entry (last rank) is a target
    return logits, labels


LOSS_CASES = [{}, {"num_items_in_batch": 11}, {"num_items_in_batch": torch.tensor(5)}]
CE_CASES = [("mean", 0.0), ("sum", 0.0), ("none", 0.0), ("mean", 0.1), ("none", 0.2)]


def _host_losses(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    """On each rank: the host losses of this rank's vocabulary slice, and the slice's gradients."""
    from neuronx_distributed.parallel_layers import parallel_state

    from conformance.backends.reference.training.loss_utils import ForCausalLMLoss, parallel_cross_entropy

    world, rank = (
        parallel_state.get_tensor_model_parallel_size(),
        parallel_state.get_tensor_model_parallel_rank(),
    )
    local = logits.chunk(world, dim=-1)[rank].clone()
    upstream = torch.randn(B * S, generator=torch.Generator().manual_seed(1))
    out = {"causal": [], "ce": []}
    for kwargs in LOSS_CASES:
        x = local.clone().requires_grad_(True)
        loss = ForCausalLMLoss(x, labels, vocab_size=V // world, **kwargs)
        loss.backward()
        out["causal"].append((loss.detach(), x.grad, torch.equal(x.detach(), local)))
    if world > 1:  # the vocab-parallel function itself (at T=1 the host calls F.cross_entropy)
        for reduction, smoothing in CE_CASES:
            x = local.view(-1, V // world).clone().requires_grad_(True)
            loss = parallel_cross_entropy(x, labels.view(-1), reduction=reduction, label_smoothing=smoothing)
            (loss * upstream).sum().backward() if reduction == "none" else loss.backward()
            out["ce"].append((loss.detach(), x.grad))
    return out


@pytest.mark.parametrize("tp_size", [1, 2])
def test_causal_lm_loss_matches_transformers(tp_size: int) -> None:
    logits, labels = _inputs()
    results = run_tensor_parallel(_host_losses, tp_size, logits, labels, world_size=2)
    for index, kwargs in enumerate(LOSS_CASES):
        full = logits.clone().requires_grad_(True)
        expected = transformers_causal_lm_loss(full, labels, vocab_size=V, **kwargs)
        expected.backward()
        for rank, result in enumerate(results):
            loss, grad, untouched = result["causal"][index]
            torch.testing.assert_close(loss, expected.detach(), **CLOSE)
            torch.testing.assert_close(grad, full.grad.chunk(tp_size, dim=-1)[rank % tp_size], **CLOSE)
            assert untouched, "the loss modified its input logits"
    if tp_size == 1:
        return
    upstream = torch.randn(B * S, generator=torch.Generator().manual_seed(1))
    for index, (reduction, smoothing) in enumerate(CE_CASES):
        full = logits.view(-1, V).clone().requires_grad_(True)
        expected = F.cross_entropy(full, labels.view(-1), reduction=reduction, label_smoothing=smoothing)
        (expected * upstream).sum().backward() if reduction == "none" else expected.backward()
        for rank, result in enumerate(results):
            loss, grad = result["ce"][index]
            torch.testing.assert_close(loss, expected.detach(), **CLOSE)
            torch.testing.assert_close(grad, full.grad.chunk(tp_size, dim=-1)[rank], **CLOSE)


def test_num_items_in_batch_changes_the_scale() -> None:
    """ON-07: the summed loss is divided by num_items_in_batch, not averaged over the kept tokens."""
    logits, labels = _inputs()
    [result, _] = run_tensor_parallel(_host_losses, 1, logits, labels, world_size=2)
    mean, by_11 = result["causal"][0][0], result["causal"][1][0]
    kept = int((labels[:, 1:] != -100).sum())
    torch.testing.assert_close(by_11, mean * kept / 11, **CLOSE)


# --- create_causal_mask --------------------------------------------------------------------------------------


def _hand_mask(
    attention_mask: torch.Tensor | None,
    cache_position: torch.Tensor,
    batch: int,
    length: int,
    dtype: torch.dtype,
) -> torch.Tensor:
    """0 where query i may attend key j (j <= cache_position[i], key not padding), finfo.min elsewhere."""
    keys = attention_mask.shape[-1] if attention_mask is not None else length + 1
    mask = torch.full((batch, 1, length, keys), torch.finfo(dtype).min, dtype=dtype)
    for b in range(batch):
        for i in range(length):
            for j in range(keys):
                padded = attention_mask is not None and attention_mask[b, j] == 0
                if j <= cache_position[i] and not padded:
                    mask[b, 0, i, j] = 0.0
    return mask


def _trn(sp: bool = False, tp: int = 1) -> types.SimpleNamespace:
    return types.SimpleNamespace(sequence_parallel_enabled=sp, tensor_parallel_size=tp)


@pytest.fixture
def create_causal_mask():
    activate("reference")
    from conformance.backends.reference.training.masking_utils import create_causal_mask

    return create_causal_mask


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_causal_mask_without_padding(create_causal_mask, dtype: torch.dtype) -> None:
    embeds = torch.zeros(2, 5, 4, dtype=dtype)
    cache_position = torch.arange(5)
    mask = create_causal_mask(tiny_llama_config(), _trn(), embeds, None, cache_position)
    assert mask.shape == (2, 1, 5, 6) and mask.dtype == dtype
    assert torch.equal(mask, _hand_mask(None, cache_position, 2, 5, dtype))


def test_causal_mask_with_padding_and_offset_positions(create_causal_mask) -> None:
    attention_mask = torch.tensor([[1, 1, 1, 0, 0, 0, 0], [0, 0, 1, 1, 1, 1, 1]])
    embeds = torch.zeros(2, 5, 4)
    for cache_position in (torch.arange(5), torch.arange(5) + 2):
        mask = create_causal_mask(tiny_llama_config(), _trn(), embeds, attention_mask, cache_position)
        assert torch.equal(mask, _hand_mask(attention_mask, cache_position, 2, 5, torch.float32))


def test_causal_mask_under_sequence_parallelism(create_causal_mask) -> None:
    """Inputs are (S/T, B, D): the full length is recovered as S/T * T, the batch from dim 1."""
    attention_mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]])
    cache_position = torch.arange(6)
    mask = create_causal_mask(
        tiny_llama_config(), _trn(True, 2), torch.zeros(3, 2, 4), attention_mask, cache_position
    )
    assert torch.equal(mask, _hand_mask(attention_mask, cache_position, 2, 6, torch.float32))


def test_causal_mask_passthrough_flash_and_refusals(create_causal_mask) -> None:
    embeds, cache_position = torch.zeros(1, 4, 2), torch.arange(4)
    four_d = torch.zeros(1, 1, 4, 4)
    assert create_causal_mask(tiny_llama_config(), _trn(), embeds, four_d, cache_position) is four_d
    flash = tiny_llama_config(attn_implementation="flash_attention_2")
    assert create_causal_mask(flash, _trn(), embeds, torch.ones(1, 4), cache_position) is None
    with pytest.raises(RuntimeError, match="past_key_values"):
        create_causal_mask(
            tiny_llama_config(), _trn(), embeds, None, cache_position, past_key_values=object()
        )
    with pytest.raises(RuntimeError, match="or_mask_function"):
        create_causal_mask(tiny_llama_config(), _trn(), embeds, None, cache_position, or_mask_function=max)
