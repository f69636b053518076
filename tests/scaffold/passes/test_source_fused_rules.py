"""Projections fused in the source: analysis's reading of them as separate linears
(`scaffold.analysis.source_fusions`, hand-written before/after and the forms it leaves alone) and NXS027
(source-fused-checkpoint) on a hand-written Blueprint."""

from __future__ import annotations

import dataclasses
from textwrap import dedent

import libcst as cst
from libcst.codemod import CodemodContext

from scaffold.analysis.source_fusions import split_source_fusions
from scaffold.blueprint import Location, MLPBlock, Role, SourceFusion
from scaffold.emit import format_python
from scaffold.rules.fused_gate_up import FusedGateUp
from scaffold.rules.source_fused_checkpoint import SourceFusedCheckpoint

from .toy import HERE, RuleTest, blueprint, expr, klass, site


def _split(source: str) -> tuple[str, tuple[SourceFusion, ...]]:
    module, fusions = split_source_fusions(cst.parse_module(dedent(source).strip("\n") + "\n"), "toy.py")
    return format_python(module.code), fusions


SLICED = """
class ToyAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.head_dim = config.head_dim
        self.num_key_value_heads = config.num_key_value_heads
        op_size = (config.num_attention_heads + 2 * config.num_key_value_heads) * self.head_dim
        self.qkv_proj = nn.Linear(config.hidden_size, op_size, bias=True)

    def forward(self, hidden_states):
        qkv = self.qkv_proj(hidden_states)
        query_pos = self.num_heads * self.head_dim
        query_states = qkv[..., :query_pos]
        key_states = qkv[..., query_pos : query_pos + self.num_key_value_heads * self.head_dim]
        value_states = qkv[..., query_pos + self.num_key_value_heads * self.head_dim :]
        return attend(query_states, key_states, value_states)
"""


def test_slices_of_one_linear_read_as_one_linear_per_part() -> None:
    text, fusions = _split(SLICED.replace("self.num_heads", "self.config.num_attention_heads"))
    kv = "self.num_key_value_heads * self.head_dim"
    q = "self.config.num_attention_heads * self.head_dim"
    assert text == format_python(
        dedent(f"""
        class ToyAttention(nn.Module):
            def __init__(self, config):
                super().__init__()
                self.config = config
                self.head_dim = config.head_dim
                self.num_key_value_heads = config.num_key_value_heads
                op_size = (config.num_attention_heads + 2 * config.num_key_value_heads) * self.head_dim
                self.q_proj = nn.Linear(config.hidden_size, {q}, bias=True)
                self.k_proj = nn.Linear(config.hidden_size, {kv}, bias=True)
                self.v_proj = nn.Linear(config.hidden_size, op_size - ({q} + {kv}), bias=True)

            def forward(self, hidden_states):
                query_states = self.q_proj(hidden_states)
                key_states = self.k_proj(hidden_states)
                value_states = self.v_proj(hidden_states)
                return attend(query_states, key_states, value_states)
        """).strip("\n")
        + "\n"
    )
    assert fusions == (
        SourceFusion(
            owner="ToyAttention",
            source_name="qkv_proj",
            part_names=("q_proj", "k_proj", "v_proj"),
            part_sizes=(q, kv, f"op_size - ({q} + {kv})"),
            bias="True",
            location=Location("toy.py", 8),
        ),
    )


CHUNKED = """
class ToyMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.gate_up_proj = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, hidden_states):
        up_states = self.gate_up_proj(hidden_states)

        gate, up_states = up_states.chunk(2, dim=-1)
        return self.down_proj(up_states * act(gate))
"""


def test_a_chunk_reads_as_equal_parts_named_after_its_targets() -> None:
    text, fusions = _split(CHUNKED)
    assert text == format_python(
        dedent("""
        class ToyMLP(nn.Module):
            def __init__(self, config):
                super().__init__()
                self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
                self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
                self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

            def forward(self, hidden_states):
                gate = self.gate_proj(hidden_states)
                up_states = self.up_proj(hidden_states)
                return self.down_proj(up_states * act(gate))
        """).strip("\n")
        + "\n"
    )
    assert [(f.source_name, f.part_names, f.part_sizes) for f in fusions] == [
        ("gate_up_proj", ("gate_proj", "up_proj"), ("config.intermediate_size",) * 2)
    ]


