"""`neuronx_distributed.pipeline.trace`: the tracer names optimum-neuron subclasses (see the package
docstring); building a tracer or tracing raises NotImplementedError here."""

from __future__ import annotations

from typing import Any

from ._refusal import refuse_pipeline_parallelism


class NxDTracer:
    """NxD's FX tracer for pipeline partitioning."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        refuse_pipeline_parallelism("NxDTracer")

    def is_leaf_module(self, module: object, module_qualified_name: str) -> bool:
        refuse_pipeline_parallelism("NxDTracer.is_leaf_module")


class HFTracerWrapper(NxDTracer):
    """NxD's tracer for transformers models."""


def trace_model(*args: Any, **kwargs: Any) -> Any:
    refuse_pipeline_parallelism("trace_model")
