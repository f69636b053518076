"""NXS010: the token embedding becomes a vocabulary-parallel `ParallelEmbedding`.

Rank r holds rows `[r V/T, (r+1) V/T)` of the table; ids outside its range contribute zeros and the
partial outputs are summed over the TP group, or, with sequence parallelism, reduce-scattered into the
sequence-first shard `(S/T, B, D)` the rest of the model works on. The arguments of the source call
(sizes, `padding_idx`) are kept as written; the layer gets the init method every parallel layer uses,
the sequence-parallel flag and the config's dtype. This rule also emits the file's one `_init_normal`
helper that every later parallel-layer rule refers to.
"""

from __future__ import annotations

import libcst as cst

from ..blueprint import LayerSite, Role
from ..errors import ScaffoldError
from . import _parallel_code as pc
from ._edits import argument_text, config_parameter, find_method, rewrite_assigned_call
from .base import Rule, stored_example

EMBEDDING_CLASS = "ParallelEmbedding"


def embedding_sites(sites: tuple[LayerSite, ...]) -> list[LayerSite]:
    """The layer sites the Blueprint gives the token-embedding role."""
    return [site for site in sites if site.role is Role.EMBEDDING]


class ParallelEmbeddingRule(Rule):
    CODE = "NXS010"
    NAME = "parallel-embedding"
    SUMMARY = "token embedding -> ParallelEmbedding (vocab-sharded, SP output, init from initializer_range)"
    EXAMPLES = (stored_example(CODE, "llama", "LlamaModel"),)

    def leave_ClassDef(self, original_node: cst.ClassDef, updated_node: cst.ClassDef) -> cst.ClassDef:
        sites = [
            site for site in embedding_sites(self.blueprint.sites) if site.owner == updated_node.name.value
        ]
        if not sites:
            return updated_node
        init = find_method(updated_node, "__init__")
        if init is None:
            raise ScaffoldError(
                f"{self.CODE}: {sites[0].location}: {updated_node.name.value} has no __init__"
            )
        config = config_parameter(init, self.CODE)
        for site in sites:
            init = _replace_constructor(init, site, config, self.CODE)
        pc.schedule_layer_imports(self.context, (pc.NXD_LAYERS, EMBEDDING_CLASS))
        return pc.with_method(updated_node, init)

    def leave_Module(self, original_node: cst.Module, updated_node: cst.Module) -> cst.Module:
        if embedding_sites(self.blueprint.sites):
            return pc.ensure_init_helper(updated_node)
        return updated_node


def _replace_constructor(init: cst.FunctionDef, site: LayerSite, config: str, rule: str) -> cst.FunctionDef:
    def parallel(call: cst.Call) -> cst.BaseExpression:
        arguments = [argument_text(arg) for arg in call.args]
        return cst.parse_expression(
            pc.layer_call(EMBEDDING_CLASS, arguments, config, sequence_dimension=False)
        )

    result, replaced = rewrite_assigned_call(init, site.attribute, parallel)
    if not replaced:
        raise ScaffoldError(f"{rule}: {site.location}: no `self.{site.attribute} = {site.source}` to convert")
    return result
