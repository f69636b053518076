"""The module instance tree of the causal-LM class, with module paths and per-instance scopes.

Starting from the causal-LM class, every `self.<attr> = <LocalClass>(...)` becomes a child instance and
every `nn.ModuleList([...] for i in range(n))` a child addressed with `*`, so paths read like the
state-dict keys with layer indices starred (`model.layers.*.self_attn.q_proj`). Each instance carries a
`Scope` binding its `__init__` parameters to the parent's arguments, so sizes resolve to config
expressions.
"""

from __future__ import annotations

from dataclasses import dataclass

import libcst as cst

from ..errors import ScaffoldError
from ..syntax import walk
from .classes import ClassFacts, ModuleMap, SelfAssign
from .constructors import ChildKind, Construct, classify
from .expressions import Scope, root_scope
from .parsing import SourceIndex


@dataclass
class Instance:
    """One module instance: its path from the root ("" for the root) and its resolution scope."""

    path: str
    class_name: str
    scope: Scope
    parent: Instance | None


@dataclass(frozen=True)
class Member:
    """An attribute of an instance that holds something other than a plain value."""

    owner: Instance
    attribute: str
    construct: Construct
    assign: SelfAssign
    path: str

    @property
    def call(self) -> cst.Call | None:
        """The constructor call (for a list: its element's call)."""
        return self.construct.call


@dataclass
class InstanceTree:
    """Instances in pre-order and the members of each."""

    instances: list[Instance]
    members: list[Member]

    def members_of(self, instance: Instance) -> list[Member]:
        """Members owned by `instance`, in `__init__` order."""
        return [member for member in self.members if member.owner is instance]

    def paths_of(self, class_name: str) -> list[str]:
        """Paths of every instance of `class_name`."""
        return [instance.path for instance in self.instances if instance.class_name == class_name]


def class_constructs(facts: ClassFacts, index: SourceIndex, mapping: ModuleMap) -> dict[str, Construct]:
    """Every non-value attribute of a class, classified (the last assignment of each attribute wins, except
    the `None` arm of an optional layer: `ClassFacts.module_assign`)."""
    constructs: dict[str, Construct] = {}
    for assign in facts.assigns:
        construct = classify(assign.value, index, mapping)
        if construct.kind is ChildKind.VALUE:
            if _built(facts, assign.attribute, index, mapping) is not facts.last_assign(assign.attribute):
                continue  # the `None` arm of an optional norm
            constructs.pop(assign.attribute, None)
        else:
            constructs[assign.attribute] = construct
    return constructs


def _built(facts: ClassFacts, attribute: str, index: SourceIndex, mapping: ModuleMap) -> SelfAssign | None:
    """The assignment that builds the child: the last one, or the norm of an optional norm (`if c: self.norm
    = LayerNorm(...)` / `else: self.norm = None`), which the norm rules convert where it stands. An optional
    linear keeps the last assignment (the `None`): a replicated linear in the sequence-parallel region has no
    rule."""
    built = facts.module_assign(attribute)
    if built is None or built is facts.last_assign(attribute):
        return built
    construct = classify(built.value, index, mapping)
    if construct.kind is ChildKind.TORCH_NORM or construct.kind is ChildKind.CLASS:
        return built
    return facts.last_assign(attribute)


def build_tree(
    root_class: str, facts: dict[str, ClassFacts], index: SourceIndex, mapping: ModuleMap
) -> InstanceTree:
    """Instantiate `root_class` symbolically; recursion through a class's own ancestors is an error."""
    tree = InstanceTree([], [])
    root = Instance("", root_class, _instance_scope(facts[root_class], root_scope()), None)
    _expand(root, tree, facts, index, mapping)
    return tree


def instance_scope(facts: ClassFacts, bindings: Scope) -> Scope:
    """Scope of an instance of `facts`'s class built with `bindings` (see `bind_arguments`), for a class
    the tree does not reach on the default path (a block chosen under an `if` in its parent)."""
    return _instance_scope(facts, bindings)


