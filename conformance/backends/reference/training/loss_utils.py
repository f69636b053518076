"""The causal-LM loss on vocab-parallel logits (`optimum.neuron.models.training.loss_utils`).

`lm_head` is a `ColumnParallelLinear(gather_output=False)`, so each TP rank holds the logits of its
vocabulary slice `[r*V/T, (r+1)*V/T)`. The cross-entropy is computed without gathering them: the max, the
target logit and the sum of exponentials are all-reduced over the TP group (Megatron's vocab-parallel
cross-entropy). The host carries its own implementation, independent of NxD's `loss_functions`.

Differences from the real host, each toward torch/transformers semantics:
- `num_items_in_batch` is honoured as transformers does: sum, then divide (deviation ON-07).
- The input logits are never modified (the real function subtracts the max in place unless the test hook
  `_PARALLEL_CROSS_ENTROPY_SHOULD_PRESERVE_INPUT` is set; the hook is kept and has no effect).
- Label smoothing equals `F.cross_entropy(label_smoothing=a)` over the full vocabulary, values and
  gradients (the real function uses the local vocabulary size and mean; the same fix as NXD-13).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..deviation_record import note
from ..neuronx_distributed.parallel_layers.parallel_state import (
    get_tensor_model_parallel_group,
    get_tensor_model_parallel_rank,
    get_tensor_model_parallel_size,
)

_REDUCTIONS = ("mean", "sum", "none")

# Kept for API compatibility with the real module's test hook; the reference never modifies its input.
_PARALLEL_CROSS_ENTROPY_SHOULD_PRESERVE_INPUT: bool = False


def _all_reduce(tensor: torch.Tensor, op: dist.ReduceOp, group) -> torch.Tensor:
    dist.all_reduce(tensor, op=op, group=group)
    return tensor


class _ParallelCrossEntropy(torch.autograd.Function):
    """Cross-entropy of `(..., V/T)` vocab-parallel logits against global target ids `(...)`."""

    @staticmethod
    def forward(ctx, vocab_parallel_logits, target, ignore_index=-100, reduction="mean", label_smoothing=0.0):
        group = get_tensor_model_parallel_group()
        world = get_tensor_model_parallel_size()
        logits = vocab_parallel_logits.detach()
        local_vocab = logits.shape[-1]
        vocab_size = local_vocab * world
        start = get_tensor_model_parallel_rank() * local_vocab

        logits_max = _all_reduce(logits.max(dim=-1).values.contiguous(), dist.ReduceOp.MAX, group)
        shifted = logits - logits_max.unsqueeze(-1)

        kept = target != ignore_index
        in_slice = (target >= start) & (target < start + local_vocab) & kept
        local_target = torch.where(in_slice, target - start, torch.zeros_like(target))
        target_logit = shifted.gather(-1, local_target.unsqueeze(-1)).squeeze(-1) * in_slice.to(shifted.dtype)
        target_logit = _all_reduce(target_logit.contiguous(), dist.ReduceOp.SUM, group)

        exp = shifted.exp()
        sum_exp = _all_reduce(exp.sum(dim=-1), dist.ReduceOp.SUM, group)
        log_sum_exp = sum_exp.log()
        loss = log_sum_exp - target_logit
        if label_smoothing > 0.0:
            # Smoothed target: (1 - a) one-hot + a / V uniform over the FULL vocabulary.
            sum_logits = _all_reduce(shifted.sum(dim=-1), dist.ReduceOp.SUM, group)
            uniform_loss = log_sum_exp - sum_logits / vocab_size
            loss = (1.0 - label_smoothing) * loss + label_smoothing * uniform_loss
        kept_f = kept.to(loss.dtype)
        loss = loss * kept_f

        count = kept_f.sum()
        if reduction == "mean":
            out = loss.sum() / count
        elif reduction == "sum":
            out = loss.sum()
        else:
            out = loss

        ctx.reduction, ctx.label_smoothing, ctx.vocab_size = reduction, label_smoothing, vocab_size
        ctx.save_for_backward(exp / sum_exp.unsqueeze(-1), local_target, in_slice, kept_f, count)
        return out

    @staticmethod
    def backward(ctx, grad_output):
        softmax, local_target, in_slice, kept_f, count = ctx.saved_tensors
        grad = softmax.clone()
        one_hot = F.one_hot(local_target, grad.shape[-1]).to(grad.dtype) * in_slice.unsqueeze(-1).to(
            grad.dtype
        )
        a = ctx.label_smoothing
        grad -= (1.0 - a) * one_hot
        if a > 0.0:
            grad -= a / ctx.vocab_size
        grad *= kept_f.unsqueeze(-1)
        if ctx.reduction == "mean":
            grad *= grad_output / count
        elif ctx.reduction == "sum":
            grad *= grad_output
        else:
            grad *= grad_output.unsqueeze(-1)
        return grad, None, None, None, None


def parallel_cross_entropy(
    vocab_parallel_logits: torch.Tensor,
    target: torch.Tensor,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """`F.cross_entropy` of the gathered logits, computed on the vocab shards (TP group collectives).

    `reduction="mean"` averages over the targets that are not `ignore_index`; `"none"` gives 0 at ignored
    positions, as torch does.
    """
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    if label_smoothing and get_tensor_model_parallel_size() > 1:
        note("ON-12")  # the host's smoothed loss uses the local vocabulary on Trainium
    return _ParallelCrossEntropy.apply(
        vocab_parallel_logits, target, ignore_index, reduction, label_smoothing
    )


def fixed_cross_entropy(
    source: torch.Tensor,
    target: torch.Tensor,
    reduction: str = "mean",
    ignore_index: int = -100,
    num_items_in_batch: torch.Tensor | int | None = None,
    **kwargs,
) -> torch.Tensor:
    """Cross-entropy of `(N, V/T)` logits: vocab-parallel when TP > 1, `F.cross_entropy` otherwise.

    With `num_items_in_batch` the summed loss is divided by it, as transformers does under gradient
    accumulation (deviation ON-07; the real host ignores it).
    """
    if num_items_in_batch is not None:
        note("ON-07")  # the released host ignores num_items_in_batch
        reduction = "sum"
    if get_tensor_model_parallel_size() > 1:
        loss = parallel_cross_entropy(source, target, ignore_index=ignore_index, reduction=reduction)
    else:
        loss = F.cross_entropy(source, target, ignore_index=ignore_index, reduction=reduction)
    if num_items_in_batch is not None:
        if torch.is_tensor(num_items_in_batch):
            num_items_in_batch = num_items_in_batch.to(loss.device)
        loss = loss / num_items_in_batch
    return loss


def ForCausalLMLoss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    vocab_size: int,
    reduction: str = "mean",
    ignore_index: int = -100,
    num_items_in_batch: torch.Tensor | int | None = None,
    **kwargs,
) -> torch.Tensor:
    """Next-token loss of `(B, S, V/T)` vocab-parallel logits; `vocab_size` is the per-rank size V/T.

    Logits are upcast to fp32; position s predicts `labels[s + 1]`. Other keyword arguments (the trainer's
    extra model kwargs, and transformers' `shift_labels`) are ignored, as by the released host.
    """
    logits = logits.float()
    shift_logits = logits[..., :-1, :].contiguous().view(-1, vocab_size)
    shift_labels = labels.to(logits.device)[..., 1:].contiguous().reshape(-1)
    return fixed_cross_entropy(
        shift_logits,
        shift_labels,
        reduction=reduction,
        ignore_index=ignore_index,
        num_items_in_batch=num_items_in_batch,
    )
