"""The reference backend: NxD's tensor-parallel layers and optimum-neuron's training host on torch.distributed.

`neuronx_distributed/` mirrors the real package's module tree and `training/` mirrors
`optimum.neuron.models.training`. Nothing here is importable under the real names until
`conformance.backends.activate("reference")` installs the import aliases.
"""
