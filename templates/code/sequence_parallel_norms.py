"""Templates of NXS011 (sequence-parallel-norms), filled by `scaffold.rules.templates`."""


def sequence_parallel_parameter(sequence_parallel_enabled: bool = False):
    """The parameter a norm class over the hidden stream takes."""


def weight_marked(weight, sequence_parallel_enabled):
    """After each parameter the norm creates: under SP, NxD sums its gradient over the TP group."""
    {weight}.sequence_parallel_enabled = sequence_parallel_enabled


def flag_argument(trn_config):
    """What a constructor passes to each hidden-stream norm it builds."""
    return trn_config.sequence_parallel_enabled
