"""NXS010: the token embedding becomes a vocabulary-parallel `ParallelEmbedding`.

Rank r holds rows `[r V/T, (r+1) V/T)` of the table; ids outside its range contribute zeros and the
partial outputs are summed over the TP group, or, with sequence parallelism, reduce-scattered into the
sequence-first shard `(S/T, B, D)` the rest of the model works on. The arguments of the source call
(sizes, `padding_idx`) are kept as written; the layer gets the init method every parallel layer uses,
the sequence-parallel flag and the config's dtype (template `parallel_embedding`).

A token embedding built from a local subclass of `nn.Embedding` that only scales the lookup (a scaled
word embedding, checked in analysis: R012 otherwise) keeps its class: the class derives from
`ParallelEmbedding` instead and its `__init__` passes the parallel keywords on to the parent's
(`**parallel_kwargs`); the factor then applies to the parallel lookup's output, whatever its layout.
"""

from __future__ import annotations

import libcst as cst
import libcst.matchers as m

from ..blueprint import Blueprint, LayerSite, Role
from ..patterns import SUPER_INIT_CALL
from ..syntax import find_method, fresh_name, names_in, rewrite_assigned_call, with_method
from . import layer_code
from .base import Rule, stored_example, with_todo

EMBEDDING_CLASS = "ParallelEmbedding"
PARALLEL_KWARGS = "parallel_kwargs"  # what a rebased embedding subclass passes on to ParallelEmbedding


def embedding_sites(sites: tuple[LayerSite, ...]) -> list[LayerSite]:
    """The layer sites the Blueprint gives the token-embedding role."""
    return [site for site in sites if site.role is Role.EMBEDDING]


def embedding_subclasses(blueprint: Blueprint) -> set[str]:
    """The local classes the token embedding is built from (scaled lookups: the rule rebases them)."""
    local = {plan.name for plan in blueprint.classes}
    return {site.constructor for site in embedding_sites(blueprint.sites) if site.constructor in local}


class ParallelEmbeddingRule(Rule):
    CODE = "NXS010"
    NAME = "parallel-embedding"
    SUMMARY = (
        "token embedding -> ParallelEmbedding (vocab-sharded, SP output, init from initializer_range); a "
        "scaled-lookup subclass of nn.Embedding derives from ParallelEmbedding"
    )
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
        if name in embedding_subclasses(self.blueprint):
            return self._rebased(updated_node)
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
            init, _ = rewrite_assigned_call(
                init, site.attribute, lambda call, site=site: self._parallel(call, config, site)
            )
        return with_method(updated_node, layer_code.with_init_method(self, init, config))

    def leave_Module(self, original_node: cst.Module, updated_node: cst.Module) -> cst.Module:
        if embedding_sites(self.blueprint.sites):
            return layer_code.with_init_helper(self, updated_node)
        return updated_node

    def _parallel(self, call: cst.Call, config: str, site: LayerSite) -> cst.Call:
        keywords = layer_code.layer(self, "parallel_embedding", config)
        if site.constructor in embedding_subclasses(self.blueprint):
            keywords = keywords.with_changes(func=call.func)  # the rebased subclass keeps its name
        return layer_code.with_source_arguments(keywords, call)

    def _rebased(self, cls: cst.ClassDef) -> cst.ClassDef:
        """The scaled-lookup subclass on `ParallelEmbedding`, its `__init__` passing the parallel keywords
        (init method, sequence-parallel flag, dtype) on to the parent's."""
        init = find_method(cls, "__init__")
        assert init is not None and len(cls.bases) == 1, "checked in analysis (R012)"
        # ParallelEmbedding's import comes with the embedding site's call (template `parallel_embedding`)
        kwargs = fresh_name(PARALLEL_KWARGS, names_in(init))
        spread = cst.Arg(value=cst.Name(kwargs), star="**")

        class _PassOn(cst.CSTTransformer):
            def leave_Call(self, original: cst.Call, updated: cst.Call) -> cst.Call:
                if not m.matches(original, SUPER_INIT_CALL):
                    return updated
                args = list(updated.args)
                args[-1] = args[-1].with_changes(comma=cst.Comma(whitespace_after=cst.SimpleWhitespace(" ")))
                return updated.with_changes(args=[*args, spread])

        init = init.visit(_PassOn())
        assert isinstance(init, cst.FunctionDef)
        init = init.with_changes(params=init.params.with_changes(star_kwarg=cst.Param(name=cst.Name(kwargs))))
        bases = [cls.bases[0].with_changes(value=cst.Name(EMBEDDING_CLASS))]
        return with_method(cls.with_changes(bases=bases), init)
