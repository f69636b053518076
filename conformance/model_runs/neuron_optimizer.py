"""optimum-neuron's optimizer step, between `loss.backward()` and the inner optimizer's `step()`.

What `NeuronAcceleratedOptimizer.step()` does to the gradients (training-loop semantics §1), in order:

1. under sequence parallelism only, the gradients of parameters marked `sequence_parallel_enabled` are
   summed over the tensor-parallel group (NxD's `allreduce_sequence_parallel_gradients`); nothing else is
   reduced over TP;
2. every gradient is averaged over data parallelism (NxD's `bucket_allreduce_gradients`: divided by the
   DP size, summed over the expert-data-parallel group, which is the DP group without expert parallelism);
   with expert-parallel parameters (`expert_model_parallel`, EP > 1) the others are summed over the
   expert-parallel group as well, so that they are averaged over the whole DP group while each expert is
   averaged over the ranks holding it (DP = 1 without EP in the checks: it changes nothing, but it runs);
3. when a maximum norm is set, NxD's `clip_grad_norm` over the sharded parameters (sharded ones counted
   once over TP, replicated ones once).

A replicated parameter whose gradient differs per rank after this is updated differently on each rank:
exactly what the `replicas` check looks for.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def neuron_gradient_step(
    sequence_parallel: bool, max_grad_norm: float | None
) -> Callable[[torch.optim.Optimizer], None]:
    """The gradient handling of optimum-neuron's optimizer step, for the optimizer it is given."""
    from neuronx_distributed.parallel_layers.grads import (
        allreduce_sequence_parallel_gradients,
        bucket_allreduce_gradients,
        clip_grad_norm,
    )

    def step(optimizer: torch.optim.Optimizer) -> None:
        if sequence_parallel:
            allreduce_sequence_parallel_gradients(optimizer)
        parameters = [p for group in optimizer.param_groups for p in group["params"]]
        with_grad = [p for p in parameters if p.grad is not None]
        experts = [p.grad for p in with_grad if getattr(p, "expert_model_parallel", False)]
        others = [p.grad for p in with_grad if not getattr(p, "expert_model_parallel", False)]
        bucket_allreduce_gradients(others + experts)
        if experts:
            bucket_allreduce_gradients(others, reduce_over_ep_group=True)
        if max_grad_norm is not None:
            clip_grad_norm(parameters, max_grad_norm)

    return step
