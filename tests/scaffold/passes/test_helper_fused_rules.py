"""A fused q|k|v linear split by a helper method, one layout per branch of the config's flags
(`scaffold.analysis.helper_fusions`): read as one linear per part, sizes and group count chosen by the
same flags.

Oracles: hand-written expected code on a toy source; transformers' own helper (Falcon's three layouts,
Bloom's per-head interleaving) on random weights, against q, k and v computed from the recorded part
sizes and group count with a hand-written de-interleave.
"""

from __future__ import annotations

from textwrap import dedent

import libcst as cst
import pytest
import torch
from transformers import BloomConfig, FalconConfig
from transformers.models.bloom.modeling_bloom import BloomAttention
from transformers.models.falcon.modeling_falcon import FalconAttention

from scaffold.analysis.source_fusions import read_module, split_source_fusions
from scaffold.blueprint import Location, SourceFusion
from scaffold.emit import format_python
from scaffold.source import locate

TOY = """
class ToyAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // self.num_heads
        width = (config.num_attention_heads + 2 * config.num_kv_heads) * self.head_dim
        self.qkv = nn.Linear(config.hidden_size, width, bias=False)
        self.grouped = config.grouped
        self.num_kv_heads = config.num_kv_heads
        self.out = nn.Linear(config.hidden_size, config.hidden_size)

    def _split(self, fused):
        if self.grouped:
            batch, seq, _ = fused.shape
            qkv = fused.view(batch, seq, -1, self.num_heads // self.num_kv_heads + 2, self.head_dim)
            query = qkv[:, :, :, :-2]
            key = qkv[:, :, :, [-2]]
            value = qkv[:, :, :, [-1]]
            key = torch.broadcast_to(key, query.shape)
            value = torch.broadcast_to(value, query.shape)
            query, key, value = [x.flatten(2, 3) for x in (query, key, value)]
            return query, key, value
        else:
            batch, seq, _ = fused.shape
            fused = fused.view(batch, seq, self.num_heads, 3, self.head_dim)
            return fused[..., 0, :], fused[..., 1, :], fused[..., 2, :]

    def forward(self, hidden_states):
        fused = self.qkv(hidden_states)
        query_states, key_states, value_states = self._split(fused)
        return self.out(attend(query_states, key_states, value_states))
"""


def _split(source: str) -> tuple[str, tuple[SourceFusion, ...]]:
    module, fusions = split_source_fusions(cst.parse_module(dedent(source).strip("\n") + "\n"), "toy.py")
    return format_python(module.code), fusions


def test_a_layout_helper_reads_as_one_linear_per_part_sized_for_every_branch() -> None:
    """The flags the sizes read move before the parts (plain attribute copies); each size picks the
    branch's heads times the head size; the helper's broadcast of k and v becomes a repeat per head under
    the branch's test; the helper goes."""
    text, fusions = _split(TOY)
    groups = "(width // ((self.num_heads // self.num_kv_heads + 2) * self.head_dim))"
    assert text == format_python(
        dedent(f"""
        class ToyAttention(nn.Module):
            def __init__(self, config):
                super().__init__()
                self.num_heads = config.num_attention_heads
                self.head_dim = config.hidden_size // self.num_heads
                width = (config.num_attention_heads + 2 * config.num_kv_heads) * self.head_dim
                self.grouped = config.grouped
                self.num_kv_heads = config.num_kv_heads
                self.q_proj = nn.Linear(
                    config.hidden_size,
                    (({groups} * (self.num_heads // self.num_kv_heads)) if self.grouped else self.num_heads)
                    * self.head_dim,
                    bias=False,
                )
                self.k_proj = nn.Linear(
                    config.hidden_size, ({groups} if self.grouped else self.num_heads) * self.head_dim, bias=False
                )
                self.v_proj = nn.Linear(
                    config.hidden_size, ({groups} if self.grouped else self.num_heads) * self.head_dim, bias=False
                )
                self.out = nn.Linear(config.hidden_size, config.hidden_size)

            def forward(self, hidden_states):
                input_shape = hidden_states.shape[:-1]
                query_states = self.q_proj(hidden_states).view(*input_shape, -1, self.head_dim)
                key_states = self.k_proj(hidden_states).view(*input_shape, -1, self.head_dim)
                value_states = self.v_proj(hidden_states).view(*input_shape, -1, self.head_dim)
                if self.grouped:
                    key_states = key_states.repeat_interleave(query_states.shape[-2] // key_states.shape[-2], dim=-2)
                if self.grouped:
                    value_states = value_states.repeat_interleave(
                        query_states.shape[-2] // value_states.shape[-2], dim=-2
                    )
                return self.out(attend(query_states, key_states, value_states))
        """).strip("\n")
        + "\n"
    )
    assert fusions == (
        SourceFusion(
            owner="ToyAttention",
            source_name="qkv",
            part_names=("q_proj", "k_proj", "v_proj"),
            part_sizes=(
                f"(({groups} * (self.num_heads // self.num_kv_heads)) if self.grouped else self.num_heads)"
                " * self.head_dim",
                f"({groups} if self.grouped else self.num_heads) * self.head_dim",
                f"({groups} if self.grouped else self.num_heads) * self.head_dim",
            ),
            bias="False",
            location=Location("toy.py", 7),
            groups=f"({groups} if self.grouped else self.num_heads)",
        ),
    )


