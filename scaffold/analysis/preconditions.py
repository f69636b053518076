"""What each rule relies on, checked before any rule runs: a construct a rule cannot rewrite is a refusal.

The structural refusals (`refusals.detect`) say what a tensor-parallel model cannot be; these say what the
rules cannot rewrite as written (a constructor inherited from a base class, a mask built in a way the
host's builder cannot replace, ...). Each names its subject (the class or function) and the rules that
cannot convert it, so that with `--allow-unsupported` exactly those leave it as written with a
`TODO(<code>)` marker; without it, nothing runs. Where a precondition is "the rewrite leaves nothing
behind", the check runs the rule's own shape helpers on the source (one definition of each shape).
"""

from __future__ import annotations

from collections.abc import Iterator

import libcst as cst

from ..blueprint import AttentionGeometry, Blueprint, Location, NormScope, Refusal, Role
from ..refusal_codes import (
    ATTENTION_DISPATCH,
    ATTENTION_INPUT_SHAPE,
    CACHE_USE,
    CONDITIONAL_MODULE,
    INHERITED_DEFINITION,
    LAYER_LOOP,
    LINEAR_LAYOUT,
    LM_HEAD_FORWARD,
    MASK_BUILDERS,
    NO_CONFIG_PARAMETER,
    NORM_WITHOUT_SP,
    QKV_PROJECTIONS,
    RELATIVE_IMPORT,
    UNFUSABLE_GATE_UP,
    RefusalCode,
)
from ..rules.attention_sequence_parallel import other_shape_reads
from ..rules.attention_variants import projection_calls
from ..rules.base_model_forward import (
    SUPPORTED_MASKS,
    layer_list,
    layer_loop_calls,
    mask_callables,
    spread_without_dict,
)
from ..rules.fused_gate_up import gate_up_calls
from ..rules.kv_cache import CACHE_PARAMETERS, CachePlan, strip_cache
from ..rules.neuron_flash_attention import (
    adds_head_bias,
    attention_call,
    mask_argument,
    mask_block,
    table_dispatch,
)
from ..rules.parallel_linears import LINEAR
from ..rules.sequence_parallel_norms import has_sequence_parallel_form, norm_parameters
from ..rules.trn_config_threading import (
    classes_needing_trn_config,
    config_can_be_added,
    optional_config_always_passed,
)
from ..rules.vocab_parallel_lm_head import (
    calls_transformers_loss,
    logits_statement,
    without_generation_parameters,
)
from ..syntax import (
    absolute_name,
    code,
    find_method,
    index_of_assignment,
    names_in,
    self_calls,
    walk,
)
from .cache_forwarding import cache_functions
from .constructors import ChildKind, classify
from .context import Context
from .mask_options import unguardable_mask_options
from .refusals import _same_value

PARALLEL_RULES = {Role.EMBEDDING: "NXS010", Role.LM_HEAD: "NXS013", Role.COLUMN: "NXS024", Role.ROW: "NXS024"}


def preconditions(context: Context, blueprint: Blueprint) -> list[Refusal]:
    """Every refusal a rule's precondition calls for, one per (code, place, subject)."""
    checks = [
        _relative_imports,
        _cache_uses,
        _constructors,
        _layers_built_here,
        _norms,
        _conditional_modules,
        _base_model,
        _lm_head,
        _gate_up,
        _attention,
        _linears,
    ]
    found = [refusal for check in checks for refusal in check(context, blueprint)]
    return _merged(found)


def _refusal(
    code: RefusalCode, message: str, location: Location, subject: str | None, *rules: str
) -> Refusal:
    return Refusal(code.code, f"{message}; {code.why}", location, subject=subject, rules=tuple(rules))


def _merged(refusals: list[Refusal]) -> list[Refusal]:
    """One refusal per (code, location, subject), naming every rule the others named."""
    merged: dict[tuple[str, Location, str | None], Refusal] = {}
    for refusal in refusals:
        key = (refusal.code, refusal.location, refusal.subject)
        if key in merged:
            rules = tuple(dict.fromkeys((*merged[key].rules, *refusal.rules)))
            merged[key] = Refusal(refusal.code, merged[key].message, refusal.location, refusal.subject, rules)
        else:
            merged[key] = refusal
    return list(merged.values())


