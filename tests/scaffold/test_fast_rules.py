"""The fast rule machinery: import edits against libcst's own codemod visitors, pruned descent, static names."""

from __future__ import annotations

import libcst as cst
import pytest
from libcst.codemod import CodemodContext
from libcst.codemod.visitors import AddImportsVisitor, RemoveImportsVisitor

from scaffold.rules._context import RuleContext
from scaffold.rules._descent import STATEMENT_CONTAINERS, descent_for_hooks
from scaffold.rules._edits import module_imports, qualified_name
from scaffold.rules._imports import (
    UnusedImportRemover,
    add_scheduled_imports,
    schedule_import,
    schedule_removal,
)

SOURCE = '''"""Docstring."""
from typing import Callable, Optional, Union  # trailing comment
import torch
import torch.nn.functional
import numpy as np
from torch import nn
from collections import (
    OrderedDict,  # kept?
    defaultdict,
)
from .sibling import helper, other

__all__ = ["other"]


def f(x: "Optional[int]", y: Callable) -> torch.Tensor:
    import os
    return nn.Linear(1, 2)(torch.functional.x) + OrderedDict()
'''

REMOVALS = [
    ("typing", "Callable", None),
    ("typing", "Optional", None),
    ("typing", "Union", None),
    ("torch", None, None),
    ("torch.nn.functional", None, None),
    ("numpy", None, "np"),
    ("torch", "nn", None),
    ("collections", "OrderedDict", None),
    ("collections", "defaultdict", None),
    ("os", None, None),
]
ADDITIONS = [
    ("torch", "nn", None, 0),
    ("functools", "partial", None, 0),
    ("modeling_utils", "Mixin", None, 2),
]


def _libcst(source: str, adds: list, removes: list) -> str:
    """The oracle: libcst's own visitors, run the way a codemod command runs them."""
    module = cst.parse_module(source)
    context = CodemodContext()
    for item in adds:
        AddImportsVisitor.add_needed_import(context, *item)
    for item in removes:
        RemoveImportsVisitor.remove_unused_import(context, *item)
    if adds:
        module = AddImportsVisitor(context).transform_module(module)
    if removes:
        module = RemoveImportsVisitor(context).transform_module(module)
    return module.code


def _fast(source: str, adds: list, removes: list) -> str:
    module = cst.parse_module(source)
    context = RuleContext()
    for item in adds:
        schedule_import(context, *item)
    for item in removes:
        schedule_removal(context, *item)
    if adds:
        module = add_scheduled_imports(module, context)
    if removes:
        module = module.visit(UnusedImportRemover(context))
    return module.code


@pytest.mark.parametrize(
    ("adds", "removes"),
    [(ADDITIONS, []), ([], REMOVALS), (ADDITIONS, REMOVALS), ([("typing", "Any", None, 0)], REMOVALS[:3])],
    ids=["add", "remove", "both", "merge-into-existing"],
)
def test_import_edits_match_libcst(adds, removes):
    assert _fast(SOURCE, adds, removes) == _libcst(SOURCE, adds, removes)


SOURCES_WITHOUT_DOCSTRING = [
    "import torch\n# comment first\nx = 1\n",
    "__strict__ = True\nfrom torch import (\n    nn,  # why\n    Tensor,\n)\n\nclass A:\n    pass\n",
    "x = 1\n",
    "from .local import thing\nfrom typing import *\ny = thing\n",
]
MORE_ADDITIONS = [
    ("torch", None, None, 0),
    ("numpy", None, "np", 0),
    ("torch", "Tensor", None, 0),
    ("torch", "nn", "tnn", 0),
    ("typing", "Any", None, 0),
    ("__future__", "annotations", None, 0),
    ("..modeling_utils", "Mixin", None, 0),
    ("local", "other", None, 1),
]
MORE_REMOVALS = [
    ("torch", "nn", None),
    ("torch", "Tensor", None),
    ("torch", None, None),
    (".local", "thing", None),
]


@pytest.mark.parametrize("source", SOURCES_WITHOUT_DOCSTRING)
@pytest.mark.parametrize("count", [1, 3, len(MORE_ADDITIONS)])
def test_additions_match_libcst_on_other_layouts(source, count):
    adds = MORE_ADDITIONS[:count]
    assert _fast(source, adds, []) == _libcst(source, adds, [])
    assert _fast(source, adds, MORE_REMOVALS) == _libcst(source, adds, MORE_REMOVALS)


def test_removal_keeps_exported_annotated_and_dotted_uses():
    text = _fast(SOURCE, [], REMOVALS)
    assert "Optional" in text.split("\n", 3)[1]  # string annotation
    assert "import torch\n" in text and "import numpy" not in text and "defaultdict" not in text
    assert "import os" not in text and "from torch import nn" in text


def test_descent_prunes_only_for_statement_hooks():
    class Statements:
        def leave_ClassDef(self, original, updated): ...

    class Assignments:
        def leave_Assign(self, original, updated): ...

    class Expressions:
        def leave_Call(self, original, updated): ...

    assert descent_for_hooks([Statements]) == STATEMENT_CONTAINERS
    assert descent_for_hooks([Assignments]) == (*STATEMENT_CONTAINERS, cst.SimpleStatementLine)
    assert descent_for_hooks([Expressions]) is None


def test_qualified_name_through_imports():
    module = cst.parse_module(
        "import torch\nimport torch.nn as tnn\nfrom torch import nn\nfrom torch.nn import Linear\n"
    )
    imports = module_imports(module)
    for text in ("torch.nn.Linear", "tnn.Linear", "nn.Linear", "Linear"):
        assert qualified_name(cst.parse_expression(text), imports) == "torch.nn.Linear"
    assert qualified_name(cst.parse_expression("other.Linear"), imports) is None
