"""A fused q|k|v linear split in the forward under a test of config flags, one layout per branch
(`scaffold.analysis.branch_fusions`): read as one linear per part, sizes and group count chosen by the
same flags.

Oracles: hand-written expected code on a toy source; GPTBigCode's own attention (transformers, both values
of `multi_query`) on random weights, whose q, k and v (captured at its attention kernel) must equal those
computed from the rows a hand-written index table assigns to each part, and that table must be the one the
recorded part sizes and group count describe.
"""

from __future__ import annotations

from textwrap import dedent

import libcst as cst
import pytest
import torch
from transformers import GPTBigCodeConfig
from transformers.models.gpt_bigcode import modeling_gpt_bigcode
from transformers.models.gpt_bigcode.modeling_gpt_bigcode import GPTBigCodeAttention

from scaffold.analysis.source_fusions import read_module, split_source_fusions
from scaffold.blueprint import Location, SourceFusion
from scaffold.emit import format_python
from scaffold.source import locate

TOY = """
class ToyAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.embed_dim = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = self.embed_dim // self.num_heads
        self.shared_kv = config.shared_kv
        self.kv_dim = self.head_dim if self.shared_kv else self.embed_dim
        self.qkv = nn.Linear(self.embed_dim, self.embed_dim + 2 * self.kv_dim)
        self.out = nn.Linear(self.embed_dim, self.embed_dim)

    def forward(self, hidden_states):
        input_shape = hidden_states.shape[:-1]
        if self.shared_kv:
            query, key, value = self.qkv(hidden_states).unsqueeze(1).split((self.embed_dim, self.kv_dim, self.kv_dim), dim=3)
            query = query.view(*input_shape, -1, self.head_dim).transpose(1, 2)
        else:
            query, key, value = (
                self.qkv(hidden_states)
                .view(*hidden_states.shape[:2], self.num_heads, 3 * self.head_dim)
                .transpose(1, 2)
                .split(3 * [self.head_dim], dim=3)
            )
        return self.out(attend(query, key, value).reshape(*input_shape, -1))
"""

SIZES = (
    "(self.embed_dim if self.shared_kv else self.num_heads * self.head_dim)",
    "(self.kv_dim if self.shared_kv else self.num_heads * self.head_dim)",
    "(self.kv_dim if self.shared_kv else self.num_heads * self.head_dim)",
)


def _split(source: str) -> tuple[str, tuple[SourceFusion, ...]]:
    module, fusions = split_source_fusions(cst.parse_module(dedent(source).strip("\n") + "\n"), "toy.py")
    return format_python(module.code), fusions


def _formatted(source: str) -> str:
    return format_python(dedent(source).strip("\n") + "\n")


def test_a_split_under_branch_tests_reads_as_one_linear_per_part_sized_for_every_branch() -> None:
    """Each size picks the branch's: the contiguous split's own sizes, or the grouped view's heads times
    the head size; the group count is 1 or the view's groups; the `if` becomes one call per part viewed
    as (batch, heads, seq, head_dim), with the forward's own leading shape."""
    text, fusions = _split(TOY)
    assert text == _formatted(f"""
        class ToyAttention(nn.Module):
            def __init__(self, config):
                super().__init__()
                self.embed_dim = config.hidden_size
                self.num_heads = config.num_attention_heads
                self.head_dim = self.embed_dim // self.num_heads
                self.shared_kv = config.shared_kv
                self.kv_dim = self.head_dim if self.shared_kv else self.embed_dim
                self.q_proj = nn.Linear(self.embed_dim, {SIZES[0]})
                self.k_proj = nn.Linear(self.embed_dim, {SIZES[1]})
                self.v_proj = nn.Linear(self.embed_dim, {SIZES[2]})
                self.out = nn.Linear(self.embed_dim, self.embed_dim)

            def forward(self, hidden_states):
                input_shape = hidden_states.shape[:-1]
                query = self.q_proj(hidden_states).view(*input_shape, -1, self.head_dim).transpose(1, 2)
                key = self.k_proj(hidden_states).view(*input_shape, -1, self.head_dim).transpose(1, 2)
                value = self.v_proj(hidden_states).view(*input_shape, -1, self.head_dim).transpose(1, 2)
                return self.out(attend(query, key, value).reshape(*input_shape, -1))
        """)
    assert fusions == (
        SourceFusion(
            owner="ToyAttention",
            source_name="qkv",
            part_names=("q_proj", "k_proj", "v_proj"),
            part_sizes=SIZES,
            bias="True",
            location=Location("toy.py", 9),
            groups="(1 if self.shared_kv else self.num_heads)",
        ),
    )


def test_without_a_leading_shape_local_the_rewrite_takes_the_input_s_own() -> None:
    source = TOY.replace("        input_shape = hidden_states.shape[:-1]\n", "").replace(
        "query.view(*input_shape, -1, self.head_dim)",
        "query.view(hidden_states.shape[0], hidden_states.shape[1], -1, self.head_dim)",
    )
    source = source.replace(".reshape(*input_shape, -1)", "")
    text, fusions = _split(source)
    assert len(fusions) == 1
    assert (
        "        input_shape = hidden_states.shape[:-1]\n"
        "        query = self.q_proj(hidden_states).view(*input_shape, -1, self.head_dim).transpose(1, 2)\n"
    ) in text