def test_a_chunk_of_the_call_itself_reads_the_same_way() -> None:
    inline = CHUNKED.replace(
        "up_states = self.gate_up_proj(hidden_states)\n\n        gate, up_states = up_states.chunk(2, dim=-1)",
        "gate, up_states = self.gate_up_proj(hidden_states).chunk(2, dim=-1)",
    ).replace("2 * config.intermediate_size", "config.intermediate_size * 2")
    assert inline != CHUNKED
    assert _split(inline) == _split(CHUNKED)


SUBSCRIPTED = """
class ToySharedMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.hidden_size = config.shared_intermediate_size
        self.input_linear = nn.Linear(config.hidden_size, self.hidden_size * 2, bias=False)
        self.output_linear = nn.Linear(self.hidden_size, config.hidden_size, bias=False)

    def forward(self, hidden_states):
        hidden_states = self.input_linear(hidden_states)
        chunked = hidden_states.chunk(2, dim=-1)
        hidden_states = self.activation(chunked[0]) * chunked[1]
        hidden_states = self.output_linear(hidden_states)
        return hidden_states
"""


def test_a_chunk_bound_to_one_name_and_read_by_constant_subscripts_reads_as_its_parts() -> None:
    """`c = t.chunk(2, dim=-1)` read only as `c[0]`, `c[1]` is `c_0, c_1 = t.chunk(2, dim=-1)`: parts named
    after `c`, `c[i]` read as part i, the fused name bound again by the statement reading the parts."""
    text, fusions = _split(SUBSCRIPTED)
    assert text == format_python(
        dedent("""
        class ToySharedMLP(nn.Module):
            def __init__(self, config):
                super().__init__()
                self.hidden_size = config.shared_intermediate_size
                self.chunked_0_proj = nn.Linear(config.hidden_size, self.hidden_size, bias=False)
                self.chunked_1_proj = nn.Linear(config.hidden_size, self.hidden_size, bias=False)
                self.output_linear = nn.Linear(self.hidden_size, config.hidden_size, bias=False)

            def forward(self, hidden_states):
                chunked_0 = self.chunked_0_proj(hidden_states)
                chunked_1 = self.chunked_1_proj(hidden_states)
                hidden_states = self.activation(chunked_0) * chunked_1
                hidden_states = self.output_linear(hidden_states)
                return hidden_states
        """).strip("\n")
        + "\n"
    )
    assert fusions == (
        SourceFusion(
            owner="ToySharedMLP",
            source_name="input_linear",
            part_names=("chunked_0_proj", "chunked_1_proj"),
            part_sizes=("self.hidden_size",) * 2,
            bias="False",
            location=Location("toy.py", 5),  # the fused linear's line in the source
        ),
    )
    functional = SUBSCRIPTED.replace(
        "hidden_states.chunk(2, dim=-1)", "torch.chunk(hidden_states, 2, dim=-1)"
    )
    assert functional != SUBSCRIPTED and _split(functional) == (text, fusions)


def test_other_reads_of_a_chunk_bound_to_one_name_are_left_as_they_are() -> None:
    """No-op cases (they stay refused, R007): the chunked tuple read whole, sliced, by a computed or
    out-of-range index, written to, and a part name already taken."""
    reads = [
        "hidden_states = self.activation(chunked[0]) * chunked[1]\n        n = len(chunked)",
        "hidden_states = self.activation(chunked[0]) * chunked[-1]",
        "hidden_states = self.activation(chunked[0]) * chunked[2]",
        "hidden_states = self.activation(chunked[0]) * chunked[1:][0]",
        "i = 1\n        hidden_states = self.activation(chunked[0]) * chunked[i]",
        "hidden_states = self.activation(chunked[0]) * chunked[1]\n        chunked[0] = 1",
        "chunked_1 = 0\n        hidden_states = self.activation(chunked[0]) * chunked[1]",
    ]
    cases = [
        SUBSCRIPTED.replace("hidden_states = self.activation(chunked[0]) * chunked[1]", read)
        for read in reads
    ]
    cases.append(SUBSCRIPTED.replace("chunk(2, dim=-1)", "chunk(2, dim=1)"))
    for source in cases:
        assert source != SUBSCRIPTED
        text, fusions = _split(source)
        assert fusions == ()
        assert text == format_python(dedent(source).strip("\n") + "\n")