# --- NXS003 -------------------------------------------------------------------------------------------


def _relative_imports(context: Context, blueprint: Blueprint) -> Iterator[Refusal]:
    for node in context.index.nodes:
        if isinstance(node, cst.ImportFrom) and node.relative:
            name = "." * len(node.relative) + (code(node.module) if node.module is not None else "")
            try:
                absolute_name(name, blueprint.source_package)
            except ValueError:
                yield _refusal(
                    RELATIVE_IMPORT,
                    f"`from {name} import ...` in package {blueprint.source_package}",
                    context.index.location(node),
                    None,
                    "NXS003",
                )


# --- NXS002 -------------------------------------------------------------------------------------------


def _cache_uses(context: Context, blueprint: Blueprint) -> Iterator[Refusal]:
    mentioning = _mentioning(context.index.module, set(CACHE_PARAMETERS))
    forwarding = blueprint.cache
    for subject, function in cache_functions(context.index.module):
        if subject in forwarding.helpers:
            continue  # NXS002 removes it
        plan = CachePlan(forwarding.aliases_of(subject), forwarding.callees_of(subject))
        if function not in mentioning and not plan.aliases and not plan.callees:
            continue  # the rule leaves a function that names no cache alone
        _, dangling = strip_cache(function, blueprint.mask_builders, plan=plan)
        if dangling:
            yield _refusal(
                CACHE_USE,
                f"{subject} still reads {', '.join(sorted(dangling))} once the cache is removed",
                context.index.location(function),
                subject,
                "NXS002",
            )


def _mentioning(module: cst.Module, names: set[str]) -> set[cst.FunctionDef]:
    """The functions (at any depth) in which one of `names` appears, in one pass over the module."""

    class _Mentions(cst.CSTVisitor):
        def __init__(self) -> None:
            super().__init__()
            self.stack: list[cst.FunctionDef] = []
            self.found: set[cst.FunctionDef] = set()

        def visit_FunctionDef(self, node: cst.FunctionDef) -> None:
            self.stack.append(node)

        def leave_FunctionDef(self, original_node: cst.FunctionDef) -> None:
            self.stack.pop()

        def visit_Name(self, node: cst.Name) -> None:
            if node.value in names:
                self.found.update(self.stack)

    visitor = _Mentions()
    module.visit(visitor)
    return visitor.found


# --- NXS004 and every rule that rewrites a constructor ------------------------------------------------


def _constructors(context: Context, blueprint: Blueprint) -> Iterator[Refusal]:
    """A class that must take `trn_config` defines its own `__init__`, with the model config as a plain
    parameter."""
    needing = classes_needing_trn_config(blueprint)
    for name in sorted(needing):
        analysis = context.classes[name]
        location = context.index.location(analysis.facts.node)
        init = find_method(analysis.facts.node, "__init__")
        if init is None:
            yield _refusal(INHERITED_DEFINITION, f"{name} inherits its __init__", location, name, "NXS004")
        else:
            config = blueprint.class_plan(name).config_parameter
            plain = {param.name.value: param for param in init.params.params}
            parameters = ", ".join(param.name.value for param in init.params.params)
            if config is None and config_can_be_added(context.index.module, name, needing):
                continue  # NXS004 adds it, and the callers pass theirs
            if config is None:
                problem = "takes no config parameter"
            elif config not in plain:
                problem = f"takes `{config}` as a positional-only or keyword-only parameter"
            elif plain[config].default is not None and not optional_config_always_passed(
                context.index.module, name, config, needing
            ):
                problem = f"takes `{config}` as an optional parameter (trn_config would follow a default)"
            else:
                continue
            yield _refusal(
                NO_CONFIG_PARAMETER,
                f"{name}.__init__({parameters}) {problem}",
                context.index.location(init),
                name,
                "NXS004",
            )


