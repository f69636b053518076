"""The analysis's cheap resolvers against libcst's metadata providers (the oracle): start lines
(`PositionProvider`) and imported names (`QualifiedNameProvider`, import-sourced names)."""

from __future__ import annotations

import ast

import libcst as cst
import pytest
from libcst.metadata import MetadataWrapper, PositionProvider

from scaffold.analysis.classes import map_module
from scaffold.analysis.imported_names import ImportTable
from scaffold.analysis.parsing import SourceIndex, libcst_imported_names, parse_module, prune
from scaffold.analysis.positions import start_lines

from .conftest import located

EXACT = '''"""Doc."""
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn import Linear as L
from ...activations import ACT2FN
from . import sibling
if torch.cuda.is_available():
    from .kernels import fast
else:
    fast = None  # rebinding: the import table would be wrong for `fast`, so...

class A(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.proj = L(1, 2)
        self.act = ACT2FN[config.act]
        self.w = nn.Parameter(torch.ones(2))

    def forward(self, x):
        y = F.silu(self.proj(x)).view(-1)[0].to(torch.float32)
        z = (x @ x).transpose(0, 1)
        return torch.nn.functional.softmax(y, dim=-1) + sibling.helper(z, torch=F) + len(x)
'''
NOT_EXACT = {
    "rebound": EXACT,
    "shadowed by a parameter": "from torch import nn\ndef f(nn):\n    return nn.Linear\nx = nn.Linear\n",
    "read before import": "x = F.relu\nimport torch.nn.functional as F\n",
    "star import": "from torch import *\nx = nn.Linear\n",
    "dotted import": "import torch.nn\nx = torch.nn.Linear\n",
    "import in a function": "def f():\n    from torch import nn\n    return nn.Linear\nnn = 1\ny = nn\n",
    "imported twice": "from torch import nn\nfrom torch import nn\nx = nn.Linear\n",
}
EXACT_SOURCES = {"exact": EXACT.replace("else:\n    fast = None", "else:\n    pass")}


def _nodes_outside_imports(module: cst.Module) -> list[cst.CSTNode]:
    """Every node but the parts of import statements and the names after a dot or before a keyword's `=`
    (libcst gives those no names; the analysis asks about expressions only)."""
    found: list[cst.CSTNode] = []
    skipped: set[cst.CSTNode] = set()

    class _All(cst.CSTVisitor):
        def on_visit(self, node: cst.CSTNode) -> bool:
            if isinstance(node, cst.Import | cst.ImportFrom):
                return False
            if isinstance(node, cst.Attribute):
                skipped.add(node.attr)
            elif isinstance(node, cst.Arg) and node.keyword is not None:
                skipped.add(node.keyword)
            if node not in skipped:
                found.append(node)
            return True

    module.visit(_All())
    return found


def _pruned(model_type: str) -> cst.Module:
    source = located(model_type)
    full = parse_module(source.read_text(), source.display_path)
    closure = map_module(full).closure([source.base_model_class, source.causal_lm_class])
    return prune(full, set(closure))


def test_import_table_answers_as_libcst_on_every_node_of_a_target(target):
    module = _pruned(target)
    table = ImportTable.of(ast.parse(module.code))
    assert table is not None, "the targets keep to what makes the import table exact (the fast path)"
    oracle = libcst_imported_names(module)
    nodes = _nodes_outside_imports(module)
    assert [node for node in nodes if table.qualified_names(node) != oracle(node)] == []
    assert any(table.qualified_names(node) for node in nodes)


def test_start_lines_match_position_provider(target):
    module = _pruned(target)
    positions = MetadataWrapper(module, unsafe_skip_copy=True).resolve(PositionProvider)
    lines = start_lines(module)
    assert {node: lines[node] for node in positions} == {node: r.start.line for node, r in positions.items()}


def test_start_lines_with_decorators_comments_and_carriage_returns():
    module = cst.parse_module(
        "# c\r\n@dec\r\n\r\nclass A:  # x\r\n    '''d'''\r\n\r\n    x = [\r\n        1,\r\n    ]\r\n"
    )
    positions = MetadataWrapper(module, unsafe_skip_copy=True).resolve(PositionProvider)
    lines = start_lines(module)
    assert {node: lines[node] for node in positions} == {node: r.start.line for node, r in positions.items()}


@pytest.mark.parametrize("name", sorted(EXACT_SOURCES))
def test_import_table_on_aliases_relative_imports_and_call_chains(name):
    module = cst.parse_module(EXACT_SOURCES[name])
    table = ImportTable.of(ast.parse(module.code))
    assert table is not None
    oracle = libcst_imported_names(module)
    nodes = _nodes_outside_imports(module)
    assert [node for node in nodes if table.qualified_names(node) != oracle(node)] == []
    answers = {SourceIndex.code(node): table.qualified_names(node) for node in nodes}
    assert answers["L(1, 2)"] == {"torch.nn.Linear"}
    assert answers["F.silu(self.proj(x)).view(-1)[0].to"] == {"torch.nn.functional.silu.view.to"}
    assert answers["sibling.helper"] == {".sibling.helper"}
    assert answers["ACT2FN"] == {"...activations.ACT2FN"}


@pytest.mark.parametrize("name", sorted(NOT_EXACT))
def test_source_index_falls_back_to_libcst_where_the_table_is_not_exact(name):
    module = cst.parse_module(NOT_EXACT[name])
    assert ImportTable.of(ast.parse(module.code)) is None
    index = SourceIndex(module, "m.py", "transformers.models.m")
    oracle = libcst_imported_names(module)
    for node in _nodes_outside_imports(module):
        expected = {name if not name.startswith(".") else None for name in oracle(node)}
        if None not in expected:
            assert index.qualified_names(node) == expected
