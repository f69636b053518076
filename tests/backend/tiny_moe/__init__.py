"""A tiny Mixtral-shaped model on NxD's MoE layer: the fixture of the expert-parallel checkpoint tests.

Like a generated MoE package it holds, next to its modeling file, the spec module the scaffolder inserts
(`templates/modules/moe_expert_weights.py`); the tests copy both into one folder
(`moe_weight_fixtures.tiny_moe_package`) and mount it with `activate("reference").load_model_package`.
"""

from .modeling_tiny_moe import TinyMoeForCausalLM

__all__ = ["TinyMoeForCausalLM"]
