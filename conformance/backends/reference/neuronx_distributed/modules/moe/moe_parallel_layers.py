"""Expert-fused column/row-parallel linears: one 3-D weight for all of a rank's experts (NxD's
`moe/moe_parallel_layers.py`).

Layouts (E experts, EP ranks, TP ranks; expert weights multiply as `x @ W`, input dim first):

- `ExpertFusedColumnParallelLinear(num_experts, input_size=H, output_size=O, stride=s)`: weight
  `[E / EP, H, O / TP]`, `partition_dim=2`, `partition_stride=s`. With the GLU's `output_size = 2 I` and
  `stride=2`, rank r holds `[gate[:, r I/TP:(r+1) I/TP] | up[:, same columns]]` of each of its experts;
- `ExpertFusedRowParallelLinear(num_experts, input_size=I, output_size=H)`: weight `[E / EP, I / TP, H]`,
  `partition_dim=1`; with `reduce_output=False` (what `Experts` uses) it returns the TP-partial sum.

EP rank j holds experts `j E/EP ... (j+1) E/EP - 1`. With EP > 1 every parameter is tagged
`expert_model_parallel=True` (and `is_prefill`, `expert_distribution`), again after `.to()` and on the
tensors of `state_dict()`. A CPU init draws a float32 master of `[E / EP, H, O]` with the init method
applied per expert (default `kaiming_uniform_(a=sqrt(5))` on `[H, O]`: its fan-in is O, as in NxD), then
takes this TP rank's slice. Biases are not provided (NXD-23).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ...parallel_layers import _collectives as comm
from ...parallel_layers.linears import ColumnParallelLinear, RowParallelLinear
from ...parallel_layers.mappings import (
    copy_to_tensor_model_parallel_region,
    reduce_from_tensor_model_parallel_region,
)
from ...parallel_layers.parallel_state import (
    get_expert_model_parallel_group,
    get_expert_model_parallel_size,
    get_tensor_model_parallel_group,
)
from ...parallel_layers.utils import divide


class ExpertFusedLinearWithAsyncCommunication(torch.autograd.Function):
    """`einsum("e...h,ehi->e...i")` of inputs `(e or 1, ..., h)` and a weight `(e, h, i)`.

    Backward: the input gradient `grad @ W^T` (summed over experts when the input was shared by all,
    all-reduced over `process_group` with `async_grad_allreduce`); the weight gradient
    `einsum("e...h,e...i->ehi")`. No bias, no sequence parallelism (SP is left before the experts).
    """

    @staticmethod
    def forward(
        ctx,
        input: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        async_grad_allreduce: bool,
        sequence_parallel_enabled: bool,
        sequence_dimension: int | None = 0,
        save_for_backward: bool = True,
        process_group=None,
        reduce_dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        if bias is not None:
            raise NotImplementedError("Bias is not currently supported for MoE")
        if sequence_parallel_enabled:
            raise NotImplementedError(
                "sequence parallelism is not supported inside the expert-fused linears: leave the sequence-"
                "parallel region before the experts"
            )
        if input.shape[0] != weight.shape[0] and input.shape[0] > 1:
            raise RuntimeError(
                f"input and weight disagree on the number of experts (first dimension): "
                f"input_shape={tuple(input.shape)}, weight_shape={tuple(weight.shape)}"
            )
        ctx.async_grad_allreduce = async_grad_allreduce
        ctx.compute_weight_gradient = weight.requires_grad
        ctx.process_group = process_group if process_group is not None else get_tensor_model_parallel_group()
        ctx.saved = save_for_backward
        ctx.input_experts = input.shape[0]
        if save_for_backward:
            ctx.save_for_backward(*((input, weight) if ctx.compute_weight_gradient else (weight,)))
        return torch.einsum("e...h,ehi->e...i", input, weight)

    @staticmethod
    def backward(ctx, *grad_outputs: torch.Tensor) -> tuple[Any, ...]:
        (grad_output,) = grad_outputs
        if not ctx.saved:
            raise RuntimeError("the expert-fused linear was run with save_for_backward=False; no backward")
        if ctx.compute_weight_gradient:
            input, weight = ctx.saved_tensors
        else:
            (weight,) = ctx.saved_tensors
            input = None
        grad_input = torch.einsum("e...i,ehi->e...h", grad_output, weight)
        if ctx.input_experts == 1 and grad_input.shape[0] > 1:
            grad_input = grad_input.sum(dim=0, keepdim=True)
        if ctx.async_grad_allreduce:
            grad_input = comm.all_reduce(grad_input, ctx.process_group)
        grad_weight = None
        if ctx.compute_weight_gradient:
            shared = input.expand(grad_output.shape[0], *input.shape[1:])
            grad_weight = torch.einsum("e...h,e...i->ehi", shared, grad_output)
        return grad_input, grad_weight, None, None, None, None, None, None, None


class ExpertFusedLinear(torch.nn.Module):
    """Mixin that tags a layer's parameters as expert-parallel when the EP group has more than one rank."""

    def _mark_expert_parallel_weights(
        self, iterable=None, expert_parallel_group_size=None, is_prefill=True, expert_distribution=None
    ):
        if expert_parallel_group_size is None:
            expert_parallel_group_size = get_expert_model_parallel_size()
        if expert_parallel_group_size <= 1:
            return
        for tensor in self.parameters() if iterable is None else iterable:
            tensor.expert_model_parallel = True
            if is_prefill:
                tensor.is_prefill = True
            tensor.expert_distribution = expert_distribution

    def _apply(self, fn, *args, **kwargs):
        """`.to()` / `.cuda()` create new parameters: tag them again."""
        out = super()._apply(fn, *args, **kwargs)
        self._mark_expert_parallel_weights()
        return out

    def _save_to_state_dict(self, destination, *args, **kwargs):
        """Tag the tensors this layer adds to a state dict, so that savers can tell expert shards apart."""
        before = {id(value) for value in destination.values()}
        out = super()._save_to_state_dict(destination, *args, **kwargs)
        self._mark_expert_parallel_weights([v for v in destination.values() if id(v) not in before])
        return out