def test_other_splits_are_left_as_they_are() -> None:
    """No-op cases (they stay refused, R007): a chunk along another dimension, a linear the class reads
    elsewhere too, a fused output read after the split, and sizes only the forward can compute."""
    cases = [
        CHUNKED.replace("chunk(2, dim=-1)", "chunk(2, dim=1)"),
        CHUNKED.replace("act(gate))", "act(gate)) + self.gate_up_proj.weight.sum()"),
        SLICED.replace("return attend(", "return qkv, attend("),
        SLICED,  # self.num_heads is never set in __init__
    ]
    for source in cases:
        text, fusions = _split(source)
        assert fusions == ()
        assert text == format_python(dedent(source).strip("\n") + "\n")


CLAMPED = """
class ToyAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.hidden_size = config.hidden_size
        self.clip_qkv = config.clip_qkv
        self.Wqkv = nn.Linear(self.hidden_size, 3 * self.hidden_size, bias=False)
        self.out_proj = nn.Linear(self.hidden_size, self.hidden_size, bias=False)

    def forward(self, hidden_states, position_bias):
        mixed_qkv = self.Wqkv(hidden_states)
        if self.clip_qkv:
            mixed_qkv = mixed_qkv.clamp(min=-self.clip_qkv, max=self.clip_qkv)

        query_states, key_states, value_states = mixed_qkv.chunk(3, dim=2)
        return self.out_proj(attend(query_states, key_states, value_states))
"""


def test_a_clamp_before_a_chunk_of_the_hidden_states_dimension_applies_to_each_part() -> None:
    """MPT's form: the fused output clamped in place (under an `if`), then chunked along dim 2 of the
    block's (batch, sequence, features) input: each part is clamped instead (clamp commutes with the
    split), and dim 2 is the features."""
    text, fusions = _split(CLAMPED)
    clamp = "clamp(min=-self.clip_qkv, max=self.clip_qkv)"
    assert text == format_python(
        dedent(f"""
        class ToyAttention(nn.Module):
            def __init__(self, config):
                super().__init__()
                self.hidden_size = config.hidden_size
                self.clip_qkv = config.clip_qkv
                self.q_proj = nn.Linear(self.hidden_size, self.hidden_size, bias=False)
                self.k_proj = nn.Linear(self.hidden_size, self.hidden_size, bias=False)
                self.v_proj = nn.Linear(self.hidden_size, self.hidden_size, bias=False)
                self.out_proj = nn.Linear(self.hidden_size, self.hidden_size, bias=False)

            def forward(self, hidden_states, position_bias):
                query_states = self.q_proj(hidden_states)
                key_states = self.k_proj(hidden_states)
                value_states = self.v_proj(hidden_states)
                if self.clip_qkv:
                    query_states = query_states.{clamp}
                    key_states = key_states.{clamp}
                    value_states = value_states.{clamp}
                return self.out_proj(attend(query_states, key_states, value_states))
        """).strip("\n")
        + "\n"
    )
    assert [(f.source_name, f.part_sizes, f.groups) for f in fusions] == [
        ("Wqkv", ("self.hidden_size",) * 3, None)
    ]


def test_other_clamps_and_dimensions_are_left_as_they_are() -> None:
    """No-op cases (they stay refused, R007): a clamp bound that reads the fused output, an `if` with an
    `else`, another operation than clamp, dim 2 of something else than the block's input."""
    cases = [
        CLAMPED.replace("max=self.clip_qkv)", "max=mixed_qkv.max())"),
        CLAMPED.replace(
            "max=self.clip_qkv)\n",
            "max=self.clip_qkv)\n        else:\n            mixed_qkv = mixed_qkv * 2\n",
        ),
        CLAMPED.replace("mixed_qkv.clamp(", "mixed_qkv.add("),
        CLAMPED.replace("self.Wqkv(hidden_states)", "self.Wqkv(position_bias)"),
    ]
    for source in cases:
        text, fusions = _split(source)
        assert fusions == ()
        assert text == format_python(dedent(source).strip("\n") + "\n")


