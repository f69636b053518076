"""Tensor-parallel building blocks (`neuronx_distributed.parallel_layers`)."""
