"""`SPMDRank`: the tensor-parallel rank held as a module parameter (NxD's `layers.SPMDRank`)."""

from __future__ import annotations

import torch
from torch.nn.parameter import Parameter

from .parallel_state import get_tensor_model_parallel_rank, get_tensor_model_parallel_size
from .utils import set_tensor_model_parallel_attributes


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