VIEWED = """
class ToyAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.head_size = config.hidden_size // config.num_attention_heads
        self.query_key_value = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=config.attention_bias)
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden_states):
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, 3 * self.head_size)

        qkv = self.query_key_value(hidden_states).view(hidden_shape).transpose(1, 2)
        query_states, key_states, value_states = qkv.chunk(3, dim=-1)
        return self.dense(attend(query_states, key_states, value_states))
"""


def test_a_view_into_heads_then_a_chunk_reads_as_parts_interleaved_per_head() -> None:
    """GPT-NeoX's form: the fused output viewed as (..., heads, 3 * head_size) and chunked. Each part is
    viewed with head_size last; the fusion records the group count (heads) for the checkpoint's spec."""
    text, fusions = _split(VIEWED)
    assert text == format_python(
        dedent("""
        class ToyAttention(nn.Module):
            def __init__(self, config):
                super().__init__()
                self.head_size = config.hidden_size // config.num_attention_heads
                self.q_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=config.attention_bias)
                self.k_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=config.attention_bias)
                self.v_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=config.attention_bias)
                self.dense = nn.Linear(config.hidden_size, config.hidden_size)

            def forward(self, hidden_states):
                input_shape = hidden_states.shape[:-1]
                hidden_shape = (*input_shape, -1, self.head_size)

                query_states = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)
                key_states = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
                value_states = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
                return self.dense(attend(query_states, key_states, value_states))
        """).strip("\n")
        + "\n"
    )
    assert fusions == (
        SourceFusion(
            owner="ToyAttention",
            source_name="query_key_value",
            part_names=("q_proj", "k_proj", "v_proj"),
            part_sizes=("config.hidden_size",) * 3,
            bias="config.attention_bias",
            location=Location("toy.py", 5),
            groups="config.hidden_size // self.head_size",
        ),
    )


def test_a_view_written_in_the_call_reads_the_same_way() -> None:
    inline = VIEWED.replace("        hidden_shape = (*input_shape, -1, 3 * self.head_size)\n", "").replace(
        ".view(hidden_shape)", ".view(*input_shape, -1, self.head_size * 3)"
    )
    text, fusions = _split(inline)
    assert "self.q_proj(hidden_states).view(*input_shape, -1, self.head_size).transpose(1, 2)" in text
    assert [f.groups for f in fusions] == ["config.hidden_size // self.head_size"]


def test_other_views_are_left_as_they_are() -> None:
    """No-op cases (they stay refused, R003): the shape local read elsewhere too, a transpose that may move
    the last dimension, a last dimension that is not the parts' count times a size, a group size the
    constructor cannot compute."""
    cases = [
        VIEWED.replace("return self.dense(", "return hidden_shape, self.dense("),
        VIEWED.replace(".transpose(1, 2)", ".transpose(-1, -2)"),
        VIEWED.replace(
            ".transpose(1, 2)", ".transpose(2, 3)"
        ),  # (*input_shape, -1, n * d): 3 may be the last
        VIEWED.replace("3 * self.head_size)", "2 * self.head_size)"),
        VIEWED.replace("3 * self.head_size", "3 * self.rotary_ndims"),
    ]
    for source in cases:
        text, fusions = _split(source)
        assert fusions == ()
        assert text == format_python(dedent(source).strip("\n") + "\n")


GROUPED_FIRST = """
class ToyAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.embed_dim = config.hidden_size
        self.qkv_proj = nn.Linear(self.embed_dim, self.embed_dim * 3, bias=False)
        self.out_proj = nn.Linear(self.embed_dim, self.embed_dim, bias=False)

    def forward(self, hidden_states):
        qkv = self.qkv_proj(hidden_states)
        mp_num = 4
        qkv_split = qkv.reshape(qkv.shape[:-1] + (mp_num, -1))

        local_dim = self.embed_dim // mp_num
        query, value, key = torch.split(qkv_split, local_dim, dim=-1)
        return self.out_proj(attend(query, key, value, mp_num))
"""


