"""The discovery pass: parse, map definitions, build the instance tree and trace every method.

Everything later concerns need is computed here once, per class of the dependency closure: its
children (`constructs`), its projections, the dataflow of each method, and what the forward reveals
(projection roles, attention, feed-forward block). Concern modules read this context; none of them
parses or traces again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import libcst as cst

from ..blueprint import ClassKind, CrossAttentionPruning, InputGuard, LayerKind, SourceFusion
from ..errors import ScaffoldError
from ..facts import ConfigFacts, DefaultConfig
from ..source import ModelSource
from ..syntax import walk
from .attention import AttentionFacts, find_attention
from .classes import ClassFacts, ModuleMap, collect_classes, map_module
from .constructors import ChildKind, Construct, torch_base
from .dataflow import Flow, trace
from .expressions import Scope
from .mlp import MLPFacts, find_mlp
from .norms import norm_classes, per_head_norm_lists
from .parsing import SourceIndex, prune
from .roles import FlowRole, dataflow_roles, is_projection
from .source_fusions import ReadSource, read_source
from .tree import InstanceTree, build_tree, class_constructs

PRETRAINED_BASES = frozenset({"transformers.modeling_utils.PreTrainedModel"})


@dataclass
class ClassAnalysis:
    """Per-class facts derived from its definition and its methods' dataflow."""

    facts: ClassFacts
    constructs: dict[str, Construct]
    projections: frozenset[str]
    flows: dict[str, Flow]
    flow_roles: dict[str, FlowRole] = field(default_factory=dict)
    attention: AttentionFacts | None = None
    mlp: MLPFacts | None = None
    kind: ClassKind = ClassKind.OTHER

    @property
    def forward(self) -> Flow | None:
        """Dataflow of `forward`, if the class has one."""
        return self.flows.get("forward")


@dataclass
class Context:
    """Everything the concern modules read."""

    source: ModelSource
    index: SourceIndex
    mapping: ModuleMap
    closure: list[str]
    classes: dict[str, ClassAnalysis]
    tree: InstanceTree
    norm_kinds: dict[str, str]
    config: ConfigFacts
    default_config: DefaultConfig
    tp_plan: dict[str, str]
    fusions: tuple[SourceFusion, ...] = ()
    cross_attention: CrossAttentionPruning = field(default_factory=CrossAttentionPruning)
    guards: tuple[InputGuard, ...] = ()
    weightless: frozenset[str] = frozenset()  # local classes holding no weights at any depth

    @property
    def display_path(self) -> str:
        """File name used in every location."""
        return self.index.display_path


def gather(source: ModelSource, read: ReadSource | None = None) -> Context:
    """Run the discovery pass over `source` (as `read_source` reads it, or `read` where given)."""
    read = read or read_source(source)
    full, fusions = read.module, read.fusions
    roots = [source.base_model_class, source.causal_lm_class]
    full_map = map_module(full)
    missing = [name for name in roots if name not in full_map.classes]
    if missing:
        defined = ", ".join(sorted(full_map.classes)) or "none"
        raise ScaffoldError(
            f"{source.display_path}: does not define {', '.join(missing)} (classes defined: {defined})",
            hint="the causal-LM and base-model class names come from transformers' auto mapping",
        )
    closure = full_map.closure(roots)
    index = SourceIndex(prune(full, set(closure)), source.display_path, source.package)
    mapping = map_module(index.module)
    facts = collect_classes(mapping, index)
    tree = build_tree(source.causal_lm_class, facts, index, mapping)
    closure_classes = [name for name in closure if name in facts]
    constructs = {name: class_constructs(facts[name], index, mapping) for name in closure_classes}
    kinds = norm_classes({name: facts[name] for name in closure_classes}, index)
    kinds |= per_head_norm_lists(
        {name: facts[name] for name in closure_classes if name not in kinds}, constructs, index
    )
    torch_derived = frozenset(
        name for name in closure_classes if torch_base(name, index, mapping) is not None
    )
    weightless = _weightless(constructs, frozenset(kinds) | torch_derived)
    classes = {
        name: _analyse_class(
            facts[name], constructs[name], kinds, weightless, index, name == source.causal_lm_class
        )
        for name in closure_classes
    }
    config = source.config.defaults()
    context = Context(
        source=source,
        index=index,
        mapping=mapping,
        closure=closure,
        classes=classes,
        tree=tree,
        norm_kinds=kinds,
        config=source.config,
        default_config=config,
        tp_plan=dict(source.config.tp_plan),
        fusions=fusions,
        cross_attention=read.cross_attention,
        guards=read.guards,
        weightless=weightless,
    )
    _assign_kinds(context)
    return context


def class_scope(facts: ClassFacts) -> Scope:
    """Scope of a class on its own (parameters unbound): enough to read shapes' structure."""
    scope = Scope()
    for name, value in facts.init_locals.items():
        scope.names[name] = (value, scope)
    for assign in facts.assigns:
        scope.self_attrs[assign.attribute] = (assign.value, scope)
    return scope


def _weightless(constructs: dict[str, dict[str, Construct]], norms: frozenset[str]) -> frozenset[str]:
    """Local classes holding no weights at any depth (wrapped activations, dropout helpers)."""
    heavy = {
        ChildKind.LAYER,
        ChildKind.TORCH_NORM,
        ChildKind.PARAMETER,
        ChildKind.UNKNOWN_LAYER,
        ChildKind.LIST,
    }
    found: set[str] = set()
    changed = True
    while changed:
        changed = False
        for name, children in constructs.items():
            if name in found or name in norms:
                continue
            if all(
                child.kind not in heavy and (child.kind is not ChildKind.CLASS or child.qualified in found)
                for child in children.values()
            ):
                found.add(name)
                changed = True
    return frozenset(found)


