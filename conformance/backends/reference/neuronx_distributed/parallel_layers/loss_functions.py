"""Vocab-parallel cross entropy and log-probabilities (NxD's `parallel_layers.loss_functions`).

Each TP rank holds the logits of its vocabulary slice `[r*Vp, (r+1)*Vp)` (`Vp` = the last dimension of
its logits); targets hold global token ids. Max, target logit and sum of exponentials are reduced over the
TP group, so the result equals the dense computation on the gathered logits.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from ...deviation_record import note
from . import _collectives as comm
from .parallel_state import (
    get_tensor_model_parallel_group,
    get_tensor_model_parallel_rank,
)


def _shifted_logits_and_target(
    logits: torch.Tensor, target: torch.Tensor, group
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits - global max, target logit of the shifted logits, exp sum over the full vocab, target mask).

    Never modifies `logits` (deviation NXD-13: NxD subtracts the max in place).
    """
    vocab_per_rank = logits.size(-1)
    logits_max = comm.all_reduce(logits.detach().max(dim=-1).values, group, op=dist.ReduceOp.MAX)
    shifted = logits - logits_max.unsqueeze(-1)
    start = get_tensor_model_parallel_rank() * vocab_per_rank
    in_range = (target >= start) & (target < start + vocab_per_rank)
    local_target = torch.where(in_range, target - start, torch.zeros_like(target))
    picked = shifted.gather(-1, local_target.unsqueeze(-1)).squeeze(-1) * in_range.to(shifted.dtype)
    target_logit = comm.all_reduce(picked, group)
    sum_exp = comm.all_reduce(shifted.exp().sum(dim=-1), group)
    return shifted, target_logit, sum_exp, in_range


class _VocabParallelCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, target, label_smoothing):
        group = get_tensor_model_parallel_group()
        shifted, target_logit, sum_exp, in_range = _shifted_logits_and_target(logits, target, group)
        log_sum_exp = sum_exp.log()
        loss = log_sum_exp - target_logit
        vocab_size = logits.size(-1) * comm.group_size(group)
        if label_smoothing > 0.0:
            # torch's definition (deviation NXD-13): (1 - a) * nll + a * mean over the FULL vocabulary of
            # -log p_j, where sum_j -log p_j = V * log(sum exp) - sum_j shifted_j.
            sum_shifted = comm.all_reduce(shifted.sum(dim=-1), group)
            uniform = log_sum_exp - sum_shifted / vocab_size
            loss = (1.0 - label_smoothing) * loss + label_smoothing * uniform
        softmax = shifted.exp() / sum_exp.unsqueeze(-1)
        local_target = torch.where(in_range, target - get_tensor_model_parallel_rank() * logits.size(-1), 0)
        ctx.save_for_backward(softmax, in_range, local_target)
        ctx.label_smoothing, ctx.vocab_size = label_smoothing, vocab_size
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        softmax, in_range, local_target = ctx.saved_tensors
        a = ctx.label_smoothing
        grad = softmax.clone()
        onehot = torch.zeros_like(grad).scatter_(-1, local_target.unsqueeze(-1), 1.0)
        onehot = onehot * in_range.unsqueeze(-1).to(grad.dtype)
        grad = grad - (1.0 - a) * onehot
        if a > 0.0:
            grad = grad - a / ctx.vocab_size
        return grad * grad_output.unsqueeze(-1), None, None


def parallel_cross_entropy(
    vocab_parallel_logits: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Per-token cross entropy (shape of `target`) of vocab-sharded logits; no reduction, no ignore_index.

    Equals `F.cross_entropy(gathered_logits, target, label_smoothing=a, reduction="none")`, values and
    gradients. Callers mask ignored positions themselves (a target outside the vocabulary gives
    `log(sum exp)`). `label_smoothing` must be in [0, 1), as NxD asserts.
    """
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    if label_smoothing:
        note("NXD-13")  # NxD's smoothed loss and its backward differ at every TP size
    return _VocabParallelCrossEntropy.apply(vocab_parallel_logits, target, float(label_smoothing))


class _VocabParallelLogprob(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, target):
        group = get_tensor_model_parallel_group()
        with torch.no_grad():
            shifted, target_logit, sum_exp, in_range = _shifted_logits_and_target(
                logits.float(), target, group
            )
        local_target = torch.where(in_range, target - get_tensor_model_parallel_rank() * logits.size(-1), 0)
        ctx.save_for_backward((shifted.exp() / sum_exp.unsqueeze(-1)), in_range, local_target)
        ctx.dtype = logits.dtype
        return (target_logit - sum_exp.log()).to(logits.dtype)

    @staticmethod
    def backward(ctx, grad_output):
        softmax, in_range, local_target = ctx.saved_tensors
        onehot = torch.zeros_like(softmax).scatter_(-1, local_target.unsqueeze(-1), 1.0)
        onehot = onehot * in_range.unsqueeze(-1).to(softmax.dtype)
        grad = (onehot - softmax) * grad_output.unsqueeze(-1).to(softmax.dtype)
        return grad.to(ctx.dtype), None


def from_parallel_logits_to_logprobs(
    vocab_parallel_logits: torch.Tensor, target: torch.Tensor, inference: bool = True
) -> torch.Tensor:
    """Log-probability of the next token: `log_softmax(logits)[b, s, target[b, s+1]]`, shape `(B, S-1)`.

    The target is rolled left by one along the sequence and the last position dropped, as NxD does. The
    log-softmax is computed in fp32 over the full (sharded) vocabulary. NxD keeps tensors for a backward
    only with `inference=False`; the reference is always differentiable.
    """
    del inference
    shifted_target = target.roll(shifts=-1, dims=-1)
    return _VocabParallelLogprob.apply(vocab_parallel_logits, shifted_target)[:, :-1]
