"""What the parallel layers share: `BaseParallelLayer`, and `BaseParallelLinear` for the two linears.

`BaseParallelLinear` holds the constructor arguments Column- and RowParallelLinear have in common, the
weight and bias (re)initialisation (float32 master, then this rank's slice, see `sharded_init`), the call
into `linear_with_async_allreduce`, the bias add and the checks shared by their `pad` support.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch.nn.parameter import Parameter

from . import _collectives as comm
from .layers_utils import LinearWithAsyncCommunication
from .parallel_state import get_tensor_model_parallel_group
from .sharded_init import (
    InitMethod,
    default_linear_init,
    init_or_tag,
    initialize_parameter_cpu,
    is_materialised,
)
from .utils import set_tensor_model_parallel_attributes


class BaseParallelLayer(torch.nn.Module):
    """Common base of the parallel layers (the model-parallel groups must already exist)."""

    pad: bool

    def __init__(self, device: torch.device | None = None):
        super().__init__()

    def _check_pad_false_for_training(self) -> None:
        if self.pad and self.training:
            raise RuntimeError("`pad=True` is only supported for inference. Set model.eval()")


def default_sequence_dimension(sequence_parallel_enabled: bool, sequence_dimension: int | None) -> int | None:
    """`sequence_dimension`, or 0 with a warning when sequence parallelism is on and it is None.

    The warning points at the code that built the layer (two frames above this function).
    """
    if sequence_parallel_enabled and sequence_dimension is None:
        warnings.warn(
            "`sequence_parallel_enabled` is set to `True`, but got `sequence_dimension` as `None`. "
            "Defaulting `sequence_dimension` to 0.",
            stacklevel=3,
        )
        return 0
    return sequence_dimension


class BaseParallelLinear(BaseParallelLayer):
    """What ColumnParallelLinear and RowParallelLinear share: arguments, init, re-init, matmul, bias add.

    Subclasses set `weight_shape`, `weight_partition_dim` and `bias_shape` in `set_weight_and_bias_config`,
    and draw / tag their bias in `_init_bias` / `_tag_bias`.
    """

    autograd_func_class: type[torch.autograd.Function] = LinearWithAsyncCommunication

    # Set by subclasses before initialize_weight_and_bias runs.
    tensor_parallel_group: Any
    arg_init_method: InitMethod | None
    weight_shape: tuple[int, int]
    weight_partition_dim: int
    bias_shape: tuple[int] | None
    dtype: torch.dtype
    device: torch.device | None
    stride: int
    keep_master_weight: bool
    rank_ordering: Sequence[int] | None
    sequence_dimension: int | None
    reduce_dtype: torch.dtype

    def _store_common_arguments(self, arguments: dict[str, Any]) -> None:
        """Keep the constructor arguments both linears take, from the subclass constructor's `locals()`.

        The group defaults to the TP group, the reduce dtype to the layer's dtype.
        """
        self.input_size: int = arguments["input_size"]
        self.output_size: int = arguments["output_size"]
        self.add_bias: bool = arguments["bias"]
        self.arg_init_method = arguments["init_method"]
        self.rank_ordering = arguments["rank_ordering"]
        group = arguments["tensor_model_parallel_group"]
        self.tensor_parallel_group = group if group is not None else get_tensor_model_parallel_group()
        self.pad = arguments["pad"]
        self.dtype = arguments["dtype"]
        device = arguments["device"]
        self.device = torch.device(device) if device is not None else None
        self.stride = arguments["stride"]
        self.keep_master_weight = arguments["keep_master_weight"]
        self.skip_bias_add: bool = arguments["skip_bias_add"]
        reduce_dtype = arguments["reduce_dtype"]
        self.reduce_dtype = reduce_dtype if reduce_dtype is not None else self.dtype

    def set_weight_and_bias_config(self) -> None:
        raise NotImplementedError

    def _init_bias(self) -> None:
        raise NotImplementedError

    def _tag_bias(self) -> None:
        raise NotImplementedError

    def _init_weight(self, weight: torch.Tensor) -> None:
        """The layer's init method; by default nn.Linear's kaiming_uniform_(a=sqrt(5))."""
        if self.arg_init_method is None:
            default_linear_init(weight)
        else:
            self.arg_init_method(weight)

    @property
    def _tp_world_size(self) -> int:
        return comm.group_size(self.tensor_parallel_group)

    def _tag_sharded(self, tensor: torch.Tensor, partition_dim: int) -> None:
        """Tag `tensor` as split along `partition_dim` over this layer's TP group, with its stride."""
        set_tensor_model_parallel_attributes(
            tensor,
            True,
            partition_dim,
            self.stride,
            num_partitions=self._tp_world_size,
            rank_ordering=self.rank_ordering,
        )

    def initialize_weight_and_bias(self) -> None:
        """(Re)create `weight` and `bias`: the weight from the init method's master, then nn.Linear's bias.

        With the default init method, a seeded layer holds slices of a seeded `nn.Linear(in, out)`.
        optimum-neuron calls this for layers a checkpoint did not cover. On `meta` only the TP tags are set.
        """
        self.set_weight_and_bias_config()
        self.weight = Parameter(torch.empty(*self.weight_shape, device=self.device, dtype=self.dtype))
        self.device = self.weight.device
        self.master_weight = None
        init_or_tag(
            self.weight,
            self.init_weight_cpu,
            self.weight_partition_dim,
            self.stride,
            self._tp_world_size,
            self.rank_ordering,
        )
        if self.bias_shape is None:
            self.register_parameter("bias", None)
            return
        self.bias = Parameter(torch.empty(*self.bias_shape, device=self.device, dtype=self.dtype))
        if is_materialised(self.bias):
            self._init_bias()
        self._tag_bias()

    def init_weight_cpu(self) -> None:
        """Fill `weight` (on any non-meta device) with its slice of the init method's float32 CPU master."""
        self.master_weight = initialize_parameter_cpu(
            self.weight,
            self.weight_partition_dim,
            self._tp_world_size,
            self._init_weight,
            self.keep_master_weight,
            param_dtype=self.dtype,
            stride=self.stride,
        )

    def _copy_into_bias(self, values: torch.Tensor) -> None:
        with torch.no_grad():
            self.bias.copy_(values)

    def _matmul(
        self,
        input_: torch.Tensor,
        weight: torch.Tensor,
        async_grad_allreduce: bool,
        sequence_parallel_enabled: bool,
    ) -> torch.Tensor:
        """`input_ @ weight.T` through `_forward_impl`, with the layer's group, reduce dtype and SP dim."""
        return self._forward_impl(
            input=input_,
            weight=weight,
            bias=None,
            async_grad_allreduce=async_grad_allreduce,
            sequence_parallel_enabled=sequence_parallel_enabled,
            sequence_dimension=self.sequence_dimension,
            autograd_func_class=self.autograd_func_class,
            process_group=self.tensor_parallel_group,
            reduce_dtype=self.reduce_dtype,
        )

    def _add_bias(self, output: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
        """`output + bias`, or `(output, bias)` with `skip_bias_add`."""
        if self.skip_bias_add:
            return output, self.bias
        return output + self.bias if self.bias is not None else output

    def _check_checkpoint_size(self, prefix: str, size: int, padded_size: int, unit: str) -> None:
        """A full checkpoint tensor must have `padded_size - pad_size` `unit` before `preshard_hook` pads it."""
        if padded_size != size + self.pad_size:
            raise RuntimeError(
                f"State dict {prefix} has {size} {unit}; expected {padded_size - self.pad_size} before padding"
            )