def _instance_scope(facts: ClassFacts, bindings: Scope) -> Scope:
    """Scope of an instance: parameter bindings, `__init__` locals, then `self.<attr>` values."""
    scope = Scope(
        names=dict(bindings.names),
        self_attrs=dict(bindings.self_attrs),
        loop_variables=bindings.loop_variables,
    )
    for name, value in facts.init_locals.items():
        value = _unwrap_copy(value)
        if name in scope.names and _mentions(value, name):
            # `config = copy.deepcopy(config)`, `size = size or config.x`: the inner name is the parameter.
            before = Scope(
                names=dict(scope.names), self_attrs=scope.self_attrs, loop_variables=scope.loop_variables
            )
            scope.names[name] = (value, before)
        else:
            scope.names[name] = (value, scope)
    for assign in facts.assigns:
        scope.self_attrs[assign.attribute] = (assign.value, scope)
    if "config" in scope.names and "config" not in scope.self_attrs:
        scope.self_attrs["config"] = scope.names["config"]
    return scope


def _expand(
    instance: Instance,
    tree: InstanceTree,
    facts: dict[str, ClassFacts],
    index: SourceIndex,
    mapping: ModuleMap,
) -> None:
    tree.instances.append(instance)
    class_facts = facts[instance.class_name]
    last: dict[str, SelfAssign] = {
        assign.attribute: built
        for assign in class_facts.assigns
        if (built := _built(class_facts, assign.attribute, index, mapping)) is not None
    }
    seen: set[str] = set()
    for assign in class_facts.assigns:
        if assign.attribute in seen:
            continue
        seen.add(assign.attribute)
        assign = last[assign.attribute]
        construct = classify(assign.value, index, mapping)
        if construct.kind is ChildKind.VALUE:
            continue
        path = _join(instance.path, assign.attribute)
        if construct.kind is ChildKind.LIST:
            path += ".*"
        tree.members.append(Member(instance, assign.attribute, construct, assign, path))
        element = construct.element if construct.kind is ChildKind.LIST else construct
        if element is None or element.kind is not ChildKind.CLASS or element.call is None:
            continue
        child_class = element.qualified
        if _is_ancestor(instance, child_class):
            raise ScaffoldError(
                f"{index.location(assign.statement)}: {child_class} contains itself; cannot build its module tree"
            )
        bindings = bind_arguments(element.call, facts[child_class], instance.scope)
        bindings.loop_variables = instance.scope.loop_variables | frozenset(construct.loop_targets)
        child = Instance(path, child_class, _instance_scope(facts[child_class], bindings), instance)
        _expand(child, tree, facts, index, mapping)


def bind_arguments(call: cst.Call, callee: ClassFacts, caller_scope: Scope) -> Scope:
    """Bind the callee's `__init__` parameters to the call's arguments (resolved in the caller's scope)."""
    bindings = Scope()
    params = callee.init_params
    positional = [arg for arg in call.args if arg.keyword is None and not arg.star]
    keywords = {arg.keyword.value: arg.value for arg in call.args if arg.keyword is not None}
    for position, (name, default) in enumerate(params):
        if position < len(positional):
            bindings.names[name] = (positional[position].value, caller_scope)
        elif name in keywords:
            bindings.names[name] = (keywords[name], caller_scope)
        elif default is not None:
            bindings.names[name] = (default, None)
    return bindings


def _unwrap_copy(value: cst.BaseExpression) -> cst.BaseExpression:
    """`copy.deepcopy(x)` / `copy.copy(x)` stand for `x` as far as sizes go."""
    if (
        isinstance(value, cst.Call)
        and SourceIndex.code(value.func) in {"copy.deepcopy", "copy.copy", "deepcopy"}
        and len(value.args) == 1
    ):
        return value.args[0].value
    return value


def _mentions(value: cst.BaseExpression, name: str) -> bool:
    return any(isinstance(node, cst.Name) and node.value == name for node in walk(value))


def _is_ancestor(instance: Instance | None, class_name: str) -> bool:
    while instance is not None:
        if instance.class_name == class_name:
            return True
        instance = instance.parent
    return False


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name
