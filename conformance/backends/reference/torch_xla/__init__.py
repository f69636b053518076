"""The few torch_xla pieces that optimum-neuron's released model and host code use, on torch.

Served under the name `torch_xla` only in a process that activated the reference backend, and only where no
real torch_xla is installed (`conformance.backends.activate` refuses otherwise). Nothing here compiles or
traces: an "xla" device is the rank's own device (`conformance.backends.reference.xla_device`), activation
checkpointing is torch's reentrant checkpoint (torch_xla's is a reentrant copy of it), and `xla_model`'s and
`runtime`'s helpers answer from torch.distributed.

Libraries that probe for torch_xla (accelerate imports `torch_xla.core.xla_model` and `torch_xla.runtime`
and takes its XLA paths if both import; transformers asks `find_spec`) would take these pieces for a real
torch_xla: `conformance.backends.activate` sets `USE_TORCH_XLA=0`, their documented switch for "torch_xla is
installed but this is a native torch job", before they are imported on the ranks.
"""
