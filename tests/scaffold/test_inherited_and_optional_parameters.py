"""Analysis facts NXS011 reads beyond the norms' own parameters, checked against transformers' models: a local
norm that subclasses a torch norm (its parameters are the base's), and the optional linears of the class
that loops over the layers (built on one arm of an `if`, `None` on the other)."""

from __future__ import annotations

import torch
import transformers
from transformers.models.nemotron import modeling_nemotron
from transformers.models.opt import modeling_opt

from scaffold.analysis import analyze_model_type


def test_a_layer_norm_subclass_records_its_torch_base() -> None:
    blueprint = analyze_model_type("nemotron")
    plan = blueprint.class_plan("NemotronLayerNorm1P")
    assert issubclass(modeling_nemotron.NemotronLayerNorm1P, torch.nn.LayerNorm)
    assert plan.torch_norm_base == "torch.nn.LayerNorm"
    # Its parameters are the base's (weight, bias), none of its own.
    norm = modeling_nemotron.NemotronLayerNorm1P(8)
    assert [name for name, _ in norm.named_parameters()] == ["weight", "bias"]
    assert not [child for child in plan.children if child[1] == "torch.nn.Parameter"]
    # A class with its own weight is not one.
    assert blueprint.class_plan("NemotronDecoderLayer").torch_norm_base is None


def test_opt_projections_are_the_stack_classes_optional_linears() -> None:
    blueprint = analyze_model_type("opt")
    assert blueprint.backbone.stack_class == "OPTDecoder"
    assert set(blueprint.class_plan("OPTDecoder").optional_linears) == {"project_in", "project_out"}
    # transformers builds them exactly when the embedding width differs from the hidden size.
    config = transformers.OPTConfig(
        vocab_size=16, hidden_size=8, ffn_dim=16, num_hidden_layers=1, num_attention_heads=2
    )
    assert modeling_opt.OPTDecoder(config).project_in is None
    config.word_embed_proj_dim = 4
    decoder = modeling_opt.OPTDecoder(config)
    assert isinstance(decoder.project_in, torch.nn.Linear) and isinstance(
        decoder.project_out, torch.nn.Linear
    )
    # The layers' linears are sites, not optional linears.
    assert blueprint.class_plan("OPTDecoderLayer").optional_linears == ()