def _layers_built_here(context: Context, blueprint: Blueprint) -> Iterator[Refusal]:
    """Every parallel layer is built in its owner's own `__init__` (the rules rewrite that one)."""
    roles = {(site.owner, site.attribute): site.role for site in blueprint.sites}
    for member in context.tree.members:
        construct = member.construct.element if member.construct.kind is ChildKind.LIST else member.construct
        if construct is None or construct.kind is not ChildKind.LAYER:
            continue
        owner = member.owner.class_name
        rule = PARALLEL_RULES.get(roles.get((owner, member.attribute), Role.UNRESOLVED))
        own_init = find_method(context.classes[owner].facts.node, "__init__") is not None
        if rule is not None and own_init and member.assign.defined_in != owner:
            yield _refusal(
                INHERITED_DEFINITION,
                f"{owner}.{member.attribute} is built in the __init__ of a base class of {owner}",
                context.index.location(member.assign.statement),
                owner,
                rule,
            )


# --- NXS011 -------------------------------------------------------------------------------------------

_WEIGHTED = frozenset(
    {ChildKind.LAYER, ChildKind.TORCH_NORM, ChildKind.CLASS, ChildKind.PARAMETER, ChildKind.UNKNOWN_LAYER}
)


def _conditional_modules(context: Context, blueprint: Blueprint) -> Iterator[Refusal]:
    """`self.x = a if c else b` with an arm that builds weights, other than what `constructors.classify`
    reads: the optional norm (a torch norm beside a parameter-free module) and the optional child (a local
    class beside `None`, analysed as that class)."""
    for name in context.closure:
        analysis = context.classes.get(name)
        if analysis is None:
            continue
        for assign in analysis.facts.assigns:
            value = assign.value
            if not isinstance(value, cst.IfExp):
                continue
            construct = classify(value, context.index, context.mapping)
            if construct.optional or construct.kind is ChildKind.CLASS:
                continue
            arms = [classify(arm, context.index, context.mapping) for arm in (value.body, value.orelse)]
            if any(arm.kind in _WEIGHTED for arm in arms):
                yield _refusal(
                    CONDITIONAL_MODULE,
                    f"{name}.{assign.attribute} = {code(value)}",
                    context.index.location(assign.statement),
                    name,
                    "NXS011",
                )


def _norms(context: Context, blueprint: Blueprint) -> Iterator[Refusal]:
    for norm in blueprint.norms:
        if norm.scope is not NormScope.HIDDEN:
            continue
        convertible = has_sequence_parallel_form(blueprint, norm)
        if convertible is False:
            yield _refusal(
                NORM_WITHOUT_SP,
                f"{norm.owner}.{norm.attribute} is a {norm.norm_class}",
                norm.location,
                norm.owner,
                "NXS011",
            )
        elif convertible:
            facts = context.classes[norm.owner].facts
            assign = facts.last_assign(norm.attribute)
            if assign is None or assign.defined_in != norm.owner:
                yield _refusal(
                    INHERITED_DEFINITION,
                    f"{norm.owner}.{norm.attribute} is built in the __init__ of a base class of {norm.owner}",
                    norm.location,
                    norm.owner,
                    "NXS011",
                )
        parameters = norm_parameters(blueprint, norm.norm_class)
        if parameters and norm.norm_class in context.classes:
            yield from _norm_class(context, norm.norm_class, parameters)


def _norm_class(context: Context, name: str, parameters: list[str]) -> Iterator[Refusal]:
    """A norm class creates its parameters in its own `__init__` (the rule marks them there)."""
    facts = context.classes[name].facts
    if not any(assign.attribute in parameters and assign.defined_in == name for assign in facts.assigns):
        yield _refusal(
            INHERITED_DEFINITION,
            f"norm class {name} does not create {', '.join(parameters)} in its own __init__",
            context.index.location(facts.node),
            name,
            "NXS011",
        )


# --- NXS012 -------------------------------------------------------------------------------------------


