"""`neuronx_distributed.pipeline.model.NxDPPModel`: a name only (see the package docstring)."""

from __future__ import annotations

from torch import nn

from ._refusal import refuse_pipeline_parallelism


class NxDPPModel(nn.Module):
    """NxD's pipeline-parallel wrapper; building one raises NotImplementedError here."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        refuse_pipeline_parallelism("NxDPPModel")
