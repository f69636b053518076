"""Templates of the parallel layers the rules build (NXS010, NXS013, NXS020, NXS021, NXS024).

Filled by `scaffold.rules.templates` (see there for the conventions). Every parallel layer takes the
same keyword arguments from the configs: the init method (normal with std `initializer_range`, computed
once per constructor as `init_method`), the sequence-parallel flag, the sequence dimension of its
activations (0: NxD's `(S, B, D)` layout) and the dtype.
"""

from functools import partial

import torch
from neuronx_distributed.parallel_layers.layers import (
    ColumnParallelLinear,
    ParallelEmbedding,
    RowParallelLinear,
)
from torch import nn


def init_helper():
    """The module-level init function every parallel layer's `init_method` is built from."""

    def _init_normal(std: float, tensor: torch.Tensor) -> torch.Tensor:
        """Fill `tensor` from N(0, std^2): the init method of every parallel layer (std = initializer_range)."""
        return nn.init.normal_(tensor, mean=0.0, std=std)


def init_method(_init_normal, init_std):
    """The constructor's init method, bound once (as `init_method`) before its first parallel layer;
    `init_std` is the config field the source's `_init_weights` reads (`config.initializer_range`)."""
    return partial(_init_normal, {init_std})


def column_parallel_linear(config, trn_config, init_method, in_features, out_features, bias):
    """A column-parallel linear: output features sharded, output left sharded."""
    return ColumnParallelLinear(
        {in_features},
        {out_features},
        bias={bias},
        gather_output=False,
        init_method=init_method,
        sequence_parallel_enabled=trn_config.sequence_parallel_enabled,
        sequence_dimension=0,
        dtype=config.dtype,
    )


def row_parallel_linear(config, trn_config, init_method, in_features, out_features, bias):
    """A row-parallel linear: input features sharded, output all-reduced (reduce-scattered under SP)."""
    return RowParallelLinear(
        {in_features},
        {out_features},
        bias={bias},
        input_is_parallel=True,
        init_method=init_method,
        sequence_parallel_enabled=trn_config.sequence_parallel_enabled,
        sequence_dimension=0,
        dtype=config.dtype,
    )


def parallel_embedding(config, trn_config, init_method):
    """The keyword arguments of a vocabulary-parallel embedding (the source's own arguments go first)."""
    return ParallelEmbedding(
        init_method=init_method,
        sequence_parallel_enabled=trn_config.sequence_parallel_enabled,
        dtype=config.dtype,
    )


def vocab_parallel_lm_head(config, trn_config, init_method):
    """The keyword arguments of the lm head (the source's own arguments go first): vocabulary-sharded
    logits, never gathered."""
    return ColumnParallelLinear(
        gather_output=False,
        init_method=init_method,
        sequence_parallel_enabled=trn_config.sequence_parallel_enabled,
        sequence_dimension=0,
        dtype=config.dtype,
    )