def _local_expert_count(num_experts: int, expert_model_parallel_group, expert_distribution) -> int:
    if expert_distribution is not None:
        raise NotImplementedError(
            "expert_distribution (uneven or redundant experts per EP rank) is an inference feature the "
            "reference backend does not provide"
        )
    return divide(num_experts, comm.group_size(expert_model_parallel_group))


def _init_per_expert(weight: torch.Tensor, init_method) -> None:
    """Run the init method on each expert's 2-D slice (default: nn.Linear's kaiming_uniform_(a=sqrt(5)))."""
    if weight.dim() != 3:
        raise AssertionError(f"expert weights are 3-D, got shape {tuple(weight.shape)}")
    for expert in range(weight.shape[0]):
        if init_method is None:
            torch.nn.init.kaiming_uniform_(weight[expert], a=math.sqrt(5))
        else:
            init_method(weight[expert])


class ExpertFusedColumnParallelLinear(ColumnParallelLinear, ExpertFusedLinear):
    """Column-parallel linear for all local experts at once: weight `[E / EP, input_size, output_size / TP]`."""

    autograd_func_class = ExpertFusedLinearWithAsyncCommunication

    def __init__(
        self,
        num_experts: int,
        input_size: int,
        output_size: int,
        bias: bool = False,
        dtype: torch.dtype = torch.float32,
        device: torch.device | None = None,
        stride: int = 1,
        init_method=None,
        keep_master_weight: bool = False,
        tensor_model_parallel_group=None,
        expert_model_parallel_group=None,
        is_prefill: bool = True,
        is_fused_gate_up: bool = False,
        expert_distribution: list[list[int]] | None = None,
    ) -> None:
        if bias:
            raise NotImplementedError("expert biases are not provided by the reference backend (NXD-23)")
        self.num_experts = num_experts
        if expert_model_parallel_group is None:
            expert_model_parallel_group = get_expert_model_parallel_group()
        self._n_local_experts = _local_expert_count(
            num_experts, expert_model_parallel_group, expert_distribution
        )
        self.expert_model_parallel_group = expert_model_parallel_group
        self.is_prefill = is_prefill
        self.is_fused_gate_up = is_fused_gate_up
        super().__init__(
            input_size=input_size,
            output_size=output_size,
            bias=bias,
            gather_output=False,
            dtype=dtype,
            device=device,
            stride=stride,
            init_method=init_method,
            sequence_parallel_enabled=False,
            keep_master_weight=keep_master_weight,
            skip_bias_add=False,
            tensor_model_parallel_group=tensor_model_parallel_group,
        )
        self._mark_expert_parallel_weights(
            expert_parallel_group_size=comm.group_size(expert_model_parallel_group),
            is_prefill=is_prefill,
            expert_distribution=expert_distribution,
        )

    def set_weight_and_bias_config(self) -> None:
        self.weight_shape = (self._n_local_experts, self.input_size, self.output_size_per_partition)
        self.weight_partition_dim = 2
        self.bias_shape = None

    def _init_weight(self, weight: torch.Tensor) -> None:
        _init_per_expert(weight, self.arg_init_method)

    def forward(
        self, input_: torch.Tensor, expert_indices: torch.Tensor | None = None, *_: Any
    ) -> torch.Tensor:
        """`(e, ..., input_size) -> (e, ..., output_size / TP)`, or only the experts in `expert_indices`."""
        if self.async_tensor_model_parallel_allreduce or self.sequence_parallel_enabled:
            input_parallel = input_
        else:
            input_parallel = copy_to_tensor_model_parallel_region(
                input_, process_group=self.tensor_parallel_group
            )
        weight = self.weight[expert_indices, :, :] if expert_indices is not None else self.weight
        return self._matmul(input_parallel, weight, self.async_tensor_model_parallel_allreduce, False)


