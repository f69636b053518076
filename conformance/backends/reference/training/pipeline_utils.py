"""Pipeline-stage helpers (`optimum.neuron.models.training.pipeline_utils`), reduced to what PP=1 needs.

The reference backend does not implement pipeline parallelism: a model's parameters all belong to the
single stage.
"""

from __future__ import annotations

from torch import nn

from ..neuronx_distributed.parallel_layers import parallel_state


def get_pipeline_parameters_for_current_stage(model: nn.Module) -> set[str]:
    """The state-dict names this pipeline stage holds: all of them at PP=1; PP>1 is NotImplementedError."""
    if (
        parallel_state.model_parallel_is_initialized()
        and parallel_state.get_pipeline_model_parallel_size() > 1
    ):
        raise NotImplementedError(
            "The reference backend does not implement pipeline parallelism: run with pipeline_parallel_size=1, "
            "or use the neuron backend on a Trainium host."
        )
    return set(model.state_dict().keys())
