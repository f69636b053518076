"""`neuronx_distributed.pipeline.partition`: the name optimum-neuron imports (see the package docstring)."""

from __future__ import annotations

from typing import Any

from ._refusal import refuse_pipeline_parallelism


def analyze_shared_weights_across_stages(*args: Any, **kwargs: Any) -> Any:
    refuse_pipeline_parallelism("analyze_shared_weights_across_stages")
