"""`ColumnParallelLinear` and `RowParallelLinear` (NxD's tensor-parallel linears).

Column layers shard the weight's output rows (dim 0, with `stride`), row layers its input columns
(dim 1). Deviations: biases are master slices drawn with nn.Linear's bound (NXD-03); `master_weight` is
never a parameter (NXD-04); column input gradients are always reduced (NXD-07); stride > 1 with
`gather_output=True` returns the master's column order (NXD-15).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ...deviation_record import note
from .layers_utils import linear_with_async_allreduce
from .linear_base import BaseParallelLinear, default_sequence_dimension
from .mappings import (
    copy_to_tensor_model_parallel_region,
    gather_from_tensor_model_parallel_region,
    reduce_from_tensor_model_parallel_region,
    reduce_scatter_to_sequence_parallel_region,
    scatter_to_tensor_model_parallel_region,
)
from .sharded_init import InitMethod, create_local_weight, linear_bias_master, padding_length
from .utils import divide


class ColumnParallelLinear(BaseParallelLinear):
    """`Y = X A^T + b` with A's output rows sharded over TP: weight `[output_size / T, input_size]`.

    - Without sequence parallelism the input is replicated and its gradient all-reduced over TP; with it
      the input is a sequence shard (`(S/T, B, H)` for `sequence_dimension=0`) all-gathered in forward,
      its gradient reduce-scattered in backward.
    - `gather_output=True` concatenates the per-rank outputs (in the master's column order, NXD-15) and
      uses a full, replicated bias; otherwise the output and the bias stay sharded like the weight rows.
    - `skip_bias_add=True` returns `(output, bias)`.
    """

    def __init__(
        self,
        input_size: int,
        output_size: int,
        bias: bool = True,
        gather_output: bool = True,
        dtype: torch.dtype = torch.float32,
        device: torch.device | None = None,
        stride: int = 1,
        init_method: InitMethod | None = None,
        sequence_parallel_enabled: bool = False,
        sequence_dimension: int | None = None,
        keep_master_weight: bool = False,
        skip_bias_add: bool = False,
        pad: bool = False,
        pad_alignment_size_per_rank: int = 1,
        keep_padded_output: bool = False,
        tensor_model_parallel_group=None,
        reduce_dtype: torch.dtype = torch.float32,
        rank_ordering: Sequence[int] | None = None,
    ):
        super().__init__(device=device)
        self._store_common_arguments(locals())
        self.gather_output = gather_output
        self.keep_padded_output = keep_padded_output
        world_size = self._tp_world_size
        if pad:
            self.pad_size = padding_length(output_size, pad_alignment_size_per_rank * world_size)
            self.output_size = output_size + self.pad_size
        self.output_size_per_partition = divide(self.output_size, world_size)
        self.initialize_weight_and_bias()

        self.async_tensor_model_parallel_allreduce = not sequence_parallel_enabled and world_size > 1
        if sequence_parallel_enabled and world_size <= 1:
            warnings.warn(
                f"`sequence_parallel_enabled` is set to `True`, but got world_size of {world_size}",
                stacklevel=2,
            )
        self.sequence_parallel_enabled = sequence_parallel_enabled
        self.sequence_dimension = default_sequence_dimension(sequence_parallel_enabled, sequence_dimension)
        self._forward_impl = linear_with_async_allreduce

    def set_weight_and_bias_config(self) -> None:
        self.weight_shape = (self.output_size_per_partition, self.input_size)
        self.weight_partition_dim = 0
        if self.add_bias:
            self.bias_shape = (self.output_size if self.gather_output else self.output_size_per_partition,)
            self.bias_partition_dim = 0
        else:
            self.bias_shape = None

    def _init_bias(self) -> None:
        if self._tp_world_size > 1:
            note("NXD-03")  # NxD draws this bias per rank: every rank holds the same values
        master = linear_bias_master(self.output_size, self.input_size).to(self.dtype)
        if not self.gather_output:
            master = create_local_weight(master, 0, self.output_size_per_partition, self.stride)
        self._copy_into_bias(master)

    def _tag_bias(self) -> None:
        if not self.gather_output:
            self._tag_sharded(self.bias, self.bias_partition_dim)

    def forward(
        self, input: torch.Tensor, slice_indices: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
        self._check_pad_false_for_training()
        if self.async_tensor_model_parallel_allreduce or self.sequence_parallel_enabled:
            input_parallel = input
        else:
            input_parallel = copy_to_tensor_model_parallel_region(
                input, process_group=self.tensor_parallel_group
            )
        weight = self.weight[slice_indices, :] if slice_indices is not None else self.weight
        output_parallel = self._matmul(
            input_parallel, weight, self.async_tensor_model_parallel_allreduce, self.sequence_parallel_enabled
        )
        return self._add_bias(self._maybe_gather_output(output_parallel, strided=slice_indices is None))

    def _maybe_gather_output(self, output_parallel: torch.Tensor, strided: bool) -> torch.Tensor:
        if not self.gather_output:
            return output_parallel
        if self.sequence_parallel_enabled:
            raise AssertionError("gather_output=True cannot be combined with sequence parallelism")
        output = gather_from_tensor_model_parallel_region(
            output_parallel, process_group=self.tensor_parallel_group
        )
        if strided and self.stride > 1 and self._tp_world_size > 1:
            output = output.index_select(-1, self._master_column_order(output.device))
        if self.pad and self.pad_size > 0 and not self.keep_padded_output:
            output = torch.narrow(output, -1, 0, self.output_size - self.pad_size)
        return output

    def _master_column_order(self, device: torch.device) -> torch.Tensor:
        """For each master column, its position in the rank-order concatenation (deviation NXD-15)."""
        world, per_rank = self._tp_world_size, self.output_size_per_partition
        chunk = per_rank // self.stride
        master = torch.arange(self.output_size, device=device)
        block = master // chunk
        return (block % world) * per_rank + (block // world) * chunk + master % chunk

    def preshard_hook(self, model_state_dict: dict[str, Any], prefix: str) -> None:
        """Pad a full checkpoint tensor to the padded output size: zero weight rows, `finfo.min` bias."""
        if not self.pad or self.pad_size == 0:
            return
        self._check_checkpoint_size(prefix, model_state_dict[prefix].shape[0], self.output_size, "rows")
        if prefix.endswith("weight"):
            model_state_dict[prefix] = F.pad(model_state_dict[prefix], (0, 0, 0, self.pad_size))
        elif prefix.endswith("bias"):
            fill = torch.finfo(model_state_dict[prefix].dtype).min
            model_state_dict[prefix] = F.pad(model_state_dict[prefix], (0, self.pad_size), "constant", fill)
        else:
            raise RuntimeError(
                f"Could not decide the sharding logic for {prefix}: it must end with weight or bias"
            )


class RowParallelLinear(BaseParallelLinear):
    """`Y = X A^T + b` with A's input columns sharded over TP: weight `[output_size, input_size / T]`.

    - `input_is_parallel=True` takes the input's last dimension already sharded; otherwise it is split here.
    - The partial products are summed over TP in `reduce_dtype`: all-reduced, or with sequence parallelism
      reduce-scattered along `sequence_dimension` (giving `(S/T, B, H)`). `reduce_output=False` returns the
      partial sum.
    - The bias is never sharded, is tagged `sequence_parallel_enabled`, and is added once, after the
      reduction (every rank adds it, even to a partial sum).
    """

    def __init__(
        self,
        input_size: int,
        output_size: int,
        bias: bool = True,
        input_is_parallel: bool = False,
        dtype: torch.dtype = torch.float32,
        device: torch.device | None = None,
        stride: int = 1,
        init_method: InitMethod | None = None,
        sequence_parallel_enabled: bool = False,
        sequence_dimension: int | None = None,
        keep_master_weight: bool = False,
        skip_bias_add: bool = False,
        pad: bool = False,
        reduce_output: bool = True,
        tensor_model_parallel_group=None,
        reduce_dtype: torch.dtype = torch.float32,
        tile_cc: bool = False,
        rank_ordering: Sequence[int] | None = None,
    ):
        super().__init__(device=device)
        self._store_common_arguments(locals())
        self.input_is_parallel = input_is_parallel
        self.reduce_output = reduce_output
        self.tile_cc = tile_cc
        world_size = self._tp_world_size
        if pad:
            self.pad_size = padding_length(input_size, world_size)
            self.input_size = input_size + self.pad_size
        self.input_size_per_partition = divide(self.input_size, world_size)
        self.sequence_parallel_enabled = sequence_parallel_enabled
        if sequence_parallel_enabled and not input_is_parallel:
            raise RuntimeError("To enable `sequence_parallel_enabled`, `input_is_parallel` must be `True`")
        self.sequence_dimension = default_sequence_dimension(sequence_parallel_enabled, sequence_dimension)
        self.initialize_weight_and_bias()
        self._forward_impl = linear_with_async_allreduce

    def set_weight_and_bias_config(self) -> None:
        self.weight_shape = (self.output_size, self.input_size_per_partition)
        self.weight_partition_dim = 1
        self.bias_shape = (self.output_size,) if self.add_bias else None

    def _init_bias(self) -> None:
        if self._tp_world_size > 1:
            note("NXD-03")  # NxD draws this bias with the bound 1/sqrt(in/T)
        self._copy_into_bias(linear_bias_master(self.output_size, self.input_size))

    def _tag_bias(self) -> None:
        self.bias.sequence_parallel_enabled = self.sequence_parallel_enabled

    def forward(
        self, input_: torch.Tensor, slice_indices: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
        self._check_pad_false_for_training()
        if self.input_is_parallel:
            input_parallel = input_
        else:
            if self.pad and self.pad_size > 0:
                input_ = F.pad(input_, (0, self.pad_size))
            if self.sequence_parallel_enabled:
                raise AssertionError("sequence parallelism needs input_is_parallel=True")
            input_parallel = scatter_to_tensor_model_parallel_region(
                input_, process_group=self.tensor_parallel_group
            )
        weight = self.weight[:, slice_indices] if slice_indices is not None else self.weight
        output = self._matmul(input_parallel, weight, False, False)
        if self.reduce_output:
            output = self._reduce(output)
        return self._add_bias(output)

    def _reduce(self, output: torch.Tensor) -> torch.Tensor:
        original_dtype = output.dtype
        output = output.to(self.reduce_dtype)
        if self.sequence_parallel_enabled:
            output = reduce_scatter_to_sequence_parallel_region(
                output,
                self.sequence_dimension,
                process_group=self.tensor_parallel_group,
                dtype=original_dtype,
            )
        else:
            output = reduce_from_tensor_model_parallel_region(
                output, process_group=self.tensor_parallel_group
            )
        return output.to(original_dtype)

    def preshard_hook(self, model_state_dict: dict[str, Any], prefix: str) -> None:
        """Pad a full checkpoint weight with zero input columns; the bias is left alone."""
        if not self.pad or self.pad_size == 0 or prefix.endswith("bias"):
            return
        self._check_checkpoint_size(prefix, model_state_dict[prefix].shape[1], self.input_size, "columns")
        model_state_dict[prefix] = F.pad(model_state_dict[prefix], (0, self.pad_size))
