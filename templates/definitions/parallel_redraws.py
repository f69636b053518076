"""Definitions NXS015 (parallel-init-redraws) inserts whole, once per file, into a model whose source's
`_init_weights` re-draws the weight of a layer that the generated model builds as a tensor-parallel one.

transformers' `_init_weights` may draw a layer's weight again after its constructor: ModernBERT draws each
child projection from a truncated normal of its role's std, GPT-2 draws every `c_proj.weight` with a std
scaled by the depth. On a tensor-parallel layer each rank holds only its slice, and a draw on the slice
from the rank's random stream gives a model that depends on the tensor-parallel size. NxD's layers draw
one full master weight (every rank alike) and keep the rank's slice of it (`init_method`); these helpers do
the same around the source's own re-draw: within the block each tensor-parallel parameter it names is a
master of the full shape, and after the block the rank keeps its slice of what the block wrote there. The
master starts as NaN, which no draw gives, so elements the block leaves alone (an embedding's padding row
zeroed alone, say) keep the rank's value.
"""

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from neuronx_distributed.parallel_layers.parallel_state import get_tensor_model_parallel_size
from torch import nn

from ..transformations_utils import create_local_weight_with_padding


def _redrawn_in_full(parameter: torch.Tensor) -> bool:
    """A tensor-parallel parameter holding data (a `meta` one has none to draw)."""
    return bool(getattr(parameter, "tensor_model_parallel", False)) and not parameter.is_meta


def _unwritten_master(parameter: torch.Tensor) -> nn.Parameter:
    """A full-shape master of `parameter`'s dtype, every element NaN (not yet written)."""
    shape = list(parameter.shape)
    shape[parameter.partition_dim] *= get_tensor_model_parallel_size()
    master = torch.full(shape, float("nan"), dtype=parameter.dtype, device=parameter.device)
    return nn.Parameter(master, requires_grad=parameter.requires_grad)


def _keep_written_slice(master: torch.Tensor, parameter: torch.Tensor) -> None:
    """Write into `parameter` this rank's slice of the elements of `master` that are no longer NaN."""
    local = create_local_weight_with_padding(
        master.detach(), parameter.partition_dim, parameter.partition_stride
    )
    written = ~torch.isnan(local)
    with torch.no_grad():
        parameter.data[written] = local[written]


@contextmanager
def full_parameter(parameter: torch.Tensor) -> Iterator[torch.Tensor]:
    """`parameter` itself, or, for a tensor-parallel one, its full master to draw; this rank then keeps its
    slice of what the block wrote there."""
    if not _redrawn_in_full(parameter):
        yield parameter
        return
    master = _unwritten_master(parameter)
    yield master
    _keep_written_slice(master, parameter)


@contextmanager
def full_weights(*layers: nn.Module) -> Iterator[None]:
    """Within the block, each tensor-parallel parameter of `layers` is its full master (the layers' other
    parameters are theirs); after it, each rank keeps its slice of what the block wrote there."""
    swapped = []
    for layer in dict.fromkeys(layers):
        for name, parameter in list(layer.named_parameters(recurse=False)):
            if _redrawn_in_full(parameter):
                master = _unwritten_master(parameter)
                setattr(layer, name, master)
                swapped.append((layer, name, parameter, master))
    try:
        yield
    finally:
        for layer, name, parameter, _ in swapped:
            setattr(layer, name, parameter)
    for _, _, parameter, master in swapped:
        _keep_written_slice(master, parameter)
