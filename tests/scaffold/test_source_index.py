"""The analysis's view of a parsed file: lines and absolute qualified names of its nodes, checked against
hand-written expectations on a small module (aliases, relative imports, call chains, shadowing)."""

from __future__ import annotations

import libcst as cst
import pytest

from scaffold.analysis.parsing import SourceIndex, prune
from scaffold.syntax import code, walk

SOURCE = '''"""Doc."""
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn import Linear as L
from ...activations import ACT2FN
from . import sibling


class A(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.proj = L(1, 2)
        self.act = ACT2FN[config.act]
        self.w = nn.Parameter(torch.ones(2))

    def forward(self, x, nn=None):
        y = F.silu(self.proj(x))
        return nn.Linear + sibling.helper(y)
'''


def _index(source: str = SOURCE) -> SourceIndex:
    return SourceIndex(cst.parse_module(source), "m.py", "transformers.models.m")


def _names(index: SourceIndex) -> dict[str, frozenset[str]]:
    """Qualified names by the code of each expression (the last one of a given text wins)."""
    return {
        code(node): index.qualified_names(node)
        for node in walk(index.module)
        if isinstance(node, cst.BaseExpression)
    }


def test_imports_resolve_through_aliases_to_absolute_names():
    names = _names(_index())
    assert names["L(1, 2)"] == {"torch.nn.Linear"}
    assert names["nn.Module"] == {"torch.nn.Module"}
    assert names["nn.Parameter"] == {"torch.nn.Parameter"}
    assert names["F.silu"] == {"torch.nn.functional.silu"}
    assert names["ACT2FN"] == {
        "transformers.activations.ACT2FN"
    }  # `...activations` from transformers.models.m
    assert names["sibling.helper"] == {"transformers.models.m.sibling.helper"}


def test_locals_and_shadowing_names_have_no_import_name():
    index = _index()
    forward = next(
        node
        for node in walk(index.module)
        if isinstance(node, cst.FunctionDef) and node.name.value == "forward"
    )
    shadowed = next(
        node for node in walk(forward.body) if isinstance(node, cst.Attribute) and code(node) == "nn.Linear"
    )
    assert index.qualified_names(shadowed) == frozenset()  # `nn` is forward's parameter here
    assert index.qualified_names(forward.params.params[1].name) == frozenset()  # `x`


def test_lines_are_where_nodes_start():
    index = _index()
    lines = SOURCE.splitlines()
    for node in walk(index.module):
        if isinstance(node, cst.ClassDef | cst.FunctionDef):
            assert lines[index.line(node) - 1].lstrip().startswith(("class ", "def ")), code(node)[:30]
    klass = next(node for node in walk(index.module) if isinstance(node, cst.ClassDef))
    assert index.location(klass).line == 10 and str(index.location(klass)) == "m.py:10"


def test_pruning_keeps_the_lines_of_what_it_keeps():
    module = cst.parse_module(
        "import torch\n\n\ndef gone():\n    pass\n\n\nclass Kept:\n    x = torch.ones(1)\n"
    )
    index = SourceIndex(prune(module, {"Kept"}), "m.py", "pkg")
    klass = next(node for node in walk(index.module) if isinstance(node, cst.ClassDef))
    assert index.line(klass) == 8
    assert "gone" not in index.module.code


@pytest.mark.parametrize("package", ["transformers", "a"])
def test_a_relative_import_above_the_package_has_no_name(package: str):
    index = SourceIndex(cst.parse_module("from .... import x\ny = x\n"), "m.py", package)
    use = index.module.body[1].body[0].value  # type: ignore[attr-defined]
    assert index.qualified_names(use) == frozenset()
