"""NXS003: the generated file lives in the training host's package, not in transformers.

Its relative imports would resolve against the host (`..config` is the host's `TrainingNeuronConfig`
module), so every relative import of the source becomes the absolute `transformers.` import it meant,
resolved against the source's package (`Blueprint.source_package`):
`from ...activations import ACT2FN` -> `from transformers.activations import ACT2FN` and
`from .configuration_llama import LlamaConfig` -> `from transformers.models.llama.configuration_llama ...`.
Imports nothing uses any more go at the end (NXS030).
"""

from __future__ import annotations

import libcst as cst

from ..syntax import absolute_name, dotted
from .base import Rule, stored_example


class AbsoluteTransformersImports(Rule):
    CODE = "NXS003"
    NAME = "absolute-transformers-imports"
    SUMMARY = "relative imports of the source -> absolute transformers imports"
    ADVICE = (
        "Disable it only for a file that stays inside transformers' package, where its relative imports still "
        "resolve."
    )
    EXAMPLES = (stored_example(CODE, "llama", "<imports>"),)

    def visit_SimpleStatementLine(self, node: cst.SimpleStatementLine) -> bool:
        # imports are statements of their own: nothing to look at inside other statements' expressions
        return any(isinstance(small, cst.Import | cst.ImportFrom) for small in node.body)

    def leave_ImportFrom(self, original_node: cst.ImportFrom, updated_node: cst.ImportFrom) -> cst.ImportFrom:
        level = len(updated_node.relative)
        if not level:
            return updated_node
        module = dotted(updated_node.module) if updated_node.module is not None else None
        relative = "." * level + (module or "")
        try:
            module = absolute_name(relative, self.blueprint.source_package)
        except ValueError:  # refused in analysis (R016); reached only with --allow-unsupported
            return updated_node
        return updated_node.with_changes(
            relative=[], module=cst.parse_expression(module), whitespace_after_from=cst.SimpleWhitespace(" ")
        )