def test_groups_cut_first_then_split_read_as_parts_in_the_source_order() -> None:
    """CodeGen's form: the fused output cut into `mp_num` groups, then each group split into q, v and k (in
    that order). Each part is cut into the groups the same way; the fusion records the parts in the
    source's order and the group count, as the constructor computes it."""
    text, fusions = _split(GROUPED_FIRST)
    assert text == format_python(
        dedent("""
        class ToyAttention(nn.Module):
            def __init__(self, config):
                super().__init__()
                self.embed_dim = config.hidden_size
                self.q_proj = nn.Linear(self.embed_dim, self.embed_dim, bias=False)
                self.v_proj = nn.Linear(self.embed_dim, self.embed_dim, bias=False)
                self.k_proj = nn.Linear(self.embed_dim, self.embed_dim, bias=False)
                self.out_proj = nn.Linear(self.embed_dim, self.embed_dim, bias=False)

            def forward(self, hidden_states):
                mp_num = 4

                query = self.q_proj(hidden_states)
                query = query.reshape(query.shape[:-1] + (mp_num, -1))
                value = self.v_proj(hidden_states)
                value = value.reshape(value.shape[:-1] + (mp_num, -1))
                key = self.k_proj(hidden_states)
                key = key.reshape(key.shape[:-1] + (mp_num, -1))
                return self.out_proj(attend(query, key, value, mp_num))
        """).strip("\n")
        + "\n"
    )
    assert fusions == (
        SourceFusion(
            owner="ToyAttention",
            source_name="qkv_proj",
            part_names=("q_proj", "v_proj", "k_proj"),
            part_sizes=("self.embed_dim",) * 3,
            bias="False",
            location=Location("toy.py", 5),
            groups="4",
            groups_in_forward=True,
        ),
    )


def test_the_grouped_split_as_a_method_or_a_chunk_reads_the_same_way() -> None:
    for split in ("qkv_split.split(local_dim, dim=-1)", "qkv_split.chunk(3, dim=-1)"):
        text, fusions = _split(GROUPED_FIRST.replace("torch.split(qkv_split, local_dim, dim=-1)", split))
        assert "query = query.reshape(query.shape[:-1] + (mp_num, -1))" in text
        assert [(f.part_names, f.groups) for f in fusions] == [(("q_proj", "v_proj", "k_proj"), "4")]


def test_other_grouped_splits_are_left_as_they_are() -> None:
    """No-op cases (they stay refused, R007): the grouped tensor read elsewhere, groups that are not the
    last but one dimension, sizes given one by one, a split along another dimension, a group count the
    constructor cannot compute."""
    cases = [
        GROUPED_FIRST.replace("attend(query, key, value, mp_num)", "attend(query, key, value, qkv_split)"),
        GROUPED_FIRST.replace("(mp_num, -1)", "(-1, mp_num)"),
        GROUPED_FIRST.replace("local_dim, dim=-1", "[local_dim, local_dim, local_dim], dim=-1"),
        GROUPED_FIRST.replace("local_dim, dim=-1", "local_dim, dim=-2"),
        GROUPED_FIRST.replace("mp_num = 4", "mp_num = hidden_states.shape[0]"),
    ]
    for source in cases:
        text, fusions = _split(source)
        assert fusions == ()
        assert text == format_python(dedent(source).strip("\n") + "\n")


class TestFusedGateUpOnSeparateStatements(RuleTest):
    """NXS020 after analysis split a chunk: gate and up called in two statements."""

    TRANSFORM = FusedGateUp

    def test_the_split_binds_the_statements_own_names(self) -> None:
        gate = site("ToyMLP", "gate", Role.COLUMN, out_features="config.intermediate_size", path="mlp.gate")
        up = site("ToyMLP", "up", Role.COLUMN, out_features="config.intermediate_size", path="mlp.up")
        block = MLPBlock("ToyMLP", "mlp", "gate", "up", "down", None, expr("config.intermediate_size"), HERE)
        before = """
from torch import nn


class ToyMLP(nn.Module):
    def __init__(self, config, trn_config):
        super().__init__()
        self.gate = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)

    def forward(self, x):
        g = self.gate(x)
        u = self.up(x)
        return g * u
"""
        rule = FusedGateUp(
            CodemodContext(), blueprint(classes=[klass("ToyMLP")], sites=[gate, up], mlps=[block])
        )
        out = rule.transform_module(cst.parse_module(before)).code
        forward = out[out.index("    def forward") :]
        assert forward == (
            "    def forward(self, x):\n"
            "        g, u = self.gate_up_proj(x).split(self.split_size, dim=-1)\n"
            "        return g * u\n"
        )


