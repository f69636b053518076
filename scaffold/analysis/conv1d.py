"""transformers' `Conv1D` read as the `nn.Linear` it computes (what analysis and the rules both work on).

`Conv1D(nf, nx)` (transformers.pytorch_utils) is a linear from `nx` to `nf` features whose weight is
stored transposed, `[nx, nf]`, and applied as `x @ W + b`. Built as `self.<attr> = Conv1D(nf, nx)` in a
constructor, it is read here as `nn.Linear(nx, nf)`: the rules then give it its parallel form like any
linear, and the generated model's weight is `[nf, nx]`. The checkpoint still holds `[nx, nf]`: each such
linear is recorded `(class, attribute)`, and its weight is transposed on loading and back on saving
(NXS027's `TransposedSourceFusedLinearSpec`, with any split of the linear into parts). A `Conv1D` built
any other way stays as written and is refused (R002). Nothing here names a model: only the class that
transformers' `pytorch_utils` defines.
"""

from __future__ import annotations

from dataclasses import dataclass

import libcst as cst

from ..blueprint import Location
from ..syntax import absolute_name, code, dotted, self_attribute
from .cross_attention import line_in_class

CONV1D = "transformers.pytorch_utils.Conv1D"


@dataclass(frozen=True)
class TransposedLinear:
    """`owner.attribute`, built as `Conv1D(out_features, ...)` at `location`."""

    owner: str
    attribute: str
    out_features: str  # in constructor terms
    location: Location


def read_conv1d_as_linear(
    module: cst.Module, package: str, display_path: str, text: str | None = None
) -> tuple[cst.Module, tuple[TransposedLinear, ...]]:
    """`module` with each `self.<attr> = Conv1D(nf, nx)` of a constructor read as `nn.Linear(nx, nf)`,
    and those linears in source order (located in the file's `text`, default the module's)."""
    names = _conv1d_names(module, package)
    if not names:
        return module, ()
    linear = "nn.Linear" if _binds_nn(module) else "torch.nn.Linear"
    reader = _Read(
        names, cst.parse_expression(linear), text if text is not None else module.code, display_path
    )
    return module.visit(reader), tuple(reader.found)


def _conv1d_names(module: cst.Module, package: str) -> set[str]:
    """The names the module binds to transformers' Conv1D by `from <...>pytorch_utils import Conv1D`."""
    found: set[str] = set()
    for statement in module.body:
        if not isinstance(statement, cst.SimpleStatementLine):
            continue
        for small in statement.body:
            if not isinstance(small, cst.ImportFrom) or isinstance(small.names, cst.ImportStar):
                continue
            written = "." * len(small.relative) + (dotted(small.module) or "" if small.module else "")
            try:
                origin = absolute_name(written, package)
            except ValueError:
                continue
            for alias in small.names:
                if f"{origin}.{dotted(alias.name)}" == CONV1D:
                    bound = alias.asname.name if alias.asname is not None else alias.name
                    found.add(dotted(bound) or "")  # type: ignore[arg-type]
    return found - {""}


def _binds_nn(module: cst.Module) -> bool:
    """Whether the module binds `torch.nn` as `nn` (`from torch import nn`, `import torch.nn as nn`)."""
    for statement in module.body:
        for small in statement.body if isinstance(statement, cst.SimpleStatementLine) else ():
            if isinstance(small, cst.ImportFrom) and not isinstance(small.names, cst.ImportStar):
                from_torch = (
                    small.module is not None and dotted(small.module) == "torch" and not small.relative
                )
                if from_torch and any(dotted(a.name) == "nn" and a.asname is None for a in small.names):
                    return True
            elif isinstance(small, cst.Import):
                for alias in small.names:
                    asname = dotted(alias.asname.name) if alias.asname is not None else None  # type: ignore[arg-type]
                    if dotted(alias.name) == "torch.nn" and asname == "nn":
                        return True
    return False


class _Read(cst.CSTTransformer):
    def __init__(
        self,
        names: set[str],
        linear: cst.BaseExpression,
        text: str,
        display_path: str,
    ) -> None:
        super().__init__()
        self.names = names
        self.linear = linear
        self.text = text
        self.display_path = display_path
        self.found: list[TransposedLinear] = []
        self._classes: list[str] = []
        self._methods: list[str] = []

    def visit_ClassDef(self, node: cst.ClassDef) -> None:
        self._classes.append(node.name.value)

    def leave_ClassDef(self, original_node: cst.ClassDef, updated_node: cst.ClassDef) -> cst.ClassDef:
        self._classes.pop()
        return updated_node

    def visit_FunctionDef(self, node: cst.FunctionDef) -> None:
        self._methods.append(node.name.value)

    def leave_FunctionDef(
        self, original_node: cst.FunctionDef, updated_node: cst.FunctionDef
    ) -> cst.FunctionDef:
        self._methods.pop()
        return updated_node

    def leave_Assign(self, original_node: cst.Assign, updated_node: cst.Assign) -> cst.Assign:
        if not self._classes or self._methods[-1:] != ["__init__"] or len(updated_node.targets) != 1:
            return updated_node
        attribute = self_attribute(updated_node.targets[0].target)
        value = updated_node.value
        if (
            attribute is None
            or not isinstance(value, cst.Call)
            or dotted(value.func) not in self.names
            or len(value.args) != 2
            or any(arg.keyword is not None or arg.star for arg in value.args)
        ):
            return updated_node
        nf, nx = value.args
        line = line_in_class(self.text, self._classes[-1], code(original_node))
        location = Location(self.display_path, line)
        self.found.append(TransposedLinear(self._classes[-1], attribute, code(nf.value), location))
        args = [nx.with_changes(comma=nf.comma), nf.with_changes(comma=nx.comma)]
        return updated_node.with_changes(value=value.with_changes(func=self.linear, args=args))