NO_OPS = {
    "no else": [
        ("        else:\n            query, key", "        elif self.other:\n            query, key")
    ],
    "a test reading the forward": [("if self.shared_kv:", "if input_shape[0] > 1:")],
    "grouped parts of another size than the view's": [("3 * [self.head_dim]", "3 * [self.kv_dim]")],
    "a split along another dimension": [("self.kv_dim), dim=3)", "self.kv_dim), dim=2)")],
    "the fused linear read again": [
        ("reshape(*input_shape, -1))", "reshape(*input_shape, -1)), self.qkv.weight")
    ],
    "anything else in a branch": [
        (
            "            query = query.view(*input_shape, -1, self.head_dim).transpose(1, 2)\n",
            "            query = query.view(*input_shape, -1, self.head_dim).transpose(1, 2)\n"
            "            query = query * 2\n",
        )
    ],
    "a size the forward computes": [
        ("        if self.shared_kv:\n", "        width = self.kv_dim\n        if self.shared_kv:\n"),
        ("(self.embed_dim, self.kv_dim, self.kv_dim)", "(self.embed_dim, width, width)"),
    ],
}


@pytest.mark.parametrize("case", sorted(NO_OPS))
def test_other_branch_splits_are_left_as_they_are(case: str) -> None:
    """No-op cases (they stay refused, R007 / R003)."""
    source = TOY
    for old, new in NO_OPS[case]:
        assert old in source
        source = source.replace(old, new)
    text, fusions = _split(source)
    assert fusions == ()
    assert text == _formatted(source)


# --- GPTBigCode: transformers' own attention ---------------------------------------------------------------


def _index_table(multi_query: bool, heads: int, head_dim: int) -> dict[str, list[int]]:
    """The rows of `c_attn.weight` holding each part, written out from GPTBigCode's two layouts: one K/V head
    after all query rows (multi-query), or per head `q_h | k_h | v_h` (otherwise)."""
    embed = heads * head_dim
    if multi_query:
        return {
            "q": list(range(0, embed)),
            "k": list(range(embed, embed + head_dim)),
            "v": list(range(embed + head_dim, embed + 2 * head_dim)),
        }
    table: dict[str, list[int]] = {"q": [], "k": [], "v": []}
    for head in range(heads):
        start = 3 * head_dim * head
        table["q"] += range(start, start + head_dim)
        table["k"] += range(start + head_dim, start + 2 * head_dim)
        table["v"] += range(start + 2 * head_dim, start + 3 * head_dim)
    return table


def _rows_of(fusion: SourceFusion, rows: int, namespace: dict[str, object]) -> list[list[int]]:
    """The rows each part takes by the recorded sizes and group count: `groups` equal row groups, each
    holding its share of every part in part order."""
    sizes = [eval(size, {}, namespace) for size in fusion.part_sizes]
    groups = eval(fusion.groups, {}, namespace) if fusion.groups else 1
    assert sum(sizes) == rows
    per_group = [size // groups for size in sizes]
    parts: list[list[int]] = [[] for _ in sizes]
    row = 0
    for _ in range(groups):
        for part, share in enumerate(per_group):
            parts[part] += range(row, row + share)
            row += share
    return parts


@pytest.mark.parametrize("multi_query", [True, False])
def test_gpt_bigcode_parts_give_transformers_q_k_v(
    multi_query: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One fusion, read once from the modeling file, serves both layouts."""
    (fusion,) = [f for f in read_module(locate("gpt_bigcode"))[1] if f.owner == "GPTBigCodeAttention"]
    assert fusion.source_name == "c_attn" and fusion.part_names == ("q_proj", "k_proj", "v_proj")
    config = GPTBigCodeConfig(n_embd=64, n_head=8, multi_query=multi_query, attn_implementation="eager")
    torch.manual_seed(0)
    attention = GPTBigCodeAttention(config, layer_idx=0).eval()
    fused = attention.c_attn
    table = _index_table(multi_query, heads=8, head_dim=8)
    assert _rows_of(fusion, fused.out_features, {"self": attention, "config": config}) == [
        table["q"],
        table["k"],
        table["v"],
    ]
    captured: list[torch.Tensor] = []

    def capture(module, query, key, value, *args, **kwargs):
        captured.extend((query, key, value))
        return torch.zeros(*query.shape[:1], query.shape[2], query.shape[1], query.shape[3]), None

    monkeypatch.setattr(modeling_gpt_bigcode, "eager_attention_forward", capture)
    x = torch.randn(2, 5, 64)
    with torch.no_grad():
        attention(x)
        weight, bias = fused.weight, fused.bias
        got = [
            (x @ weight[table[p]].T + bias[table[p]]).view(2, 5, -1, attention.head_dim).transpose(1, 2)
            for p in ("q", "k", "v")
        ]
    for part, want in zip(got, captured, strict=True):
        torch.testing.assert_close(part, want, rtol=0, atol=1e-6)
