"""A small hand-written tensor-parallel Llama: the test fixture that exercises the reference training host.

It is laid out like a generated model package: mounted with
`activate("reference").load_model_package(<this folder>)`, it imports the host relatively and registers
its classes for the auto classes.
"""

from ..auto_models import register_neuron_model_for_training
from .modeling_llama import LlamaForCausalLM, LlamaModel

register_neuron_model_for_training("llama", "model")(LlamaModel)
register_neuron_model_for_training("llama", "text-generation")(LlamaForCausalLM)

__all__ = ["LlamaForCausalLM", "LlamaModel"]
