"""Templates of NXS025 (learnable-activation-gradients), filled by `scaffold.rules.templates`."""

from neuronx_distributed.parallel_layers.mappings import reduce_from_tensor_model_parallel_region


def gradients_summed(activation):
    """After an activation with learnable parameters is built for a parallel MLP's intermediate."""
    # Its parameters are replicated but each rank applies them to its own columns of the intermediate:
    # their gradients are summed over the tensor-parallel ranks, so every replica gets the full one.
    for parameter in {activation}.parameters():
        parameter.register_hook(reduce_from_tensor_model_parallel_region)
