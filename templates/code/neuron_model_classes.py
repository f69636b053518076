"""Templates of NXS005 (neuron-model-classes), filled by `scaffold.rules.templates`.

The rule sets each attribute where the class already assigns it, else adds it.
"""


def config_attributes(config_type):
    """The shared pretrained class names its config class both ways (at the top of its body)."""
    # transformers reads `config_class`; optimum-neuron's `from_pretrained` reads `config`.
    config_class = {config_type}
    config = {config_type}
    return config_class, config


def pretrained_attributes():
    """The shared pretrained class's kernels: eager and Neuron flash attention only, no torch.compile."""
    _supports_flash_attn = True
    _supports_sdpa = False
    _supports_flex_attn = False
    _can_compile_fullgraph = False
    return _supports_flash_attn, _supports_sdpa, _supports_flex_attn, _can_compile_fullgraph


def tied_weights(tied_weights_keys):
    """The causal LM's tied weights."""
    _tied_weights_keys = {tied_weights_keys}
    return _tied_weights_keys


def pipeline_attributes(decoder_layer, leaf_classes):
    """The causal LM's pipeline attributes: its decoder layer class, the inputs a pipeline stage receives
    and the leaf modules the tracer must not enter."""
    SUPPORTS_PIPELINE_PARALLELISM = True
    PIPELINE_TRANSFORMER_LAYER_CLS = {decoder_layer}
    PIPELINE_INPUT_NAMES = ["input_ids", "attention_mask", "labels"]
    PIPELINE_LEAF_MODULE_CLASSE_NAMES = {leaf_classes}
    return (
        SUPPORTS_PIPELINE_PARALLELISM,
        PIPELINE_TRANSFORMER_LAYER_CLS,
        PIPELINE_INPUT_NAMES,
        PIPELINE_LEAF_MODULE_CLASSE_NAMES,
    )


def no_pipeline():
    """A causal LM without one decoder layer class."""
    SUPPORTS_PIPELINE_PARALLELISM = False
    return SUPPORTS_PIPELINE_PARALLELISM
