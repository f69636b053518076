"""Analysis: read a transformers modeling file and its config class into a `Blueprint`.

`analyze(source)` is pure apart from reading the file and instantiating the config class for its
defaults; the same input always gives the same Blueprint.
"""

from __future__ import annotations

import dataclasses

import libcst as cst

from ..blueprint import Blueprint, ClassPlan, LayerKind, Role
from ..source import ModelSource, locate
from .cache_forwarding import cache_forwarding
from .classes import ClassFacts, config_parameter
from .constructors import TORCH_NORMS, ChildKind, classify
from .context import Context, gather
from .features import config_fields, features
from .head_bias import head_biases
from .moe import moe_blocks
from .norms import with_head_rows
from .plumbing import code_style, eager_function, init_std_field, mask_builders
from .preconditions import preconditions
from .refusals import detect, learnable_activations
from .sites import attention_geometries, backbone, layer_sites, mlp_blocks, norm_sites, parameter_sites
from .source_fusions import ReadSource


def analyze(source: ModelSource, read: ReadSource | None = None) -> Blueprint:
    """Build the Blueprint of the model at `source` (ScaffoldError on unreadable or unparsable input);
    `read` is `read_source(source)` where the caller has it already (the rules run on its module)."""
    context = gather(source, read)
    sites, role_refusals = layer_sites(context)
    moe = moe_blocks(context)
    # A recognised block's router is NxD's RouterTopK (replicated): no role to decide for it.
    routers = {site.location for site in sites if site.path in moe.routers}
    role_refusals = [refusal for refusal in role_refusals if refusal.location not in routers]
    sites = [
        dataclasses.replace(site, role=Role.REPLICATED, evidence="router of a sparse MoE block (NXS040)")
        if site.path in moe.routers
        else site
        for site in sites
    ]
    norms = norm_sites(context)
    geometries = [
        dataclasses.replace(geometry, eager_function=eager_function(context, geometry.owner))
        for geometry in attention_geometries(context, norms)
    ]
    norms = with_head_rows(norms, geometries, context.default_config)
    mlps = mlp_blocks(context)
    skeleton = backbone(context, sites, norms)
    blueprint = Blueprint(
        model_type=source.model_type,
        transformers_version=source.transformers_version,
        source_file=source.display_path,
        config_class=source.config.class_name,
        base_model_class=source.base_model_class,
        causal_lm_class=source.causal_lm_class,
        tp_plan=tuple(context.tp_plan.items()),
        backbone=skeleton,
        classes=tuple(_class_plans(context)),
        functions=tuple(name for name in context.closure if name in context.mapping.functions),
        sites=tuple(sites),
        norms=tuple(norms),
        parameters=tuple(parameter_sites(context)),
        attention=tuple(geometries),
        mlps=tuple(mlps),
        moe=moe.blocks,
        features=features(context, sites, norms, geometries, mlps, skeleton),
        config_fields=tuple(config_fields(context)),
        refusals=(),
        source_package=source.package,
        mask_builders=mask_builders(context),
        style=code_style(context),
        init_std=init_std_field(context),
        fusions=context.fusions,
        cross_attention=context.cross_attention,
        input_guards=context.guards,
        learnable_activations=tuple(
            key for key, refusal in learnable_activations(context, tuple(mlps)) if refusal is None
        ),
        cache=cache_forwarding(context.index.module),
        head_biases=head_biases(context, skeleton.stack_class, geometries),
    )
    refusals = [
        # one line each: messages quote source, and they end up in comments (`TODO(<code>)` markers)
        dataclasses.replace(refusal, message=" ".join(refusal.message.split()))
        for refusal in role_refusals
        + list(moe.refusals)
        + detect(
            context,
            sites,
            norms,
            geometries,
            frozenset(block.owner for block in moe.blocks) | moe.refused | moe.owned,
            tuple(mlps),
        )
        + preconditions(context, blueprint)
    ]
    refusals.sort(key=lambda refusal: (refusal.location.line, refusal.code, refusal.message))
    return dataclasses.replace(blueprint, refusals=tuple(refusals))


def analyze_model_type(model_type: str) -> Blueprint:
    """The Blueprint of the installed transformers' `model_type` (reads the facts cache, not torch):
    `scaffold list` and `scaffold inspect` read its `refusals`."""
    return analyze(locate(model_type))


def _class_plans(context: Context) -> list[ClassPlan]:
    plans: list[ClassPlan] = []
    for name in context.closure:
        analysis = context.classes.get(name)
        if analysis is None:
            continue
        children = tuple(
            (attr, construct.qualified or construct.kind.value)
            for attr, construct in analysis.constructs.items()
        )
        plans.append(
            ClassPlan(
                name=name,
                kind=analysis.kind,
                bases=analysis.facts.bases,
                children=children,
                paths=tuple(context.tree.paths_of(name)),
                location=context.index.location(analysis.facts.node),
                config_parameter=config_parameter(analysis.facts, context.source.config.class_name),
                torch_norm_base=_torch_norm_base(analysis.facts.node, context),
                optional_linears=_optional_linears(analysis.facts, context),
            )
        )
    return plans


def _optional_linears(facts: ClassFacts, context: Context) -> tuple[str, ...]:
    """Attributes built as a linear on one arm and `None` on the other: the tree keeps them as written
    (replicated), so the rules that act on replicated parameters in the sequence-parallel region see them."""
    found: list[str] = []
    for attribute in dict.fromkeys(assign.attribute for assign in facts.assigns):
        built, last = facts.module_assign(attribute), facts.last_assign(attribute)
        if built is None or built is last:
            continue
        construct = classify(built.value, context.index, context.mapping)
        if construct.kind is ChildKind.LAYER and construct.layer_kind is LayerKind.LINEAR:
            found.append(attribute)
    return tuple(found)


def _torch_norm_base(node: cst.ClassDef, context: Context) -> str | None:
    """The torch norm class `node` subclasses directly (`nn.LayerNorm`), qualified, or None."""
    for base in node.bases:
        for name in sorted(context.index.qualified_names(base.value)):
            if name in TORCH_NORMS:
                return name
    return None


__all__ = ["analyze", "analyze_model_type"]
