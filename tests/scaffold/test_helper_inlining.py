"""Attention written through the class's own helper methods (`_split_heads`, `_attn`), as GPT-Neo and
GPT-J write it: the tracer inlines the helpers, so the heads, the kernel and a partial-rotary slice of the
head dimension are read as in a forward that spells them out.

Oracles: hand-written expectations on a synthetic source, and the instantiated transformers models
(the geometry's sizes must give the projections' weight shapes).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers

from scaffold.analysis import analyze, analyze_model_type
from scaffold.source import locate

from .synthetic import model_source

HELPERS = """
    def _heads(self, tensor, width):
        new_shape = tensor.size()[:-1] + (-1, width)
        return tensor.view(new_shape).transpose(1, 2)

    def _mix(self, query, key, value):
        scores = torch.matmul(query, key.transpose(-1, -2)) / self.size**0.5
        return self._apply(torch.softmax(scores, dim=-1), value)

    def _apply(self, weights, value):
        return torch.matmul(weights, value)

    def forward(self, x):
"""

THROUGH_HELPERS = """first = self._heads(self.a(x), self.size)
second = self._heads(self.b(x), self.size)
third = self._heads(self.c(x), self.size)
out = self._mix(first, second, third)"""

SPELLED_OUT = """first = self.a(x).view(shape).transpose(1, 2)
second = self.b(x).view(shape).transpose(1, 2)
third = self.c(x).view(shape).transpose(1, 2)
scores = torch.matmul(first, second.transpose(-1, -2)) / self.size**0.5
out = torch.matmul(torch.softmax(scores, dim=-1), third)"""

PARTIAL_ROTARY = """first = self._heads(self.a(x), self.size)
second = self._heads(self.b(x), self.size)
third = self._heads(self.c(x), self.size)
first_rot = first[:, :, :, :4]
first_pass = first[:, :, :, 4:]
first = torch.cat([first_rot * 2, first_pass], dim=-1)
out = self._mix(first, second, third)"""


FORWARD = "\n    def forward(self, x):\n"


def analyse_with_helpers(tmp_path: Path, forward: str):
    text = model_source(mixer_forward=forward).replace(
        "\n    def forward(self, x):\n        shape", HELPERS + "        shape", 1
    )
    assert "def _heads" in text
    path = tmp_path / "modeling_synthetic.py"
    path.write_text(text)
    return analyze(locate("llama", path))


def codes_of(blueprint) -> set[str]:
    return {refusal.code for refusal in blueprint.refusals}


def test_attention_through_helper_methods_is_recognised(tmp_path: Path):
    blueprint = analyse_with_helpers(tmp_path, THROUGH_HELPERS)
    # the same refusals as the synthetic model whose forward spells the attention out (the synthetic
    # kernel is no ALL_ATTENTION_FUNCTIONS pick, refused by preconditions either way)
    assert codes_of(blueprint) == codes_of(analyse_with_helpers(tmp_path, SPELLED_OUT))
    assert not codes_of(blueprint) & {"R005", "R007", "R014"}
    (attention,) = blueprint.attention
    assert (attention.q, attention.k, attention.v, attention.o) == ("a", "b", "c", "d")
    # the helper's `width` parameter reads as the caller's `self.size`
    assert attention.head_dim.resolved == "config.hidden_size // config.num_attention_heads"
    assert attention.num_kv_heads.resolved == "config.num_key_value_heads"
    assert attention.scaling is not None and attention.scaling.source == "1 / (self.size**0.5)"


def test_a_slice_of_the_head_dimension_is_not_a_fused_projection(tmp_path: Path):
    blueprint = analyse_with_helpers(tmp_path, PARTIAL_ROTARY)
    assert codes_of(blueprint) == codes_of(analyse_with_helpers(tmp_path, SPELLED_OUT))
    (attention,) = blueprint.attention
    assert (attention.q, attention.k, attention.v) == ("a", "b", "c")


def test_a_slice_of_a_projection_before_the_head_split_is_still_refused(tmp_path: Path):
    forward = """first = self._heads(self.a(x)[..., :8], self.size)