def _base_model(context: Context, blueprint: Blueprint) -> Iterator[Refusal]:
    name = blueprint.backbone.stack_class or blueprint.base_model_class
    analysis = context.classes[name]
    node = analysis.facts.node
    init, forward = find_method(node, "__init__"), find_method(node, "forward")
    if init is None or forward is None:
        missing = " and ".join(
            method for method, found in (("__init__", init), ("forward", forward)) if not found
        )
        yield _refusal(
            INHERITED_DEFINITION,
            f"{name} inherits its {missing}",
            context.index.location(node),
            name,
            "NXS012",
        )
        return
    location = context.index.location(forward)
    callables = mask_callables(forward, blueprint.mask_builders)
    used = names_in(forward)
    unsupported = (used & set(blueprint.mask_builders)) - SUPPORTED_MASKS
    if unsupported:
        yield _refusal(
            MASK_BUILDERS,
            f"{name}.forward builds masks with {', '.join(sorted(unsupported))}, which the training host "
            f"does not provide",
            location,
            name,
            "NXS012",
        )
    options = unguardable_mask_options(forward)
    if options:
        yield _refusal(
            MASK_BUILDERS,
            f"{name}.forward sets {', '.join(options)} other than in an `if self.config.<flag>:` branch that "
            "only stores them into the mask arguments (NXS014 turns such a branch into a construction error)",
            location,
            name,
            "NXS012",
            "NXS014",
        )
    loose = spread_without_dict(forward, callables)
    if loose:
        yield _refusal(
            MASK_BUILDERS,
            f"{name}.forward passes the mask arguments {', '.join(sorted(loose))} as something else than a "
            "dict literal or a copy of one",
            location,
            name,
            "NXS012",
        )
    calls = [n for n in walk(forward) if isinstance(n, cst.Call) and code(n.func) in callables]
    if used & callables and not calls:
        yield _refusal(
            MASK_BUILDERS,
            f"{name}.forward names mask builders without calling them",
            location,
            name,
            "NXS012",
        )
    layers = layer_list(blueprint.backbone.layers)
    if layers is not None and not layer_loop_calls(forward, layers):
        yield _refusal(
            LAYER_LOOP,
            f"{name}.forward calls no decoder layer inside a loop over self.{layers}",
            location,
            name,
            "NXS012",
        )


# --- NXS013 -------------------------------------------------------------------------------------------


def _lm_head(context: Context, blueprint: Blueprint) -> Iterator[Refusal]:
    heads = [site for site in blueprint.sites if site.role is Role.LM_HEAD]
    for owner in sorted({site.owner for site in heads}):
        node = context.classes[owner].facts.node
        own = [site for site in heads if site.owner == owner]
        forward = find_method(node, "forward")
        if len(own) > 1:
            yield _refusal(
                LM_HEAD_FORWARD, f"{owner} has {len(own)} lm heads", own[1].location, owner, "NXS013"
            )
            continue
        if forward is None or find_method(node, "__init__") is None:
            yield _refusal(
                INHERITED_DEFINITION,
                f"{owner} inherits its __init__ or forward",
                own[0].location,
                owner,
                "NXS013",
            )
            continue
        stripped, left = without_generation_parameters(forward)
        problems = []
        if left:
            problems.append(f"{', '.join(sorted(left))} still read once logits_to_keep is gone")
        if logits_statement(stripped, own[0].attribute)[0] < 0:
            problems.append(f"`self.{own[0].attribute}(...)` is not assigned to a name")
        if not calls_transformers_loss(forward):
            problems.append("the loss is not computed with `self.loss_function(...)`")
        if problems:
            yield _refusal(
                LM_HEAD_FORWARD,
                f"{owner}.forward: {'; '.join(problems)}",
                context.index.location(forward),
                owner,
                "NXS013",
            )


# --- NXS020 -------------------------------------------------------------------------------------------


