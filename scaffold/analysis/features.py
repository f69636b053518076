"""Behaviour the generated model must keep, each feature traced to the source or the config class.

Biases are the bias expressions of the projections; scales are constant factors the dataflow shows
applied to the embedding output, to the residual branches and to the logits; logit softcapping is a
factor applied after a `tanh` of the logits. Defaults come from instantiating the config class.
"""

from __future__ import annotations

import ast

import libcst as cst

from ..blueprint import (
    AttentionGeometry,
    Backbone,
    ConfigField,
    Expr,
    Features,
    LayerSite,
    MLPBlock,
    NormScope,
    NormSite,
    Scale,
)
from .constructors import ChildKind
from .context import Context, decoder_layer_class
from .dataflow import ScaleStep, sources
from .expressions import substitute, to_expr
from .parsing import SourceIndex


def features(
    context: Context,
    sites: list[LayerSite],
    norms: list[NormSite],
    geometries: list[AttentionGeometry],
    mlps: list[MLPBlock],
    backbone: Backbone,
) -> Features:
    """Summarise the model's features."""
    by_path = {site.path: site for site in sites}
    attention = geometries[0] if geometries else None
    mlp = mlps[0] if mlps else None

    def bias(prefix: str | None, attr: str | None) -> Expr | None:
        site = by_path.get(f"{prefix}.{attr}") if prefix and attr else None
        return site.bias if site is not None else None

    attention_norms = {norm.scope for norm in norms if norm.normalises}
    qk_norm = (
        "full_width"
        if NormScope.FULL_WIDTH in attention_norms
        else "head_rows"
        if NormScope.HEAD_ROWS in attention_norms
        else "per_head"
        if NormScope.PER_HEAD in attention_norms
        else "none"
    )
    softcap, logits_scale = _logit_scales(context, backbone)
    config = context.default_config
    return Features(
        qkv_bias=bias(attention.path, attention.q) if attention else None,
        o_bias=bias(attention.path, attention.o) if attention else None,
        mlp_bias=bias(mlp.path, mlp.gate or mlp.up) if mlp else None,
        qk_norm=qk_norm,
        sliding_window=attention.sliding_window if attention else None,
        attention_softcap=attention.softcap if attention else None,
        final_logit_softcap=softcap,
        attention_scaling=attention.scaling if attention else None,
        partial_rotary=_partial_rotary(context),
        embedding_scale=_embedding_scale(context, backbone),
        residual_scales=tuple(_residual_scales(context)),
        logits_scale=logits_scale,
        tie_word_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
        tied_weights_keys=_tied_weights_keys(context),
        explicit_head_dim="head_dim" in context.config.init_parameters,
        norm_kinds=tuple(sorted({norm.kind for norm in norms})),
        activation=mlp.activation if mlp else None,
        rotary=backbone.rotary is not None,
        mlp="none" if mlp is None else "gated" if mlp.gate else "plain",
    )


def _scale(context: Context, class_name: str, step: ScaleStep, applies_to: str) -> Scale:
    analysis = context.classes[class_name]
    flow = analysis.forward
    assert flow is not None
    paths = [instance for instance in context.tree.instances if instance.class_name == class_name]
    scope = paths[0].scope if paths else None
    resolved = to_expr(substitute(step.factor, flow.local_scope), scope)
    return Scale(
        owner=class_name,
        applies_to=applies_to,
        op=step.op,
        factor=Expr(SourceIndex.code(step.factor), resolved.resolved, resolved.variables),
        location=context.index.location(step.node),
    )


def _embedding_scale(context: Context, backbone: Backbone) -> Scale | None:
    base = context.classes.get(backbone.stack_class or context.source.base_model_class)
    if base is None or base.forward is None or backbone.embedding is None:
        return None
    attribute = backbone.embedding.rsplit(".", 1)[-1]
    for step in base.forward.scales:
        if attribute in sources(step.inputs):
            return _scale(context, base.facts.name, step, attribute)
    return None


def _residual_scales(context: Context) -> list[Scale]:
    layer_class = decoder_layer_class(context)
    if layer_class is None:
        return []
    analysis = context.classes[layer_class]
    if analysis.forward is None:
        return []
    children = {attr for attr, c in analysis.constructs.items() if c.kind is ChildKind.CLASS}
    found: list[Scale] = []
    for step in analysis.forward.scales:
        scaled = sorted(sources(step.inputs) & children)
        if scaled:
            found.append(_scale(context, layer_class, step, scaled[-1]))
    return found


def _logit_scales(context: Context, backbone: Backbone) -> tuple[Expr | None, Scale | None]:
    """(final-logit softcap factor, other logits scale): softcap is a factor applied after tanh."""
    head = context.classes.get(context.source.causal_lm_class)
    if head is None or head.forward is None or backbone.lm_head is None:
        return None, None
    attribute = backbone.lm_head.rsplit(".", 1)[-1]
    steps = [step for step in head.forward.scales if attribute in sources(step.inputs)]
    softcap_steps = [
        step
        for step in steps
        if step.op == "*" and any(o.activated for o in step.inputs if o.source == attribute)
    ]
    softcap = _scale(context, head.facts.name, softcap_steps[0], attribute).factor if softcap_steps else None
    for step in steps:
        if step in softcap_steps:
            continue
        scale = _scale(context, head.facts.name, step, attribute)
        if softcap is not None and scale.factor.source == softcap.source:
            continue
        return softcap, scale
    return softcap, None


def _partial_rotary(context: Context) -> Expr | None:
    if "partial_rotary_factor" in context.config.init_parameters or hasattr(
        context.default_config, "partial_rotary_factor"
    ):
        return Expr("config.partial_rotary_factor", "config.partial_rotary_factor")
    return None


def _tied_weights_keys(context: Context) -> tuple[str, ...]:
    analysis = context.classes.get(context.source.causal_lm_class)
    if analysis is None:
        return ()
    value = analysis.facts.class_attributes.get("_tied_weights_keys")
    if value is None:
        return ()
    try:
        keys = ast.literal_eval(SourceIndex.code(value))
    except (ValueError, SyntaxError):
        return ()
    return tuple(str(key) for key in keys)


def config_fields(context: Context) -> list[ConfigField]:
    """Config attributes the kept source reads, with their defaults."""
    names: set[str] = set()
    for node in context.index.nodes:
        if isinstance(node, cst.Attribute) and _is_config(node.value):
            names.add(node.attr.value)
        elif (
            isinstance(node, cst.Call)
            and isinstance(node.func, cst.Name)
            and node.func.value in {"getattr", "hasattr"}
            and len(node.args) >= 2
            and _is_config(node.args[0].value)
            and isinstance(node.args[1].value, cst.SimpleString)
        ):
            names.add(str(node.args[1].value.evaluated_value))
    config = context.default_config
    found: list[ConfigField] = []
    for name in sorted(names):
        if name.startswith("_") or callable(getattr(config, name, None)):
            continue
        default = repr(getattr(config, name)) if hasattr(config, name) else "<unset>"
        found.append(ConfigField(name, default))
    return found


def _is_config(node: cst.BaseExpression) -> bool:
    if isinstance(node, cst.Name):
        return node.value == "config"
    return (
        isinstance(node, cst.Attribute) and node.attr.value == "config" and isinstance(node.value, cst.Name)
    )
