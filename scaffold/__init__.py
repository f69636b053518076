"""Generate optimum-neuron training models from installed transformers sources.

The pipeline is source -> analysis (a plain-data `Blueprint`) -> rules (one codemod per concern) -> emit.
This package currently holds the first stage and `scaffold inspect`.
"""
