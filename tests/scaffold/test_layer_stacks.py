"""A base model that wraps its decoder one level down (`self.decoder = Decoder(config)`, as OPT does), and
learned absolute position embeddings.

Oracles: the same synthetic model written flat (the roles and findings must be the flat model's, under the
longer paths), and the instantiated transformers models (every path the Blueprint names exists, with the
module it says).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers
from torch import nn

from scaffold.analysis import analyze, analyze_model_type
from scaffold.source import locate

from .synthetic import model_source

FLAT_BASE = """
class LlamaModel(PreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.tok = tnn.Embedding(config.vocab_size, config.hidden_size)
        self.blocks = tnn.ModuleList([Block(config, i) for i in range(config.num_hidden_layers)])
        self.final = Norm(config.hidden_size)

    def forward(self, input_ids):
        h = self.tok(input_ids)
        for block in self.blocks:
            h = block(h)
        return self.final(h)
"""

NESTED_BASE = """
class Decoder(PreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.tok = tnn.Embedding(config.vocab_size, config.hidden_size)
        self.blocks = tnn.ModuleList([Block(config, i) for i in range(config.num_hidden_layers)])
        self.final = Norm(config.hidden_size)

    def forward(self, input_ids):
        h = self.tok(input_ids)
        for block in self.blocks:
            h = block(h)
        return self.final(h)


class LlamaModel(PreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.inner = Decoder(config)

    def forward(self, input_ids):
        return self.inner(input_ids)
"""


def analyse_text(tmp_path: Path, text: str, name: str):
    path = tmp_path / f"modeling_{name}.py"
    path.write_text(text)
    return analyze(locate("llama", path))


def test_a_decoder_one_level_down_is_the_layer_stack(tmp_path: Path):
    flat_text = model_source()
    assert FLAT_BASE in flat_text
    flat = analyse_text(tmp_path, flat_text, "flat")
    nested = analyse_text(tmp_path, flat_text.replace(FLAT_BASE, NESTED_BASE), "nested")
    assert {r.code for r in nested.refusals} == {r.code for r in flat.refusals}
    assert not {r.code for r in nested.refusals} & {"R001", "R013"}
    roles = {site.path.replace("body.inner.", "body."): site.role for site in nested.sites}
    assert roles == {site.path: site.role for site in flat.sites}
    backbone = nested.backbone
    assert backbone.stack_class == "Decoder" and flat.backbone.stack_class == "LlamaModel"
    assert backbone.layers == "body.inner.blocks.*" and backbone.decoder_layer == "Block"
    assert backbone.embedding == "body.inner.tok" and backbone.final_norm == "body.inner.final"
    assert len(nested.attention) == 1 and nested.attention[0].path == "body.inner.blocks.*.mix"


def test_two_children_holding_layer_lists_are_no_stack(tmp_path: Path):
    two = NESTED_BASE.replace(
        "        self.inner = Decoder(config)\n",
        "        self.inner = Decoder(config)\n        self.other = Decoder(config)\n",
    )
    blueprint = analyse_text(tmp_path, model_source().replace(FLAT_BASE, two), "two")
    assert "R013" in {refusal.code for refusal in blueprint.refusals}


def _tiny(model_type: str, **values: object) -> nn.Module:
    source = locate(model_type)
    config = source.config_class(**values)
    torch.manual_seed(0)
    return getattr(transformers, source.causal_lm_class)(config)


@pytest.mark.parametrize(
    ("model_type", "values", "positions"),
    [
        (
            "opt",
            dict(
                vocab_size=64,
                hidden_size=16,
                ffn_dim=32,
                num_hidden_layers=2,
                num_attention_heads=2,
                word_embed_proj_dim=16,
                max_position_embeddings=20,
            ),
            ("model.decoder.embed_positions",),
        ),
        (
            "gpt_neo",
            dict(
                vocab_size=64,
                hidden_size=16,
                num_layers=2,
                num_heads=2,
                max_position_embeddings=20,
                attention_types=[[["global", "local"], 1]],
            ),
            ("transformer.wpe",),
        ),
    ],
)
def test_stack_paths_and_learned_positions_name_the_transformers_modules(
    model_type: str, values: dict, positions: tuple[str, ...]
):
    blueprint = analyze_model_type(model_type)
    assert not {refusal.code for refusal in blueprint.refusals} & {"R001", "R005", "R012", "R013"}
    model = _tiny(model_type, **values)
    backbone = blueprint.backbone
    assert backbone.positions == positions
    for path in positions:
        table = model.get_submodule(path)
        # learned absolute positions: a table not sized by the vocabulary, kept whole
        assert isinstance(table, nn.Embedding) and table.num_embeddings != values["vocab_size"]
    layers = model.get_submodule(backbone.layers.removesuffix(".*"))
    assert isinstance(layers, nn.ModuleList) and len(layers) == 2
    assert type(layers[0]).__name__ == backbone.decoder_layer
    assert type(model.get_submodule(backbone.embedding)) is nn.Embedding
    stack = model.get_submodule(backbone.layers.removesuffix(".*").rpartition(".")[0])
    assert type(stack).__name__ == backbone.stack_class


def test_an_optional_final_norm_is_the_norm(tmp_path: Path):
    flat_text = model_source()
    optional = FLAT_BASE.replace(
        "        self.final = Norm(config.hidden_size)\n",
        "        if config.hidden_size > 0:\n"
        "            self.final = Norm(config.hidden_size)\n"
        "        else:\n"
        "            self.final = None\n",
    ).replace(
        "        return self.final(h)\n",
        "        if self.final is not None:\n            h = self.final(h)\n        return h\n",
    )
    assert optional != FLAT_BASE
    flat = analyse_text(tmp_path, flat_text, "flat")
    blueprint = analyse_text(tmp_path, flat_text.replace(FLAT_BASE, optional), "optional")
    assert blueprint.backbone.final_norm == flat.backbone.final_norm == "body.final"
    assert {(n.path, n.scope) for n in blueprint.norms} == {(n.path, n.scope) for n in flat.norms}
