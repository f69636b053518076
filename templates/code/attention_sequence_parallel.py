"""Templates of NXS022 (attention-sequence-parallel), filled by `scaffold.rules.templates`.

`hidden_states` stands for the forward's input, `query_states`/`key_states`/`value_states` and
`attn_output` for the forward's own names: the rule renames them.
"""

from neuronx_distributed.parallel_layers.parallel_state import get_tensor_model_parallel_size


def projections_to_batch_first(self, query_states, key_states, value_states):
    """Right after the projections."""
    if self.trn_config.sequence_parallel_enabled:
        # The column layers gathered the sequence: (S, B, h*d) -> batch-first (B, S, h*d).
        query_states, key_states, value_states = (
            query_states.transpose(0, 1),
            key_states.transpose(0, 1),
            value_states.transpose(0, 1),
        )
    return query_states, key_states, value_states


def output_to_sequence_first(self, attn_output):
    """Right before the output projection."""
    if self.trn_config.sequence_parallel_enabled:
        # The output projection reduce-scatters along the sequence: back to sequence-first (S, B, h*d).
        attn_output = attn_output.transpose(0, 1)
    return attn_output


def named_output(attn_output, value):
    """The output projection's input, named so that its layout can change."""
    attn_output = {value}
    return attn_output


def leading_shape(self, input_shape, hidden_states, leading):
    """`x.shape[:-1]` of the source, (B, S) under SP computed from the sequence-first shard."""
    if self.trn_config.sequence_parallel_enabled:
        # The input is (S/T, B, D): sequence-first and sharded over the tensor-parallel ranks.
        input_shape = (hidden_states.shape[1], hidden_states.shape[0] * get_tensor_model_parallel_size())
    else:
        input_shape = {leading}
    return input_shape
