"""transformers' Conv1D read as nn.Linear (`scaffold.analysis.conv1d`), head pruning read as absent
(`scaffold.analysis.head_pruning`), a `.split(size, dim=...)` of one linear read as separate linears, and
NXS027's transposing spec for them: hand-written before/after snippets and facts."""

from __future__ import annotations

import dataclasses
from textwrap import dedent

import libcst as cst
from libcst.codemod import CodemodContext

from scaffold.analysis.conv1d import TransposedLinear, read_conv1d_as_linear
from scaffold.analysis.head_pruning import without_head_pruning
from scaffold.analysis.source_fusions import split_source_fusions, with_transposed
from scaffold.blueprint import Location, SourceFusion
from scaffold.emit import format_python
from scaffold.rules.source_fused_checkpoint import SourceFusedCheckpoint

from .toy import blueprint, klass

PACKAGE = "transformers.models.toy"


def _source(text: str) -> str:
    return dedent(text).strip("\n") + "\n"


CONV1D_SOURCE = """
from torch import nn

from ...pytorch_utils import Conv1D


class ToyMLP(nn.Module):
    def __init__(self, intermediate_size, config):
        super().__init__()
        self.c_fc = Conv1D(intermediate_size, config.hidden_size)
        self.c_proj = Conv1D(config.hidden_size, intermediate_size)
        self.extra = [Conv1D(2, 3)]

    def forward(self, x):
        return self.c_proj(self.c_fc(x))
"""


def test_conv1d_built_in_a_constructor_reads_as_the_linear_it_computes() -> None:
    module, found = read_conv1d_as_linear(cst.parse_module(_source(CONV1D_SOURCE)), PACKAGE, "toy.py")
    assert module.code == _source(
        CONV1D_SOURCE.replace(
            "Conv1D(intermediate_size, config.hidden_size)",
            "nn.Linear(config.hidden_size, intermediate_size)",
        ).replace(
            "Conv1D(config.hidden_size, intermediate_size)",
            "nn.Linear(intermediate_size, config.hidden_size)",
        )
    )  # `[Conv1D(2, 3)]` is no attribute of its own: it stays (R002 names it)
    assert found == (
        TransposedLinear("ToyMLP", "c_fc", "intermediate_size", Location("toy.py", 9)),
        TransposedLinear("ToyMLP", "c_proj", "config.hidden_size", Location("toy.py", 10)),
    )


def test_a_conv1d_of_another_module_is_left_alone() -> None:
    source = _source(
        CONV1D_SOURCE.replace("from ...pytorch_utils import Conv1D", "from .layers import Conv1D")
    )
    module = cst.parse_module(source)
    assert read_conv1d_as_linear(module, PACKAGE, "toy.py") == (module, ())


PRUNING = """
class ToyAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_attn = nn.Linear(config.hidden_size, 3 * config.hidden_size)

    def prune_heads(self, heads):
        index = find_pruneable_heads_and_indices(heads, self.num_heads, self.head_dim, self.pruned_heads)
        self.c_attn = prune_linear_layer(self.c_attn, index, dim=0)

    def forward(self, x):
        return self.c_attn(x)


class ToyModel(nn.Module):
    def _prune_heads(self, heads_to_prune):
        for layer, heads in heads_to_prune.items():
            self.h[layer].attn.prune_heads(heads)
"""


def test_head_pruning_methods_go_and_lines_stay() -> None:
    source = _source(PRUNING)
    result = without_head_pruning(cst.parse_module(source)).code
    assert [line for line in result.splitlines() if line.strip()] == [
        "class ToyAttention(nn.Module):",
        "    def __init__(self, config):",
        "        super().__init__()",
        "        self.c_attn = nn.Linear(config.hidden_size, 3 * config.hidden_size)",
        "    def forward(self, x):",
        "        return self.c_attn(x)",
        "class ToyModel(nn.Module):",
        "    pass",
    ]
    before, after = source.splitlines(), result.splitlines()
    assert after.index("    def forward(self, x):") == before.index("    def forward(self, x):")
    assert len(after) == len(before) + 1  # the emptied class holds `pass`


SPLIT = """
class ToyAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.split_size = config.hidden_size
        self.c_attn = nn.Linear(config.hidden_size, 3 * config.hidden_size)

    def forward(self, hidden_states):
        query, key, value = self.c_attn(hidden_states).split(self.split_size, dim=2)
        return attend(query, key, value)
"""