def _analyse_class(
    facts: ClassFacts,
    constructs: dict[str, Construct],
    kinds: dict[str, str],
    weightless: frozenset[str],
    index: SourceIndex,
    head: bool,
) -> ClassAnalysis:
    projections = frozenset(
        attr
        for attr, construct in constructs.items()
        if (kind := _layer_kind(construct)) is not None and is_projection(kind)
    )
    scope = class_scope(facts)
    norm_names = frozenset(kinds)
    flows = {
        name: trace(method, constructs, norm_names, weightless, scope, index, facts.methods)
        for name, method in facts.methods.items()
        if name != "__init__"
    }
    analysis = ClassAnalysis(facts, constructs, projections, flows)
    forward = analysis.forward
    analysis.flow_roles = dataflow_roles(forward, projections, head)
    analysis.attention = find_attention(forward, projections)
    exclude = (
        frozenset({analysis.attention.q, analysis.attention.k, analysis.attention.v, analysis.attention.o})
        if analysis.attention
        else frozenset()
    )
    analysis.mlp = find_mlp(forward, projections, exclude)
    return analysis


def _layer_kind(construct: Construct) -> LayerKind | None:
    """Layer kind of a layer, or of the elements of a list of layers."""
    if construct.kind is ChildKind.LAYER:
        return construct.layer_kind
    element = construct.element
    if construct.kind is ChildKind.LIST and element is not None and element.kind is ChildKind.LAYER:
        return element.layer_kind
    return None


def _assign_kinds(context: Context) -> None:
    source = context.source
    layer_class = decoder_layer_class(context)
    for name, analysis in context.classes.items():
        if name == source.causal_lm_class:
            kind = ClassKind.CAUSAL_LM
        elif name == source.base_model_class:
            kind = ClassKind.BASE_MODEL
        elif name == layer_class:
            kind = ClassKind.DECODER_LAYER
        elif name in context.norm_kinds:
            kind = ClassKind.NORM
        elif analysis.attention is not None:
            kind = ClassKind.ATTENTION
        elif analysis.mlp is not None:
            kind = ClassKind.MLP
        elif _is_rotary(analysis):
            kind = ClassKind.ROTARY
        elif any(
            context.index.qualified_names(base.value) & PRETRAINED_BASES for base in analysis.facts.node.bases
        ):
            kind = ClassKind.PRETRAINED
        elif context.tree.paths_of(name):
            kind = ClassKind.MODULE
        else:
            kind = ClassKind.OTHER
        analysis.kind = kind


def base_instance_path(context: Context) -> str | None:
    """Path of the base model inside the causal LM (its direct child), None when it is not there."""
    for member in context.tree.members:
        construct = member.construct
        is_class = (
            construct.kind is ChildKind.CLASS and construct.qualified == context.source.base_model_class
        )
        if member.owner.parent is None and is_class:
            return member.path
    return None


def decoder_stack(context: Context) -> tuple[str, str] | None:
    """(class, attribute path under the base model) of the module that holds the decoder-layer list: the
    base model itself (path ""), or, one level down, the one child module of the base model that holds it
    (a base model wrapping its decoder, as `self.decoder = Decoder(config)`). None when the causal LM does
    not hold the base model directly (encoder-decoder wrappers) or no such list is found."""
    base = context.classes.get(context.source.base_model_class)
    if base is None or base_instance_path(context) is None:
        return None
    if _layer_list_of(base) is not None:
        return base.facts.name, ""
    holders = [
        (attribute, construct.qualified)
        for attribute, construct in base.constructs.items()
        if construct.kind is ChildKind.CLASS
        and construct.qualified in context.classes
        and _layer_list_of(context.classes[construct.qualified]) is not None
    ]
    if len(holders) != 1:
        return None
    ((attribute, holder),) = holders
    return holder, attribute


def stack_class(context: Context) -> str:
    """The class whose forward embeds the tokens and loops over the decoder layers (the base model, or
    the decoder module it wraps)."""
    stack = decoder_stack(context)
    return stack[0] if stack is not None else context.source.base_model_class


def decoder_layer_list(context: Context) -> tuple[str, Construct] | None:
    """The decoder-layer list: (attribute path under the base model, construct), the first list of
    classes of the stack module (`layers`, or `decoder.layers` one level down).

    None when the causal LM does not hold the base model directly (encoder-decoder wrappers).
    """
    stack = decoder_stack(context)
    if stack is None:
        return None
    holder, prefix = stack
    found = _layer_list_of(context.classes[holder])
    assert found is not None
    attribute, construct = found
    return (f"{prefix}.{attribute}" if prefix else attribute), construct


def _layer_list_of(analysis: ClassAnalysis) -> tuple[str, Construct] | None:
    for attr, construct in analysis.constructs.items():
        element = construct.element
        if construct.kind is not ChildKind.LIST or element is None:
            continue
        if element.kind is ChildKind.CLASS or construct.heterogeneous:
            return attr, construct
    return None


def decoder_layer_class(context: Context) -> str | None:
    """Class of the decoder layers, when the list holds one class."""
    found = decoder_layer_list(context)
    if found is None or found[1].heterogeneous:
        return None
    return found[1].qualified or None


def _is_rotary(analysis: ClassAnalysis) -> bool:
    forward = analysis.facts.forward
    if forward is None:
        return False
    methods = {
        node.func.attr.value
        for node in walk(forward.body)
        if isinstance(node, cst.Call) and isinstance(node.func, cst.Attribute)
    }
    return {"cos", "sin"} <= methods
