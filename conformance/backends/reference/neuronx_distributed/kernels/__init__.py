"""Torch stand-ins for NxD's Neuron kernels (`neuronx_distributed.kernels`)."""