FUSION = SourceFusion(
    owner="ToyMLP",
    source_name="gate_up_proj",
    part_names=("gate_proj", "up_proj"),
    part_sizes=("config.intermediate_size", "config.intermediate_size"),
    bias="False",
    location=HERE,
)
MLP = """
from torch import nn

from ..transformations_utils import CustomModule, FusedLinearsSpec, ModelWeightTransformationSpecs


class ToyMLP(nn.Module, CustomModule):
    def __init__(self, config):
        super().__init__()
        self.specs = ModelWeightTransformationSpecs()
        self.specs.add_spec(FusedLinearsSpec("gate_up_proj", ["gate_proj", "up_proj"], False, "column", [4, 4]))
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
"""


GROUPED_ATTENTION = """
class ToyAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        tp_size = get_tensor_model_parallel_size()
        self.specs = ModelWeightTransformationSpecs()
        self.q_proj = ColumnParallelLinear(config.hidden_size, config.hidden_size)
        self.v_proj = ColumnParallelLinear(config.hidden_size, config.hidden_size)
        self.k_proj = ColumnParallelLinear(config.hidden_size, config.hidden_size)
        self.num_heads = divide(config.num_attention_heads, tp_size)
        self.num_key_value_heads = divide(config.num_attention_heads * self.kv_size_multiplier, tp_size)
        self.num_key_value_groups = self.num_heads // self.num_key_value_heads
"""
GROUPED_FUSION = SourceFusion(
    owner="ToyAttention",
    source_name="qkv_proj",
    part_names=("q_proj", "v_proj", "k_proj"),
    part_sizes=("config.hidden_size",) * 3,
    bias="False",
    location=Location("toy.py", 5),
    groups="4",
)