def _gate_up(context: Context, blueprint: Blueprint) -> Iterator[Refusal]:
    seen: set[str] = set()
    for block in blueprint.mlps:
        if block.gate is None or block.owner in seen:
            continue
        seen.add(block.owner)
        node = context.classes[block.owner].facts.node
        init, forward = find_method(node, "__init__"), find_method(node, "forward")
        if init is None or forward is None:
            yield _refusal(
                INHERITED_DEFINITION,
                f"{block.owner} inherits its __init__ or forward",
                context.index.location(node),
                block.owner,
                "NXS020",
            )
            continue
        gate, up = blueprint.site(f"{block.path}.{block.gate}"), blueprint.site(f"{block.path}.{block.up}")
        problems = []
        if gate.bias.source != up.bias.source or gate.in_features.source != up.in_features.source:
            problems.append(f"they differ in input size or bias ({gate.source} vs {up.source})")
        body = list(init.body.body)
        if index_of_assignment(body, block.gate) is None or index_of_assignment(body, block.up) is None:
            problems.append("they are not plain `self.x = ...` statements of __init__")
        if gate_up_calls(forward, block.gate, block.up) is None:
            problems.append("forward does not call each once on the same input")
        if problems:
            yield _refusal(
                UNFUSABLE_GATE_UP,
                f"{block.owner}.{block.gate} / {block.up}: {'; '.join(problems)}",
                gate.location,
                block.owner,
                "NXS020",
            )


# --- NXS021, NXS022, NXS023 ---------------------------------------------------------------------------


def _attention(context: Context, blueprint: Blueprint) -> Iterator[Refusal]:
    seen: set[str] = set()
    for geometry in blueprint.attention:
        if geometry.owner in seen:
            continue
        seen.add(geometry.owner)
        analysis = context.classes[geometry.owner]
        init, forward = (
            find_method(analysis.facts.node, "__init__"),
            find_method(analysis.facts.node, "forward"),
        )
        location = context.index.location(analysis.facts.node)
        if forward is None:
            yield _refusal(
                INHERITED_DEFINITION,
                f"{geometry.owner} inherits its forward",
                location,
                geometry.owner,
                "NXS021",
                "NXS022",
                "NXS023",
            )
            continue
        if init is None:
            yield _refusal(
                INHERITED_DEFINITION,
                f"{geometry.owner} inherits its __init__",
                location,
                geometry.owner,
                "NXS021",
            )
        else:
            yield from _qkv(context, blueprint, geometry, init, forward)
        yield from _input_shape(context, geometry, forward)
        if not adds_head_bias(blueprint, forward):  # NXS031 keeps that attention eager
            yield from _dispatch(context, geometry, forward)


def _qkv(
    context: Context,
    blueprint: Blueprint,
    geometry: AttentionGeometry,
    init: cst.FunctionDef,
    forward: cst.FunctionDef,
) -> Iterator[Refusal]:
    q, k, v = (blueprint.site(f"{geometry.path}.{name}") for name in (geometry.q, geometry.k, geometry.v))
    problems = []
    if (
        len({q.bias.source, k.bias.source, v.bias.source}) != 1
        or len({q.in_features.source, k.in_features.source, v.in_features.source}) != 1
    ):
        problems.append("q/k/v differ in input size or bias")
    # Sizes written differently may still agree (a split source's last part is "the rest"): compared on
    # the default config, as the other size checks are.
    if not _same_value(k.out_features, v.out_features, context.default_config):
        problems.append(f"k and v differ in size ({k.source} vs {v.source})")
    if any(site.conditional for site in (q, k, v)):
        problems.append("q/k/v are built under a condition")
    body = list(init.body.body)
    if any(index_of_assignment(body, name) is None for name in (geometry.q, geometry.k, geometry.v)):
        problems.append("q/k/v are not plain `self.x = ...` statements of __init__")
    if projection_calls(forward, geometry) is None:
        problems.append("forward does not call q, k and v once each on the same input")
    outputs = self_calls(forward, geometry.o)
    if len(outputs) != 1 or len(outputs[0].args) != 1:
        problems.append(f"forward does not call self.{geometry.o}(x) exactly once")
    if len(forward.params.params) < 2:
        problems.append("forward takes no input")
    if problems:
        yield _refusal(
            QKV_PROJECTIONS, f"{geometry.owner}: {'; '.join(problems)}", q.location, geometry.owner, "NXS021"
        )