second = self._heads(self.b(x), self.size)
third = self._heads(self.c(x), self.size)
out = self._mix(first, second, third)"""
    assert "R007" in codes_of(analyse_with_helpers(tmp_path, forward))


@pytest.mark.parametrize(
    ("model_type", "config"),
    [
        (
            "gpt_neo",
            dict(hidden_size=32, num_heads=4, num_layers=2, attention_types=[[["global", "local"], 1]]),
        ),
        ("gptj", dict(n_embd=32, n_head=4, n_layer=2, rotary_dim=4)),
    ],
)
def test_gpt_neo_and_gptj_attention_is_found_with_its_geometry(model_type: str, config: dict):
    blueprint = analyze_model_type(model_type)
    assert not codes_of(blueprint) & {"R005", "R007", "R014"}, blueprint.refusals
    (geometry,) = blueprint.attention
    source = locate(model_type)
    hf_config = source.config_class(vocab_size=64, max_position_embeddings=16, **config)
    torch.manual_seed(0)
    model = getattr(transformers, source.causal_lm_class)(hf_config)
    attention = model.get_submodule(geometry.path.replace("*", "0"))
    heads = geometry.num_heads.evaluate(hf_config)
    head_dim = geometry.head_dim.evaluate(hf_config)
    assert getattr(attention, geometry.q).weight.shape[0] == heads * head_dim
    assert (
        getattr(attention, geometry.k).weight.shape[0] == geometry.num_kv_heads.evaluate(hf_config) * head_dim
    )
    assert getattr(attention, geometry.o).weight.shape[1] == heads * head_dim
    assert head_dim == attention.head_dim


def test_total_head_counts_read_through_a_helper_are_listed_with_their_per_rank_attribute(tmp_path: Path):
    # GPT-J's shape: the helper splits with the head count it is passed, the forward passes the total one
    # (`self.heads`, `self.kv_heads`); `self.size` (head_dim) and the -1 of a view are no head count.
    helpers = (
        """
    def _split(self, tensor, count, width):
        new_shape = tensor.size()[:-1] + (count, width)
        return tensor.view(new_shape).transpose(1, 2)
"""
        + FORWARD
    )
    forward = """first = self._split(self.a(x), self.heads, self.size)
second = self._split(self.b(x), self.kv_heads, self.size)
third = self.c(x).view(shape).transpose(1, 2)
out = self._mix(first, second, third)"""
    text = model_source(
        mixer_init="self.heads = config.num_attention_heads\n        self.kv_heads = config.num_key_value_heads",
        mixer_forward=forward,
    ).replace(
        "\n    def forward(self, x):\n        shape", HELPERS.replace(FORWARD, helpers) + "        shape", 1
    )
    assert "def _split" in text and "def _mix" in text
    path = tmp_path / "modeling_synthetic.py"
    path.write_text(text)
    (attention,) = analyze(locate("llama", path)).attention
    assert attention.total_head_counts == (("heads", "num_heads"), ("kv_heads", "num_key_value_heads"))


def test_head_counts_already_per_rank_names_or_spelled_as_minus_one_are_not_listed(tmp_path: Path):
    (attention,) = analyse_with_helpers(tmp_path, THROUGH_HELPERS).attention
    assert attention.total_head_counts == ()


def test_codegen_heads_cut_into_groups_twice_read_as_the_config_head_count():
    """CodeGen splits heads in two views, `(heads // mp_num, d)` on a tensor already cut into `mp_num`
    groups, then `x.shape[:-2] + (-1,) + x.shape[-1:]` (still split into heads): the head count is the
    dividend (its product with head_dim is the projection's width on the default config), so the query
    projection read out of the fused qkv_proj has heads * head_dim rows in the transformers model."""
    blueprint = analyze_model_type("codegen")
    assert not blueprint.refusals, blueprint.refusals
    (geometry,) = blueprint.attention
    assert geometry.num_heads.resolved == geometry.num_kv_heads.resolved == "config.num_attention_heads"
    assert geometry.total_head_counts == (("num_attention_heads", "num_heads"),)
    source = locate("codegen")
    hf_config = source.config_class(
        vocab_size=64, n_positions=16, n_embd=64, n_head=8, n_layer=2, rotary_dim=4
    )
    model = getattr(transformers, source.causal_lm_class)(hf_config)
    attention = model.get_submodule(geometry.path.replace("*", "0"))
    heads, head_dim = geometry.num_heads.evaluate(hf_config), geometry.head_dim.evaluate(hf_config)
    assert heads == 8 and head_dim == attention.head_dim
    (fusion,) = blueprint.fusions
    assert fusion.part_names == ("q_proj", "v_proj", "k_proj") and fusion.groups == "4"
    assert attention.qkv_proj.weight.shape[0] == 3 * heads * head_dim