class ExpertFusedRowParallelLinear(RowParallelLinear, ExpertFusedLinear):
    """Row-parallel linear for all local experts at once: weight `[E / EP, input_size / TP, output_size]`."""

    autograd_func_class = ExpertFusedLinearWithAsyncCommunication

    def __init__(
        self,
        num_experts: int,
        input_size: int,
        output_size: int,
        bias: bool = False,
        reduce_output: bool = True,
        dtype: torch.dtype = torch.float32,
        device: torch.device | None = None,
        stride: int = 1,
        init_method=None,
        keep_master_weight: bool = False,
        tensor_model_parallel_group=None,
        expert_model_parallel_group=None,
        is_prefill: bool = True,
        is_fused_gate_up: bool = False,
        expert_distribution: list[list[int]] | None = None,
    ) -> None:
        if bias:
            raise NotImplementedError("expert biases are not provided by the reference backend (NXD-23)")
        self.num_experts = num_experts
        if expert_model_parallel_group is None:
            expert_model_parallel_group = get_expert_model_parallel_group()
        self._n_local_experts = _local_expert_count(
            num_experts, expert_model_parallel_group, expert_distribution
        )
        self.expert_model_parallel_group = expert_model_parallel_group
        self.is_prefill = is_prefill
        self.is_fused_gate_up = is_fused_gate_up
        super().__init__(
            input_size=input_size,
            output_size=output_size,
            bias=bias,
            input_is_parallel=True,
            dtype=dtype,
            device=device,
            stride=stride,
            init_method=init_method,
            sequence_parallel_enabled=False,
            keep_master_weight=keep_master_weight,
            skip_bias_add=False,
            reduce_output=reduce_output,
            tensor_model_parallel_group=tensor_model_parallel_group,
        )
        self._mark_expert_parallel_weights(
            expert_parallel_group_size=comm.group_size(expert_model_parallel_group),
            is_prefill=is_prefill,
            expert_distribution=expert_distribution,
        )

    def set_weight_and_bias_config(self) -> None:
        self.weight_shape = (self._n_local_experts, self.input_size_per_partition, self.output_size)
        self.weight_partition_dim = 1
        self.bias_shape = None

    def _init_weight(self, weight: torch.Tensor) -> None:
        _init_per_expert(weight, self.arg_init_method)

    def forward(self, input_: torch.Tensor, expert_indices: torch.Tensor | None = None) -> torch.Tensor:
        """`(e, ..., input_size / TP) -> (e, ..., output_size)`, TP-reduced unless `reduce_output=False`."""
        weight = self.weight[expert_indices, :, :] if expert_indices is not None else self.weight
        output = self._matmul(input_, weight, False, False)
        if self.reduce_output:
            output = reduce_from_tensor_model_parallel_region(
                output, process_group=self.tensor_parallel_group
            )
        return output
