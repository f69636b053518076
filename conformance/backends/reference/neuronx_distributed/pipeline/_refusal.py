"""The one error every pipeline-parallel entry point of the reference backend raises."""

from __future__ import annotations

from typing import NoReturn


def refuse_pipeline_parallelism(what: str) -> NoReturn:
    raise NotImplementedError(
        f"{what}: the reference backend does not implement pipeline parallelism; run with "
        "pipeline_parallel_size=1, or use the neuron backend on a Trainium host."
    )
