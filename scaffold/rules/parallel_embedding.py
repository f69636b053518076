"""NXS010: the token embedding becomes a vocabulary-parallel `ParallelEmbedding`.

Rank r holds rows `[r V/T, (r+1) V/T)` of the table; ids outside its range contribute zeros and the
partial outputs are summed over the TP group, or, with sequence parallelism, reduce-scattered into the
sequence-first shard `(S/T, B, D)` the rest of the model works on. The arguments of the source call
(sizes, `padding_idx`) are kept as written; the layer gets the init method every parallel layer uses,
the sequence-parallel flag and the config's dtype (template `parallel_embedding`).
"""

from __future__ import annotations

import libcst as cst

from ..blueprint import LayerSite, Role
from ..syntax import find_method, rewrite_assigned_call, with_method
from . import layer_code
from .base import Rule, stored_example, with_todo

EMBEDDING_CLASS = "ParallelEmbedding"


def embedding_sites(sites: tuple[LayerSite, ...]) -> list[LayerSite]:
    """The layer sites the Blueprint gives the token-embedding role."""
    return [site for site in sites if site.role is Role.EMBEDDING]


class ParallelEmbeddingRule(Rule):
    CODE = "NXS010"
    NAME = "parallel-embedding"
    SUMMARY = "token embedding -> ParallelEmbedding (vocab-sharded, SP output, init from initializer_range)"
    ADVICE = (
        "Disable it (with NXS012, which builds on the sharded embedding's layout) to keep a replicated "
        "embedding."
    )
    REQUIRES = ("NXS004",)
    EXAMPLES = (stored_example(CODE, "llama", "LlamaModel"),)

    def visit_FunctionDef(self, node: cst.FunctionDef) -> bool:
        return False  # the rule rewrites whole classes: nothing to visit inside a method

    def leave_ClassDef(self, original_node: cst.ClassDef, updated_node: cst.ClassDef) -> cst.ClassDef:
        name = updated_node.name.value
        sites = [site for site in embedding_sites(self.blueprint.sites) if site.owner == name]
        if not sites:
            return updated_node
        refusal = self.refusal_for(name)
        if refusal is not None:
            return with_todo(updated_node, refusal)
        init = find_method(updated_node, "__init__")
        assert init is not None, "checked in analysis (R017)"
        config = self.config_parameter(name)
        for site in sites:
            init, _ = rewrite_assigned_call(init, site.attribute, lambda call: self._parallel(call, config))
        return with_method(updated_node, layer_code.with_init_method(self, init, config))

    def leave_Module(self, original_node: cst.Module, updated_node: cst.Module) -> cst.Module:
        if embedding_sites(self.blueprint.sites):
            return layer_code.with_init_helper(self, updated_node)
        return updated_node

    def _parallel(self, call: cst.Call, config: str) -> cst.Call:
        keywords = layer_code.layer(self, "parallel_embedding", config)
        return layer_code.with_source_arguments(keywords, call)
