"""NXS003: the generated file lives in the training host's package, not in transformers.

Its relative imports would resolve against the host (`..config` is the host's `TrainingNeuronConfig`
module), so every relative import of the source becomes the absolute `transformers.` import it meant:
`from ...activations import ACT2FN` -> `from transformers.activations import ACT2FN` and
`from .configuration_llama import LlamaConfig` -> `from transformers.models.llama.configuration_llama ...`.
Imports the pruned and cache-free module no longer uses are removed.
"""

from __future__ import annotations

import libcst as cst

from ..blueprint import Blueprint
from ..errors import ScaffoldError
from ._edits import dotted
from ._imports import schedule_removal
from .base import Rule, stored_example


def source_package(blueprint: Blueprint) -> str:
    """The dotted package the source file's relative imports resolve against.

    Stop-gap (the Blueprint does not carry it): read from the display path when it lies inside
    transformers (`transformers/models/llama/modeling_llama.py` -> `transformers.models.llama`), else
    the package transformers keeps the model type in.
    """
    parts = blueprint.source_file.replace("\\", "/").split("/")
    if parts[0] == "transformers" and len(parts) > 1:
        return ".".join(parts[:-1])
    return f"transformers.models.{blueprint.model_type}"


def absolute_module(package: str, level: int, module: str | None) -> str:
    """`from <level dots><module>` resolved against `package` (ScaffoldError above the top package)."""
    parts = package.split(".")
    if level - 1 >= len(parts):
        raise ScaffoldError(f"NXS003: a relative import with {level} dots leaves the package {package}")
    base = parts[: len(parts) - (level - 1)]
    return ".".join([*base, module] if module else base)


class AbsoluteTransformersImports(Rule):
    CODE = "NXS003"
    NAME = "absolute-transformers-imports"
    SUMMARY = "relative imports of the source -> absolute transformers imports; unused imports removed"
    EXAMPLES = (stored_example(CODE, "llama", "<imports>"),)

    def visit_Module(self, node: cst.Module) -> None:
        self._package = source_package(self.blueprint)

    def leave_ImportFrom(self, original_node: cst.ImportFrom, updated_node: cst.ImportFrom) -> cst.ImportFrom:
        level = len(updated_node.relative)
        module = dotted(updated_node.module) if updated_node.module is not None else None
        if level:
            module = absolute_module(self._package, level, module)
            updated_node = updated_node.with_changes(
                relative=[],
                module=cst.parse_expression(module),
                whitespace_after_from=cst.SimpleWhitespace(" "),
            )
        if module is not None and not isinstance(updated_node.names, cst.ImportStar):
            for alias in updated_node.names:
                schedule_removal(self.context, module, alias.evaluated_name, alias.evaluated_alias)
        return updated_node

    def leave_Import(self, original_node: cst.Import, updated_node: cst.Import) -> cst.Import:
        for alias in updated_node.names:
            schedule_removal(self.context, alias.evaluated_name, None, alias.evaluated_alias)
        return updated_node