def test_other_helpers_are_left_as_they_are() -> None:
    """No-op cases (they stay refused, R003): no `else` (the helper may fall through), a test reading the
    helper's input, parts that do not tile the parts' dimension, an index that is not a literal, the fused
    output read again."""
    cases = [
        TOY.replace(
            "        else:\n            batch, seq, _ = fused.shape\n",
            "        if True:\n            batch, seq, _ = fused.shape\n",
        ),
        TOY.replace("if self.grouped:", "if fused.shape[-1] > 3:"),
        TOY.replace("fused[..., 2, :]", "fused[..., 1, :]"),
        TOY.replace("fused[..., 0, :]", "fused[..., self.first, :]"),
        TOY.replace("return self.out(attend(", "return fused, self.out(attend("),
    ]
    for source in cases:
        text, fusions = _split(source)
        assert fusions == ()
        assert text == format_python(dedent(source).strip("\n") + "\n")


def _parts(
    fusion: SourceFusion, weight: torch.Tensor, namespace: dict[str, object]
) -> tuple[list[torch.Tensor], int]:
    """The fused weight de-interleaved by hand: `groups` equal row groups, each holding its share of every
    part in part order."""
    sizes = [eval(size, {}, namespace) for size in fusion.part_sizes]
    groups = eval(fusion.groups, {}, namespace) if fusion.groups else 1
    assert sum(sizes) == weight.shape[0]
    grouped = weight.view(groups, -1, weight.shape[1])
    pieces = grouped.split([size // groups for size in sizes], dim=1)
    return [piece.reshape(-1, weight.shape[1]) for piece in pieces], groups


FALCON_LAYOUTS = {
    "kv-grouped": dict(new_decoder_architecture=True, multi_query=False, num_kv_heads=2),
    "per-head": dict(new_decoder_architecture=False, multi_query=False, num_kv_heads=8),
    "shared-kv": dict(new_decoder_architecture=False, multi_query=True),
}


@pytest.mark.parametrize("layout", sorted(FALCON_LAYOUTS))
def test_falcon_parts_give_transformers_q_k_v_for_every_layout(layout: str) -> None:
    """One fusion, read once from the modeling file, serves all three of Falcon's layouts."""
    (fusion,) = [f for f in read_module(locate("falcon"))[1] if f.owner == "FalconAttention"]
    config = FalconConfig(hidden_size=64, num_attention_heads=8, alibi=False, **FALCON_LAYOUTS[layout])
    torch.manual_seed(0)
    attention = FalconAttention(config, layer_idx=0)
    fused = attention.query_key_value
    namespace = {"self": attention, "config": config, "qkv_out_dim": fused.out_features}
    (wq, wk, wv), _ = _parts(fusion, fused.weight.detach(), namespace)
    x = torch.randn(2, 5, 64)
    expected = attention._split_heads(fused(x))
    d = attention.head_dim
    query, key, value = (
        (x @ wq.T).view(2, 5, -1, d),
        (x @ wk.T).view(2, 5, -1, d),
        (x @ wv.T).view(2, 5, -1, d),
    )
    if attention.new_decoder_architecture:  # the repeat the rewrite puts under the branch's test
        key = key.repeat_interleave(query.shape[-2] // key.shape[-2], dim=-2)
        value = value.repeat_interleave(query.shape[-2] // value.shape[-2], dim=-2)
    for got, want in zip((query, key, value), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_bloom_parts_give_transformers_q_k_v() -> None:
    (fusion,) = [f for f in read_module(locate("bloom"))[1] if f.owner == "BloomAttention"]
    assert fusion.groups == "self.num_heads"
    config = BloomConfig(hidden_size=64, n_head=8)
    torch.manual_seed(0)
    attention = BloomAttention(config, layer_idx=0)
    fused = attention.query_key_value
    (wq, wk, wv), _ = _parts(fusion, fused.weight.detach(), {"self": attention, "config": config})
    bq, bk, bv = _parts(fusion, fused.bias.detach()[:, None], {"self": attention, "config": config})[0]
    x = torch.randn(2, 5, 64)
    expected = attention._reshape(fused(x))
    d = attention.head_dim
    got = [(x @ w.T + b[:, 0]).view(2, 5, -1, d).transpose(1, 2) for w, b in ((wq, bq), (wk, bk), (wv, bv))]
    for part, want in zip(got, expected, strict=True):
        torch.testing.assert_close(part, want, rtol=0, atol=1e-6)


def test_a_module_keeping_its_config_repeats_only_for_the_eager_kernel() -> None:
    """SDPA and the Neuron flash path repeat K/V heads by num_key_value_groups themselves: the helper's
    broadcast becomes a repeat for the eager kernel only, or they would get the heads twice over."""
    text, _ = _split(
        TOY.replace(
            "        super().__init__()\n", "        super().__init__()\n        self.config = config\n"
        )
    )
    assert (
        '        if self.grouped and self.config._attn_implementation == "eager":\n'
        "            key_states = key_states.repeat_interleave("
    ) in text