class TestSourceFusedCheckpoint(RuleTest):
    TRANSFORM = SourceFusedCheckpoint

    def _run(self, source: str, fusions: tuple[SourceFusion, ...]) -> str:
        plan = dataclasses.replace(
            blueprint(classes=[klass("ToyMLP"), klass("ToyAttention")]), fusions=fusions
        )
        rule = SourceFusedCheckpoint(CodemodContext(), plan)
        return format_python(rule.transform_module(cst.parse_module(dedent(source).lstrip("\n"))).code)

    def test_the_spec_owning_the_parts_is_wrapped_after_the_constructor_built_it(self) -> None:
        out = self._run(MLP, (FUSION,))
        cls = out[out.index("class ToyMLP") :]
        assert cls == format_python(
            dedent("""
            class ToyMLP(nn.Module, CustomModule):
                def __init__(self, config):
                    super().__init__()
                    self.specs = ModelWeightTransformationSpecs()
                    self.specs.add_spec(FusedLinearsSpec("gate_up_proj", ["gate_proj", "up_proj"], False, "column", [4, 4]))
                    # transformers' checkpoint holds these projections as one linear, split along its output features:
                    # its tensor is split into them when loading and joined back when saving.
                    self.specs = with_source_fused_linear(
                        self.specs,
                        "gate_up_proj",
                        ["gate_proj", "up_proj"],
                        [config.intermediate_size, config.intermediate_size],
                        bias=False,
                    )
                    self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
            """).strip("\n")
            + "\n"
        )
        head = out[: out.index("class ToyMLP")]
        # the definitions, once, before the first class, with the imports they read
        assert head.count("class SourceFusedLinearSpec(ModelWeightTransformationSpec):") == 1
        assert head.count("def with_source_fused_linear(") == 1
        assert "from .. import transformations_utils" in head
        assert "from dataclasses import asdict, dataclass, field" in head

    def test_parts_interleaved_in_groups_pass_the_group_count(self) -> None:
        out = self._run(MLP, (dataclasses.replace(FUSION, groups="config.num_attention_heads"),))
        assert "bias=False,\n            groups=config.num_attention_heads,\n        )" in out
        assert "whose output features interleave" in out

    def test_groups_the_forward_cuts_per_rank_get_a_construction_guard(self) -> None:
        """Hand-written after: the check follows the per-rank head counts, names them, the group count and
        the TP size, and says which TP sizes work."""
        fusion = dataclasses.replace(GROUPED_FUSION, groups_in_forward=True)
        out = self._run(GROUPED_ATTENTION, (fusion,))
        cls = out[out.index("class ToyAttention") :]
        assert cls == format_python(
            dedent("""
            class ToyAttention(nn.Module, CustomModule):
                def __init__(self, config):
                    super().__init__()
                    tp_size = get_tensor_model_parallel_size()
                    self.specs = ModelWeightTransformationSpecs()
                    self.q_proj = ColumnParallelLinear(config.hidden_size, config.hidden_size)
                    self.v_proj = ColumnParallelLinear(config.hidden_size, config.hidden_size)
                    self.k_proj = ColumnParallelLinear(config.hidden_size, config.hidden_size)
                    # transformers' checkpoint holds these projections as one linear whose output features interleave
                    # them group by group: its tensor is de-interleaved into them when loading and interleaved again
                    # when saving.
                    self.specs = with_source_fused_linear(
                        self.specs,
                        "qkv_proj",
                        ["q_proj", "v_proj", "k_proj"],
                        [config.hidden_size, config.hidden_size, config.hidden_size],
                        bias=False,
                        groups=4,
                    )
                    self.num_heads = divide(config.num_attention_heads, tp_size)
                    self.num_key_value_heads = divide(config.num_attention_heads * self.kv_size_multiplier, tp_size)
                    # The forward cuts each rank's projections into the source's groups: every group must hold whole heads.
                    if self.num_heads % 4 or self.num_key_value_heads % 4:
                        raise NotImplementedError(
                            f"{self.num_heads} query and {self.num_key_value_heads} key/value heads per rank "
                            f"({config.num_attention_heads} heads over tensor-parallel size {tp_size}): the forward cuts each rank's "
                            "q_proj, v_proj, k_proj into 4 groups of whole heads (the source's fused qkv_proj); "
                            "use a tensor-parallel size that leaves a multiple of 4 heads per rank"
                        )
                    self.num_key_value_groups = self.num_heads // self.num_key_value_heads
            """).strip("\n")
            + "\n"
        )

    def test_a_group_count_read_at_construction_is_shown_by_value(self) -> None:
        fusion = dataclasses.replace(GROUPED_FUSION, groups="config.mp_num", groups_in_forward=True)
        out = self._run(GROUPED_ATTENTION, (fusion,))
        assert "if self.num_heads % config.mp_num or self.num_key_value_heads % config.mp_num:" in out
        assert '"q_proj, v_proj, k_proj into {config.mp_num} groups of whole heads' in out.replace(
            'f"q_proj', '"q_proj'
        )

    def test_no_guard_for_groups_the_forward_does_not_cut_or_without_per_rank_heads(self) -> None:
        out = self._run(GROUPED_ATTENTION, (GROUPED_FUSION,))  # interleaved per head: whole heads per rank
        assert "every group must hold whole heads" not in out
        without_heads = "\n".join(line for line in GROUPED_ATTENTION.splitlines() if "divide(" not in line)
        out = self._run(without_heads, (dataclasses.replace(GROUPED_FUSION, groups_in_forward=True),))
        assert "every group must hold whole heads" not in out and "groups=4" in out

    def test_two_fused_classes_get_the_definitions_once(self) -> None:
        source = MLP + MLP.split("\n\n\n")[1].replace("ToyMLP", "ToyAttention")
        out = self._run(source, (FUSION, dataclasses.replace(FUSION, owner="ToyAttention")))
        assert out.count("class SourceFusedLinearSpec(") == 1
        assert out.count("self.specs = with_source_fused_linear(") == 2

    def test_no_fusion_no_change(self) -> None:
        self.assertUnchanged(MLP, blueprint=blueprint(classes=[klass("ToyMLP")]))
