"""Tensor-parallel layers (`neuronx_distributed.parallel_layers.layers`).

`ColumnParallelLinear`, `RowParallelLinear` and `ParallelEmbedding` with NxD's constructor signatures,
attributes, parameter tags and shard layouts. What generated models and optimum-neuron rely on:

- weights are sharded by `create_local_weight` (column: dim 0 with `stride`, row: dim 1, embedding: vocab
  rows or embedding columns) and tagged `tensor_model_parallel`, `partition_dim`, `partition_stride`,
  `num_partitions`, `rank_ordering`;
- on any real device a weight is initialised as NxD does on CPU: a float32 master of the full shape, the
  init method on it with the default torch RNG, then this rank's slice. A seeded layer therefore holds
  exactly the slices of `nn.Linear` / `nn.Embedding`, whatever the TP size. On `meta` only the tags are set;
- collectives follow NxD's mappings (sequence-parallel activations are sequence-first, `(S/T, B, H)`).

Deliberate differences from NxD 0.18 (see `deviations.py`): biases are master slices drawn with nn.Linear's
bound (NXD-03); `master_weight` is never a parameter (NXD-04); `padding_idx` is honoured for every value
and the embedding keeps its dtype (NXD-05); the sequence-parallel embedding reduces along a non-zero
`sequence_dimension` too (NXD-06); column input gradients are always reduced (NXD-07); stride > 1 with
`gather_output=True` returns the master's column order (NXD-15); `create_local_weight` always writes its
output (NXD-16).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.parameter import Parameter

from . import comm
from .layers_utils import LinearWithAsyncCommunication, linear_with_async_allreduce
from .mappings import (
    copy_to_tensor_model_parallel_region,
    gather_from_tensor_model_parallel_region,
    reduce_from_tensor_model_parallel_region,
    reduce_scatter_to_sequence_parallel_region,
    scatter_to_tensor_model_parallel_region,
)
from .parallel_state import (
    get_aot_mode,
    get_tensor_model_parallel_group,
    get_tensor_model_parallel_rank,
    get_tensor_model_parallel_size,
)
from .utils import (
    EmbeddingUtility,
    divide,
    param_is_not_tensor_parallel_duplicate,
    set_tensor_model_parallel_attributes,
)

__all__ = [
    "BaseParallelLayer",
    "BaseParallelLinear",
    "ColumnParallelLinear",
    "LinearWithAsyncCommunication",
    "ParallelEmbedding",
    "RowParallelLinear",
    "SPMDRank",
    "create_local_weight",
    "linear_with_async_allreduce",
    "param_is_not_tensor_parallel_duplicate",
]

InitMethod = Callable[[torch.Tensor], Any]


def create_local_weight(
    full_weight: torch.Tensor,
    partition_dim: int,
    per_partition_size: int,
    stride: int,
    out_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """This TP rank's shard of `full_weight`, by NxD's strided rule.

    The full tensor is cut along `partition_dim` into chunks of `per_partition_size / stride`; rank r takes
    chunks r, r + T, r + 2T, ... and concatenates them. So local index j of rank r is global index
    `(r + (j // c) * T) * c + j % c` with `c = per_partition_size / stride`. Rank and T are the global TP
    rank and size. `out_weight`, when given, is written in place (always, deviation NXD-16).
    """
    world = get_tensor_model_parallel_size()
    rank = get_tensor_model_parallel_rank()
    chunk = divide(per_partition_size, stride)
    pieces = torch.split(full_weight, chunk, dim=partition_dim)
    if len(pieces) != world * stride or pieces[-1].shape[partition_dim] != chunk:
        raise AssertionError(
            f"dimension {partition_dim} of size {full_weight.shape[partition_dim]} does not hold "
            f"{world} x {per_partition_size} (tensor parallel size x per-partition size)"
        )
    local = torch.cat(pieces[rank::world], dim=partition_dim)
    if out_weight is None:
        return local
    with torch.no_grad():
        out_weight.copy_(local)
    return out_weight


def _padding_length(size: int, multiple: int) -> int:
    """How much to add to `size` to make it a multiple of `multiple` (NxD's `get_padding_length`)."""
    return (-size) % multiple


def _draw_master(local_shape: Sequence[int], partition_dim: int, init_method: InitMethod) -> torch.Tensor:
    """The full float32 master of a shard of `local_shape`, initialised by `init_method` on CPU.

    Like NxD, the master is a Parameter (so `requires_grad=True`): an init method that writes in place
    outside `torch.no_grad()` fails here as it does on Trainium.
    """
    shape = list(local_shape)
    shape[partition_dim] *= get_tensor_model_parallel_size()
    master = Parameter(torch.empty(shape, dtype=torch.float32, device="cpu"))
    init_method(master)
    return master


def _initialize_parameter_cpu(
    param: torch.Tensor,
    partition_dim: int,
    num_partitions: int,
    init_method: InitMethod,
    return_master_param: bool = False,
    *,
    param_dtype: torch.dtype = torch.float32,
    stride: int = 1,
) -> torch.Tensor | None:
    """Tag `param` as sharded and fill it with its slice of a freshly initialised float32 master.

    The master has `param`'s shape with `partition_dim` multiplied by the global TP size; it is cast to
    `param_dtype` before slicing. With `return_master_param` the cast master comes back as a plain tensor
    (deviation NXD-04: assigning it to a module never registers a parameter).
    """
    set_tensor_model_parallel_attributes(param, True, partition_dim, stride, num_partitions=num_partitions)
    if get_aot_mode():
        return None
    master = _draw_master(param.shape, partition_dim, init_method).detach().to(param_dtype)
    create_local_weight(master, partition_dim, param.shape[partition_dim], stride, out_weight=param)
    return master if return_master_param else None


def _linear_bias_master(size: int, fan_in: int) -> torch.Tensor:
    """A full float32 bias drawn as nn.Linear draws it: uniform in +-1/sqrt(fan_in) (deviation NXD-03)."""
    master = torch.empty(size, dtype=torch.float32, device="cpu")
    bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
    torch.nn.init.uniform_(master, -bound, bound)
    return master


def _materialised(tensor: torch.Tensor) -> bool:
    return tensor.device.type != "meta"


class SPMDRank(torch.nn.Module):
    """The TP rank as an int32 parameter `rank` of shape [1] (for traced SPMD inference graphs).

    NxD starts it at 0 and expects the checkpoint to carry `arange(world_size)`; here it starts at this
    process's TP rank so an untraced model computes the right vocabulary range.
    """

    def __init__(self, world_size: int, tensor_model_parallel_size: int | None = None):
        super().__init__()
        self.world_size = world_size
        self.tensor_model_parallel_size = (
            tensor_model_parallel_size
            if tensor_model_parallel_size is not None
            else get_tensor_model_parallel_size()
        )
        initial = torch.tensor([get_tensor_model_parallel_rank()], dtype=torch.int32)
        self.rank = Parameter(initial, requires_grad=False)
        set_tensor_model_parallel_attributes(self.rank, True, 0, 1, num_partitions=world_size)

    def get_rank(self) -> torch.Tensor:
        return self.rank


class BaseParallelLayer(torch.nn.Module):
    """Common base of the parallel layers (the model-parallel groups must already exist)."""

    def __init__(self, device: torch.device | None = None):
        super().__init__()


class BaseParallelLinear(BaseParallelLayer):
    """What ColumnParallelLinear and RowParallelLinear share: init, re-init and the pad guard.

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
    pad: bool

    def set_weight_and_bias_config(self) -> None:
        raise NotImplementedError

    def _init_bias(self) -> None:
        raise NotImplementedError

    def _tag_bias(self) -> None:
        raise NotImplementedError

    def _init_weight(self, weight: torch.Tensor) -> None:
        """The layer's init method; by default nn.Linear's kaiming_uniform_(a=sqrt(5))."""
        if self.arg_init_method is None:
            torch.nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
        else:
            self.arg_init_method(weight)

    def _check_pad_false_for_training(self) -> None:
        if self.pad and self.training:
            raise RuntimeError("`pad=True` is only supported for inference. Set model.eval()")

    @property
    def _tp_world_size(self) -> int:
        return comm.group_size(self.tensor_parallel_group)

    def initialize_weight_and_bias(self) -> None:
        """(Re)create `weight` and `bias`: the weight from the init method's master, then nn.Linear's bias.

        With the default init method, a seeded layer holds slices of a seeded `nn.Linear(in, out)`.
        optimum-neuron calls this for layers a checkpoint did not cover. On `meta` only the TP tags are set.
        """
        self.set_weight_and_bias_config()
        self.weight = Parameter(torch.empty(*self.weight_shape, device=self.device, dtype=self.dtype))
        self.device = self.weight.device
        self.master_weight = None
        if _materialised(self.weight):
            self.init_weight_cpu()
        else:
            set_tensor_model_parallel_attributes(
                self.weight,
                True,
                self.weight_partition_dim,
                self.stride,
                num_partitions=self._tp_world_size,
                rank_ordering=self.rank_ordering,
            )
        if self.bias_shape is None:
            self.register_parameter("bias", None)
            return
        self.bias = Parameter(torch.empty(*self.bias_shape, device=self.device, dtype=self.dtype))
        if _materialised(self.bias):
            self._init_bias()
        self._tag_bias()

    def init_weight_cpu(self) -> None:
        """Fill `weight` (on any non-meta device) with its slice of the init method's float32 CPU master."""
        self.master_weight = _initialize_parameter_cpu(
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
        self.input_size = input_size
        self.output_size = output_size
        self.add_bias = bias
        self.gather_output = gather_output
        self.arg_init_method = init_method
        self.rank_ordering = rank_ordering
        self.tensor_parallel_group = (
            tensor_model_parallel_group
            if tensor_model_parallel_group is not None
            else get_tensor_model_parallel_group()
        )
        world_size = self._tp_world_size
        self.pad = pad
        self.keep_padded_output = keep_padded_output
        if pad:
            self.pad_size = _padding_length(output_size, pad_alignment_size_per_rank * world_size)
            self.output_size = output_size + self.pad_size
        self.output_size_per_partition = divide(self.output_size, world_size)
        self.dtype = dtype
        self.device = torch.device(device) if device is not None else None
        self.stride = stride
        self.keep_master_weight = keep_master_weight
        self.skip_bias_add = skip_bias_add
        self.initialize_weight_and_bias()

        self.async_tensor_model_parallel_allreduce = not sequence_parallel_enabled and world_size > 1
        if sequence_parallel_enabled:
            if world_size <= 1:
                warnings.warn(
                    f"`sequence_parallel_enabled` is set to `True`, but got world_size of {world_size}",
                    stacklevel=2,
                )
            if sequence_dimension is None:
                warnings.warn(
                    "`sequence_parallel_enabled` is set to `True`, but got `sequence_dimension` as `None`. "
                    "Defaulting `sequence_dimension` to 0.",
                    stacklevel=2,
                )
                sequence_dimension = 0
        self.sequence_parallel_enabled = sequence_parallel_enabled
        self.sequence_dimension = sequence_dimension
        self.reduce_dtype = reduce_dtype if reduce_dtype is not None else dtype
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
        master = _linear_bias_master(self.output_size, self.input_size).to(self.dtype)
        if not self.gather_output:
            master = create_local_weight(master, 0, self.output_size_per_partition, self.stride)
        self._copy_into_bias(master)

    def _tag_bias(self) -> None:
        if not self.gather_output:
            set_tensor_model_parallel_attributes(
                self.bias,
                True,
                self.bias_partition_dim,
                self.stride,
                num_partitions=self._tp_world_size,
                rank_ordering=self.rank_ordering,
            )

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
        output_parallel = self._forward_impl(
            input=input_parallel,
            weight=weight,
            bias=None,
            async_grad_allreduce=self.async_tensor_model_parallel_allreduce,
            sequence_parallel_enabled=self.sequence_parallel_enabled,
            sequence_dimension=self.sequence_dimension,
            autograd_func_class=self.autograd_func_class,
            process_group=self.tensor_parallel_group,
            reduce_dtype=self.reduce_dtype,
        )
        output = self._maybe_gather_output(output_parallel, strided=slice_indices is None)
        if self.skip_bias_add:
            return output, self.bias
        return output + self.bias if self.bias is not None else output

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
        size = model_state_dict[prefix].shape[0]
        if self.output_size != size + self.pad_size:
            raise RuntimeError(
                f"State dict {prefix} has {size} rows; expected {self.output_size - self.pad_size} before padding"
            )
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
        self.input_size = input_size
        self.output_size = output_size
        self.add_bias = bias
        self.input_is_parallel = input_is_parallel
        self.pad = pad
        self.reduce_output = reduce_output
        self.tensor_parallel_group = (
            tensor_model_parallel_group
            if tensor_model_parallel_group is not None
            else get_tensor_model_parallel_group()
        )
        self.reduce_dtype = reduce_dtype if reduce_dtype is not None else dtype
        self.tile_cc = tile_cc
        self.rank_ordering = rank_ordering
        world_size = self._tp_world_size
        if pad:
            self.pad_size = _padding_length(input_size, world_size)
            self.input_size = input_size + self.pad_size
        self.input_size_per_partition = divide(self.input_size, world_size)
        self.arg_init_method = init_method
        self.sequence_parallel_enabled = sequence_parallel_enabled
        if sequence_parallel_enabled and not input_is_parallel:
            raise RuntimeError("To enable `sequence_parallel_enabled`, `input_is_parallel` must be `True`")
        if sequence_parallel_enabled and sequence_dimension is None:
            warnings.warn(
                "`sequence_parallel_enabled` is set to `True`, but got `sequence_dimension` as `None`. "
                "Defaulting `sequence_dimension` to 0.",
                stacklevel=2,
            )
            sequence_dimension = 0
        self.sequence_dimension = sequence_dimension
        self.dtype = dtype
        self.device = torch.device(device) if device is not None else None
        self.stride = stride
        self.keep_master_weight = keep_master_weight
        self.skip_bias_add = skip_bias_add
        self.initialize_weight_and_bias()
        self._forward_impl = linear_with_async_allreduce

    def set_weight_and_bias_config(self) -> None:
        self.weight_shape = (self.output_size, self.input_size_per_partition)
        self.weight_partition_dim = 1
        self.bias_shape = (self.output_size,) if self.add_bias else None

    def _init_bias(self) -> None:
        self._copy_into_bias(_linear_bias_master(self.output_size, self.input_size))

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
        output = self._forward_impl(
            input=input_parallel,
            weight=weight,
            bias=None,
            async_grad_allreduce=False,
            sequence_parallel_enabled=False,
            sequence_dimension=self.sequence_dimension,
            autograd_func_class=self.autograd_func_class,
            process_group=self.tensor_parallel_group,
            reduce_dtype=self.reduce_dtype,
        )
        if self.reduce_output:
            output = self._reduce(output)
        if self.skip_bias_add:
            return output, self.bias
        return output + self.bias if self.bias is not None else output

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
        size = model_state_dict[prefix].shape[1]
        if self.input_size != size + self.pad_size:
            raise RuntimeError(
                f"State dict {prefix} has {size} columns; expected {self.input_size - self.pad_size} before padding"
            )
        model_state_dict[prefix] = F.pad(model_state_dict[prefix], (0, self.pad_size))


class ParallelEmbedding(BaseParallelLayer):
    """`nn.Embedding` with its table sharded over TP: vocabulary rows (default) or embedding columns.

    Vocabulary sharding: rank r holds rows `[vocab_start_index, vocab_end_index)` (the vocabulary must divide
    by T). Ids outside the range read local row 0 and are multiplied by 0, so they contribute zeros and no
    gradient; the partial outputs are summed over TP, or with sequence parallelism reduce-scattered into
    the sequence-first shard `(S/T, B, H)` (for `sequence_dimension` None/0: `(B, S, H)` is transposed first).
    `collect_output=False` returns the partial.

    Embedding sharding (`shard_across_embedding=True`): rank r holds columns `[r H/T, (r+1) H/T)`; the
    outputs are concatenated.

    `padding_idx` behaves as in `nn.Embedding` for every value, 0 included: its row starts at zero and never
    receives a gradient (deviation NXD-05). The attribute holds the local index, or None when the row lives
    on another rank.
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        padding_idx: int | None = None,
        max_norm: float | None = None,
        norm_type: float = 2.0,
        scale_grad_by_freq: bool = False,
        sparse: bool = False,
        init_method: InitMethod = torch.nn.init.normal_,
        device: torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        shard_across_embedding: bool = False,
        pad: bool = False,
        sequence_parallel_enabled: bool = False,
        tensor_model_parallel_group=None,
        use_spmd_rank: bool = False,
        sequence_dimension: int | None = None,
        tile_cc: bool = False,
        rank_ordering: Sequence[int] | None = None,
        collect_output: bool = True,
    ):
        super().__init__(device=device)
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.max_norm = max_norm
        self.norm_type = norm_type
        self.scale_grad_by_freq = scale_grad_by_freq
        self.sparse = sparse
        self.tensor_model_parallel_group = (
            tensor_model_parallel_group
            if tensor_model_parallel_group is not None
            else get_tensor_model_parallel_group()
        )
        world = self.tensor_model_parallel_size = comm.group_size(self.tensor_model_parallel_group)
        rank = comm.group_rank(self.tensor_model_parallel_group)
        self.shard_across_embedding = shard_across_embedding
        self.stride = 1
        self.pad = pad
        self.sequence_parallel_enabled = sequence_parallel_enabled
        self.sequence_dim = sequence_dimension
        self.tile_cc = tile_cc
        self.rank_util: SPMDRank | None = SPMDRank(world) if use_spmd_rank else None
        self.rank_ordering = rank_ordering
        self.collect_output = collect_output
        global_padding_idx = _checked_padding_idx(padding_idx, num_embeddings)

        if shard_across_embedding:
            if pad:
                self.pad_size = _padding_length(embedding_dim, world)
                self.embedding_dim = embedding_dim + self.pad_size
            self.num_embeddings_per_partition = self.num_embeddings
            self.embedding_dim_per_partition = divide(self.embedding_dim, world)
            self.start_index, self.end_index = 0, self.num_embeddings
            self.padding_idx = global_padding_idx
            self.per_partition_size = self.embedding_dim_per_partition
            self.weight_partition_dim = 1
        else:
            if pad:
                self.pad_size = _padding_length(num_embeddings, world)
                self.num_embeddings = num_embeddings + self.pad_size
            if self.num_embeddings % world != 0:
                raise AssertionError(
                    f"ParallelEmbedding: the vocabulary size {self.num_embeddings} is not divisible by the "
                    f"tensor parallel size {world}; pad the vocabulary to a multiple of {world} (e.g. "
                    f"resize_token_embeddings(pad_to_multiple_of={world})) or pass pad=True (inference only)"
                )
            self.start_index, self.end_index = EmbeddingUtility.range_from_global_vocab_size(
                self.num_embeddings, rank, world
            )
            self.num_embeddings_per_partition = self.end_index - self.start_index
            self.embedding_dim_per_partition = self.embedding_dim
            in_range = (
                global_padding_idx is not None and self.start_index <= global_padding_idx < self.end_index
            )
            self.padding_idx = global_padding_idx - self.start_index if in_range else None
            self.per_partition_size = self.num_embeddings_per_partition
            self.weight_partition_dim = 0

        self.init_method = init_method
        self.dtype = dtype
        self.weight = Parameter(
            torch.empty(
                self.num_embeddings_per_partition,
                self.embedding_dim_per_partition,
                device=device,
                dtype=dtype,
            )
        )
        if _materialised(self.weight):
            self.init_weight_cpu()
        else:
            set_tensor_model_parallel_attributes(
                self.weight,
                True,
                self.weight_partition_dim,
                1,
                num_partitions=world,
                rank_ordering=rank_ordering,
            )

    @property
    def vocab_start_index(self) -> int:
        return self.start_index

    @property
    def vocab_end_index(self) -> int:
        return self.end_index

    def init_weight_cpu(self) -> None:
        """Fill `weight` with its slice of the init method's float32 master; zero the padding row."""
        world = self.tensor_model_parallel_size
        _initialize_parameter_cpu(
            self.weight, self.weight_partition_dim, world, self.init_method, param_dtype=self.dtype
        )
        if self.padding_idx is not None:
            with torch.no_grad():
                self.weight[self.padding_idx].zero_()

    def _lookup(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(
            ids.long(),
            self.weight,
            self.padding_idx,
            self.max_norm,
            self.norm_type,
            self.scale_grad_by_freq,
            self.sparse,
        )

    def _forward_shard_across_vocab(self, input_: torch.Tensor) -> torch.Tensor:
        group, world = self.tensor_model_parallel_group, self.tensor_model_parallel_size
        start: int | torch.Tensor = self.start_index
        end: int | torch.Tensor = self.end_index
        if self.rank_util is not None:
            start = self.num_embeddings_per_partition * self.rank_util.get_rank()
            end = start + self.num_embeddings_per_partition
        if world > 1:
            mask = (input_ >= start) & (input_ < end)
            output = self._lookup((input_ - start) * mask)
            output = output * mask.unsqueeze(-1).to(output.dtype)
        else:
            output = self._lookup(input_)
        if not self.collect_output:
            return output
        if not self.sequence_parallel_enabled:
            return reduce_from_tensor_model_parallel_region(output, process_group=group)
        if self.sequence_dim:
            # NxD returns the un-reduced partial here (deviation NXD-06).
            return reduce_scatter_to_sequence_parallel_region(output, self.sequence_dim, process_group=group)
        sequence_first = output.transpose(0, 1).contiguous()
        return reduce_scatter_to_sequence_parallel_region(sequence_first, 0, process_group=group)

    def _forward_shard_across_embed(self, input_: torch.Tensor) -> torch.Tensor:
        output = self._lookup(input_)
        if not self.collect_output:
            return output
        return gather_from_tensor_model_parallel_region(
            output, process_group=self.tensor_model_parallel_group
        )

    def forward(self, input_: torch.Tensor) -> torch.Tensor:
        if self.pad and self.training:
            raise RuntimeError("`pad=True` is only supported for inference. Set model.eval()")
        if not self.shard_across_embedding:
            return self._forward_shard_across_vocab(input_)
        output = self._forward_shard_across_embed(input_)
        if self.pad and self.pad_size > 0:
            output = torch.narrow(output, -1, 0, self.embedding_dim - self.pad_size)
        return output

    def preshard_hook(self, model_state_dict: dict[str, Any], prefix: str) -> None:
        """Pad a full checkpoint table with zero rows (vocab sharding) or zero columns (embedding sharding)."""
        if not self.pad or self.pad_size == 0:
            return
        size = model_state_dict[prefix].shape[self.weight_partition_dim]
        if self.shard_across_embedding:
            expected, padding = self.embedding_dim, (0, self.pad_size)
        else:
            expected, padding = self.num_embeddings, (0, 0, 0, self.pad_size)
        if expected != size + self.pad_size:
            raise RuntimeError(f"State dict {prefix} has size {size}; expected {expected - self.pad_size}")
        model_state_dict[prefix] = F.pad(model_state_dict[prefix], padding)


def _checked_padding_idx(padding_idx: int | None, num_embeddings: int) -> int | None:
    """`padding_idx` as a non-negative row index, validated as nn.Embedding does."""
    if padding_idx is None:
        return None
    if not -num_embeddings <= padding_idx < num_embeddings:
        raise AssertionError(f"padding_idx {padding_idx} must be within num_embeddings ({num_embeddings})")
    return padding_idx % num_embeddings
