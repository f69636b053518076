"""Vocab-parallel cross entropy and log-probs against torch on the gathered logits, values and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conformance.tensor_parallel_run import run_tensor_parallel

VOCAB = 16


def _close(actual, expected, what: str) -> None:
    torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-6, msg=lambda m: f"{what}: {m}")


def _local(full: torch.Tensor) -> torch.Tensor:
    from neuronx_distributed.parallel_layers import parallel_state as ps

    T, r = ps.get_tensor_model_parallel_size(), ps.get_tensor_model_parallel_rank()
    return full.chunk(T, dim=-1)[r].clone().requires_grad_(True)


def _check_cross_entropy() -> int:
    from neuronx_distributed.parallel_layers.loss_functions import parallel_cross_entropy

    checked = 0
    for scale in (1.0, 40.0):  # 40: exp() would overflow fp32 without the max subtraction
        for smoothing in (0.0, 0.1, 0.35):
            gen = torch.Generator().manual_seed(checked)
            full = scale * torch.randn(3, 5, VOCAB, generator=gen, dtype=torch.float32)
            target = torch.randint(0, VOCAB, (3, 5), generator=gen)
            grad_out = torch.randn(3, 5, generator=gen)
            local = _local(full)
            before = local.detach().clone()
            loss = parallel_cross_entropy(local, target, label_smoothing=smoothing)
            assert torch.equal(local.detach(), before), "the logits were modified"
            loss.backward(grad_out)

            dense = full.clone().requires_grad_(True)
            expected = F.cross_entropy(
                dense.view(-1, VOCAB), target.view(-1), label_smoothing=smoothing, reduction="none"
            ).view_as(target)
            expected.backward(grad_out)
            what = f"scale={scale} smoothing={smoothing}"
            assert loss.shape == target.shape
            _close(loss, expected, f"loss {what}")
            _close(local.grad, _local(dense.grad).detach(), f"logits grad {what}")
            checked += 1
    return checked


def _check_ignore_index_done_by_the_caller() -> None:
    from neuronx_distributed.parallel_layers.loss_functions import parallel_cross_entropy

    gen = torch.Generator().manual_seed(11)
    full = torch.randn(2, 6, VOCAB, generator=gen)
    target = torch.randint(0, VOCAB, (2, 6), generator=gen)
    target[0, :2] = -100
    target[1, 5] = -100
    local = _local(full)
    keep = target != -100
    per_token = parallel_cross_entropy(local, torch.where(keep, target, 0))
    loss = (per_token * keep).sum() / keep.sum()
    loss.backward()

    dense = full.clone().requires_grad_(True)
    expected = F.cross_entropy(dense.view(-1, VOCAB), target.view(-1), ignore_index=-100, reduction="mean")
    expected.backward()
    _close(loss, expected, "masked mean loss")
    _close(local.grad, _local(dense.grad).detach(), "masked mean logits grad")


def _check_logprobs() -> None:
    from neuronx_distributed.parallel_layers.loss_functions import from_parallel_logits_to_logprobs

    gen = torch.Generator().manual_seed(5)
    full = torch.randn(2, 7, VOCAB, generator=gen)
    target = torch.randint(0, VOCAB, (2, 7), generator=gen)
    grad_out = torch.randn(2, 6, generator=gen)
    local = _local(full)
    logprobs = from_parallel_logits_to_logprobs(local, target, inference=False)
    logprobs.backward(grad_out)

    dense = full.clone().requires_grad_(True)
    # Position s scores the next token, target[:, s + 1]; the last position has none.
    expected = dense.log_softmax(-1)[:, :-1].gather(-1, target[:, 1:, None]).squeeze(-1)
    expected.backward(grad_out)
    _close(logprobs, expected, "logprobs")
    _close(local.grad, _local(dense.grad).detach(), "logprobs grad")


def _all_checks() -> int:
    checked = _check_cross_entropy()
    _check_ignore_index_done_by_the_caller()
    _check_logprobs()
    return checked


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_parallel_cross_entropy_matches_torch_on_the_gathered_logits(tp):
    assert run_tensor_parallel(_all_checks, tp) == [6] * tp


@pytest.mark.parametrize("smoothing", [-0.1, 1.0])
def test_label_smoothing_outside_the_unit_interval_is_rejected(smoothing):
    from conformance.backends.reference.neuronx_distributed.parallel_layers.loss_functions import (
        parallel_cross_entropy,
    )

    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1\)"):
        parallel_cross_entropy(torch.zeros(2, 4), torch.zeros(2, dtype=torch.long), label_smoothing=smoothing)
