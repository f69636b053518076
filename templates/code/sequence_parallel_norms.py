"""Templates of NXS011 (sequence-parallel-norms), filled by `scaffold.rules.templates`."""


def sequence_parallel_parameter(sequence_parallel_enabled: bool = False):
    """The parameter a norm class over the hidden stream takes."""


def weight_marked(weight, sequence_parallel_enabled):
    """After each parameter the norm creates: under SP, NxD sums its gradient over the TP group."""
    {weight}.sequence_parallel_enabled = sequence_parallel_enabled


def parameters_marked(module, sequence_parallel_enabled):
    """After the base torch norm's `__init__` in a subclass: every parameter it created, marked likewise."""
    for parameter in {module}.parameters(recurse=False):
        parameter.sequence_parallel_enabled = sequence_parallel_enabled


def linear_marked(module, flag):
    """After an optional linear of the layer loop's class (replicated, on the sequence-sharded stream)."""
    for parameter in {module}.parameters():
        parameter.sequence_parallel_enabled = {flag}


def flag_argument(trn_config):
    """What a constructor passes to each hidden-stream norm it builds."""
    return trn_config.sequence_parallel_enabled
