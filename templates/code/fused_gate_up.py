"""Templates of NXS020 (fused-gate-up), filled by `scaffold.rules.templates`."""

from neuronx_distributed.parallel_layers.layers import ColumnParallelLinear
from neuronx_distributed.parallel_layers.parallel_state import get_tensor_model_parallel_size
from neuronx_distributed.parallel_layers.utils import divide

from ..transformations_utils import FusedLinearsSpec, ModelWeightTransformationSpecs


def gate_up_projection(
    self,
    config,
    trn_config,
    init_method,
    hidden_size,
    fused_size,
    bias,
    split_size,
    gate,
    up,
    gate_size,
    up_size,
):
    """The constructor's gate and up projections as one column-parallel layer, with the spec that maps
    transformers' two weights onto it and back."""
    # The gate and up projections fused along the output features; with stride 2 each rank holds its
    # shard of both, so the local output splits into (gate, up) by the per-rank sizes.
    self.gate_up_proj = ColumnParallelLinear(
        {hidden_size},
        {fused_size},
        stride=2,
        bias={bias},
        gather_output=False,
        init_method=init_method,
        sequence_parallel_enabled=trn_config.sequence_parallel_enabled,
        sequence_dimension=0,
        dtype=config.dtype,
    )
    self.split_size = {split_size}
    self.specs = ModelWeightTransformationSpecs()
    self.specs.add_spec(
        FusedLinearsSpec(
            fused_linear_name="gate_up_proj",
            linear_names=[{gate}, {up}],
            bias={bias},
            fuse_axis="column",
            original_dims=[{gate_size}, {up_size}],
        )
    )


def doubled_size(size):
    """Output features of the fused layer when gate and up have the same size."""
    return 2 * {size}


def summed_size(gate_size, up_size):
    """Output features of the fused layer when gate and up differ in size."""
    return {gate_size} + {up_size}


def equal_split(size):
    """Per-rank size of each half (gate and up the same size)."""
    return divide({size}, get_tensor_model_parallel_size())


def unequal_split(gate_size, up_size):
    """Per-rank sizes of the gate and up halves."""
    return [divide(size, get_tensor_model_parallel_size()) for size in ({gate_size}, {up_size})]


def gate_up_split(self, hidden_states, gate, up):
    """The forward's two projections, computed by one call of the fused layer (`gate`, `up` are renamed
    to names the forward does not use yet)."""
    gate, up = self.gate_up_proj({hidden_states}).split(self.split_size, dim=-1)
    return gate, up