def test_a_split_by_size_of_one_linear_reads_as_one_linear_per_part() -> None:
    # The size is the value the constructor gave the attribute: NXS021 may give `self.split_size` a
    # per-rank meaning in its fused branch, after which the parts' total sizes would be wrong.
    module, fusions = split_source_fusions(cst.parse_module(_source(SPLIT)), "toy.py")
    assert format_python(module.code) == format_python(
        _source("""
        class ToyAttention(nn.Module):
            def __init__(self, config):
                super().__init__()
                self.split_size = config.hidden_size
                self.q_proj = nn.Linear(config.hidden_size, config.hidden_size)
                self.k_proj = nn.Linear(config.hidden_size, config.hidden_size)
                self.v_proj = nn.Linear(config.hidden_size, config.hidden_size)

            def forward(self, hidden_states):
                query = self.q_proj(hidden_states)
                key = self.k_proj(hidden_states)
                value = self.v_proj(hidden_states)
                return attend(query, key, value)
        """)
    )
    assert [(f.source_name, f.part_names, f.part_sizes) for f in fusions] == [
        ("c_attn", ("q_proj", "k_proj", "v_proj"), ("config.hidden_size",) * 3)
    ]


def test_a_split_along_another_dimension_is_left_alone() -> None:
    source = _source(SPLIT.replace("dim=2", "dim=1"))
    module, fusions = split_source_fusions(cst.parse_module(source), "toy.py")
    assert fusions == ()
    assert module.code == source


def test_transposed_linears_mark_their_fusion_or_become_one_of_their_own() -> None:
    here = Location("toy.py", 3)
    split = SourceFusion("A", "c_attn", ("q", "k", "v"), ("n", "n", "n"), "True", here)
    other = SourceFusion("B", "qkv", ("q", "k", "v"), ("n", "n", "n"), "True", here)
    transposed = (TransposedLinear("A", "c_attn", "3 * n", here), TransposedLinear("A", "c_proj", "n", here))
    assert with_transposed((split, other), transposed) == (
        dataclasses.replace(split, transposed=True),
        other,
        SourceFusion("A", "c_proj", ("c_proj",), ("n",), "True", here, transposed=True),
    )


MLP = """
from torch import nn

from ..transformations_utils import CustomModule


class ToyMLP(nn.Module):
    def __init__(self, intermediate_size, config):
        super().__init__()
        self.c_fc = ColumnParallelLinear(config.hidden_size, intermediate_size, bias=True)
        self.act = nn.GELU()
"""


def test_nxs027_gives_a_transposed_linear_the_transposing_spec() -> None:
    fusion = SourceFusion(
        "ToyMLP", "c_fc", ("c_fc",), ("intermediate_size",), "True", Location("toy.py", 9), transposed=True
    )
    plan = dataclasses.replace(blueprint(classes=[klass("ToyMLP")]), fusions=(fusion,))
    rule = SourceFusedCheckpoint(CodemodContext(), plan)
    out = format_python(rule.transform_module(cst.parse_module(_source(MLP))).code)
    cls = out[out.index("class ToyMLP") :]
    assert cls == format_python(
        _source("""
        class ToyMLP(nn.Module, CustomModule):
            def __init__(self, intermediate_size, config):
                super().__init__()
                self.c_fc = ColumnParallelLinear(config.hidden_size, intermediate_size, bias=True)
                # transformers' checkpoint holds this linear as a Conv1D, its weight transposed (input features first):
                # the tensor is transposed (and split into the parts) when loading and transposed back when saving.
                self.specs = with_transposed_source_fused_linear(self.specs, "c_fc", ["c_fc"], [intermediate_size], bias=True)
                self.act = nn.GELU()
        """)
    )
    head = out[: out.index("class ToyMLP")]
    assert head.count("class SourceFusedLinearSpec(ModelWeightTransformationSpec):") == 1
    assert head.count("class TransposedSourceFusedLinearSpec(SourceFusedLinearSpec):") == 1
    assert head.index("class SourceFusedLinearSpec") < head.index("class TransposedSourceFusedLinearSpec")
    assert "from .source_fused_linears" not in out and "from .transposed_linears" not in out


def test_a_file_without_transposed_linears_gets_no_transposing_definitions() -> None:
    fusion = SourceFusion("ToyMLP", "c_fc", ("c_fc",), ("intermediate_size",), "True", Location("toy.py", 9))
    plan = dataclasses.replace(blueprint(classes=[klass("ToyMLP")]), fusions=(fusion,))
    out = SourceFusedCheckpoint(CodemodContext(), plan).transform_module(cst.parse_module(_source(MLP))).code
    assert "TransposedSourceFusedLinearSpec" not in out
