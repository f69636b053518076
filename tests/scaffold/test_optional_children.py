"""An optional child module, `None if c else X(...)` or `X(...) if c else None`, reads as the X it builds."""

from __future__ import annotations

from textwrap import dedent

import libcst as cst

from scaffold.analysis.classes import map_module
from scaffold.analysis.constructors import ChildKind, classify
from scaffold.analysis.parsing import SourceIndex

SOURCE = dedent("""
    from torch import nn

    class Shared(nn.Module):
        pass

    class Block(nn.Module):
        def __init__(self, config):
            super().__init__()
            self.a = None if config.size == 0 else Shared(config)
            self.b = Shared(config) if config.size else None
            self.c = Shared(config) if config.size else Shared(config)
            self.d = 4 if config.size else None
""")


def test_an_optional_child_reads_as_the_class_it_builds() -> None:
    module = cst.parse_module(SOURCE)
    index, mapping = SourceIndex(module, "m.py", "transformers.models.m"), map_module(module)
    init = mapping.classes["Block"].body.body[0]
    values = {
        s.body[0].targets[0].target.attr.value: s.body[0].value  # type: ignore[attr-defined]
        for s in init.body.body[1:]  # type: ignore[attr-defined]
    }
    kinds = {name: classify(value, index, mapping) for name, value in values.items()}
    assert (kinds["a"].kind, kinds["a"].qualified) == (ChildKind.CLASS, "Shared")
    assert (kinds["b"].kind, kinds["b"].qualified) == (ChildKind.CLASS, "Shared")
    assert kinds["c"].kind is ChildKind.VALUE  # two children to choose from: not one optional child
    assert kinds["d"].kind is ChildKind.VALUE
