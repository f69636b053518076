"""NxD's `pipeline` package, without pipeline parallelism.

The reference backend does not implement pipeline parallelism (DESIGN §4). These names exist because
optimum-neuron's host modules import them at module level (and subclass `NxDPPModel` and `HFTracerWrapper`)
while using them only when `pipeline_parallel_size > 1`; building or calling any of them raises
NotImplementedError, so a PP run fails with a clear message instead of computing something else.
"""

from .model import NxDPPModel

__all__ = ["NxDPPModel"]
