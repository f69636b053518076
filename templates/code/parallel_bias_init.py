"""Templates of NXS006 (parallel-bias-init), filled by `scaffold.rules.templates`.

The rule adds `init_weights` to the pretrained class when the source's has none, else appends
`zero_parallel_biases` to the source's own `_init_weights` (`module` renamed to its parameter).
"""

# The layer classes the rule puts in `{parallel_linears}` (those the file builds with a bias).
from neuronx_distributed.modules.qkv_linear import GQAQKVColumnParallelLinear  # noqa: F401
from neuronx_distributed.parallel_layers.layers import ColumnParallelLinear, RowParallelLinear  # noqa: F401


def init_weights(parallel_linears):
    """The pretrained class's `_init_weights`: transformers' own, then the parallel linears' biases."""

    def _init_weights(self, module):
        super()._init_weights(module)
        # transformers starts every nn.Linear bias at zero; NxD's parallel linears draw theirs as
        # nn.Linear.reset_parameters does (their weights come from `init_method`): zero them here.
        if isinstance(module, {parallel_linears}):
            for name, parameter in module.named_parameters(recurse=False):
                if name.startswith("bias"):
                    parameter.data.zero_()


def zero_parallel_biases(module, parallel_linears):
    """The branch appended to the source's own `_init_weights`."""
    # transformers starts every nn.Linear bias at zero; NxD's parallel linears draw theirs as
    # nn.Linear.reset_parameters does (their weights come from `init_method`): zero them here.
    if isinstance(module, {parallel_linears}):
        for name, parameter in module.named_parameters(recurse=False):
            if name.startswith("bias"):
                parameter.data.zero_()
