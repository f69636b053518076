"""`torch_xla.distributed.xla_backend`: the class optimum-neuron checks the default group against.

The reference backend's groups are gloo (or nccl) groups, never XLA ones; optimum-neuron creates an "xla"
group only when torch.distributed is not initialised yet, which never happens on the kit's ranks.
"""

from __future__ import annotations


class ProcessGroupXla:
    """torch_xla's process group type; never instantiated here."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        raise NotImplementedError("the reference backend runs on gloo or nccl groups, not XLA ones")