def _input_shape(
    context: Context, geometry: AttentionGeometry, forward: cst.FunctionDef
) -> Iterator[Refusal]:
    if len(forward.params.params) < 2:
        return
    source_input = forward.params.params[1].name.value
    for statement in other_shape_reads(list(forward.body.body), source_input):
        text = code(statement).strip().splitlines()[0]
        yield _refusal(
            ATTENTION_INPUT_SHAPE,
            f"{geometry.owner}.forward reads the shape of `{source_input}` in `{text}`",
            context.index.location(statement),
            geometry.owner,
            "NXS022",
        )


def _dispatch(context: Context, geometry: AttentionGeometry, forward: cst.FunctionDef) -> Iterator[Refusal]:
    problem = _dispatch_problem(context, geometry, forward)
    if problem is not None:
        yield _refusal(
            ATTENTION_DISPATCH,
            f"{geometry.owner}.forward: {problem}",
            context.index.location(forward),
            geometry.owner,
            "NXS023",
        )


def _dispatch_problem(context: Context, geometry: AttentionGeometry, forward: cst.FunctionDef) -> str | None:
    found = table_dispatch(forward)
    if found is None:
        return "the attention function is not picked from ALL_ATTENTION_FUNCTIONS"
    index, variable = found
    if geometry.eager_function is None:
        return f"`{variable}` has no eager function as its default"
    call = attention_call(list(forward.body.body[index + 1 :]), variable)
    if call is None:
        return f"`{variable}` is not called exactly once"
    if mask_argument(call) is None:
        return f"no attention mask is passed to `{variable}`"
    eager = context.mapping.functions.get(geometry.eager_function)
    if eager is None:
        return f"the eager function `{geometry.eager_function}` is not defined in the file"
    if mask_block(eager) is None:
        return (
            f"`{geometry.eager_function}` has no plain `if <mask> is not None:` block adding the mask to the "
            "scores as `scores = scores + mask`"
        )
    return None


# --- NXS024 -------------------------------------------------------------------------------------------


def _linears(context: Context, blueprint: Blueprint) -> Iterator[Refusal]:
    roles: dict[tuple[str, str], set[Role]] = {}
    for site in blueprint.sites:
        if site.constructor == LINEAR and site.role in (Role.COLUMN, Role.ROW):
            roles.setdefault((site.owner, site.attribute), set()).add(site.role)
    reported: set[tuple[str, str]] = set()
    for site in blueprint.sites:
        key = (site.owner, site.attribute)
        if key not in roles or key in reported:
            continue
        problem = None
        others = _other_values(context, site.owner, site.attribute)
        if len(roles[key]) > 1:
            problem = (
                f"has the roles {', '.join(sorted(role.value for role in roles[key]))} at different paths"
            )
        elif not _reads_sizes(site.source):
            problem = f"= {site.source} does not pass in_features and out_features"
        elif others:
            problem = f"is also assigned {others[0]}, which is not an nn.Linear"
        if problem is not None:
            reported.add(key)
            yield _refusal(
                LINEAR_LAYOUT, f"{site.owner}.{site.attribute} {problem}", site.location, site.owner, "NXS024"
            )


def _other_values(context: Context, owner: str, attribute: str) -> list[str]:
    """What the owner's own `__init__` assigns to `self.<attribute>` besides its linear (the rule converts
    every assignment of a linear's attribute)."""
    found = []
    for assign in context.classes[owner].facts.assigns:
        if assign.attribute != attribute or assign.defined_in != owner:
            continue
        construct = classify(assign.value, context.index, context.mapping)
        if construct.kind is not ChildKind.LAYER or construct.qualified != LINEAR:
            found.append(code(assign.value))
    return found


def _reads_sizes(source: str) -> bool:
    call = cst.parse_expression(source)
    if not isinstance(call, cst.Call):
        return False
    positional = sum(arg.keyword is None and not arg.star for arg in call.args)
    keywords = {arg.keyword.value for arg in call.args if arg.keyword is not None}
    return all(
        positional > index or name in keywords for index, name in enumerate(("in_features", "out_features"))
    )
