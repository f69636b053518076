"""Top-level definitions of a modeling file, their name-level dependency graph, and per-class facts.

Like transformers' modular converter, a first pass records what the module defines and which top-level
names each definition mentions; the classes and helpers to keep are the dependency closure of the base
model and the causal-LM head. Per class, the `__init__` body is flattened into the attribute
assignments that build submodules (`self.q_proj = nn.Linear(...)`), in source order, with whether each
sits under an `if`.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import libcst as cst

from ..errors import ScaffoldError
from ..syntax import code, name_nodes, self_attribute, walk
from ..type_tests import branch_only_type_tests
from .parsing import SourceIndex


@dataclass
class ModuleMap:
    """Top-level classes, functions and assignments, and the names each one references."""

    classes: dict[str, cst.ClassDef] = field(default_factory=dict)
    functions: dict[str, cst.FunctionDef] = field(default_factory=dict)
    assignments: dict[str, cst.BaseExpression] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    references: dict[str, set[str]] = field(default_factory=dict)

    def closure(self, roots: Iterable[str]) -> list[str]:
        """Top-level names reachable from `roots`, in source order."""
        seen: set[str] = set()
        stack = [root for root in roots if root in self.references]
        while stack:
            name = stack.pop()
            if name in seen:
                continue
            seen.add(name)
            stack.extend(ref for ref in self.references[name] if ref in self.references and ref not in seen)
        return [name for name in self.order if name in seen]


def map_module(module: cst.Module) -> ModuleMap:
    """Record the module's top-level definitions (statements nested in `if`/`try` are not definitions)."""
    mapping = ModuleMap()
    for statement in module.body:
        if isinstance(statement, cst.ClassDef):
            _define(mapping, statement.name.value, statement)
            mapping.classes[statement.name.value] = statement
        elif isinstance(statement, cst.FunctionDef):
            _define(mapping, statement.name.value, statement)
            mapping.functions[statement.name.value] = statement
        elif isinstance(statement, cst.SimpleStatementLine):
            for small in statement.body:
                if isinstance(small, cst.Assign):
                    for target in small.targets:
                        if isinstance(target.target, cst.Name):
                            _define(mapping, target.target.value, small.value)
                            mapping.assignments[target.target.value] = small.value
                elif (
                    isinstance(small, cst.AnnAssign)
                    and isinstance(small.target, cst.Name)
                    and small.value is not None
                ):
                    _define(mapping, small.target.value, small.value)
                    mapping.assignments[small.target.value] = small.value
    return mapping


def _define(mapping: ModuleMap, name: str, node: cst.CSTNode) -> None:
    if name not in mapping.references:
        mapping.order.append(name)
    # A class named only as the type of an `if isinstance(...)` branch is not built by `node` (NXS001).
    occurrences = Counter(found.value for found in name_nodes(node))
    names = set(occurrences)
    if "isinstance" in occurrences:
        names -= branch_only_type_tests(node, occurrences)
    mapping.references[name] = names - {name}


@dataclass(frozen=True)
class SelfAssign:
    """`self.<attribute> = <value>` in `__init__`; `defined_in` is the class whose own `__init__` holds the
    statement (a local base class's, for an inherited one)."""

    attribute: str
    value: cst.BaseExpression
    conditional: bool
    statement: cst.CSTNode
    defined_in: str = ""


@dataclass
class ClassFacts:
    """What a class's definition says, with local base classes' `__init__` facts merged in."""

    name: str
    node: cst.ClassDef
    bases: tuple[str, ...]
    local_bases: tuple[str, ...]
    init: cst.FunctionDef | None
    forward: cst.FunctionDef | None
    methods: dict[str, cst.FunctionDef]
    init_params: tuple[tuple[str, cst.BaseExpression | None], ...]
    assigns: list[SelfAssign]
    init_locals: dict[str, cst.BaseExpression]
    class_attributes: dict[str, cst.BaseExpression]
    buffers: tuple[str, ...]

    def last_assign(self, attribute: str) -> SelfAssign | None:
        """The last `self.<attribute> = ...` (the value an instance ends up with on the default path)."""
        found = [assign for assign in self.assigns if assign.attribute == attribute]
        return found[-1] if found else None

    def module_assign(self, attribute: str) -> SelfAssign | None:
        """The assignment that builds the child `attribute`: the last one, except that an optional layer
        (`if c: self.x = Layer(...)` / `else: self.x = None`) is the layer, which the rules convert where
        it stands (the `None` arm stays as written)."""
        found = [assign for assign in self.assigns if assign.attribute == attribute]
        if not found:
            return None
        last = found[-1]
        if last.conditional and _is_none(last.value):
            built = [assign for assign in found[:-1] if assign.conditional and not _is_none(assign.value)]
            if built:
                return built[-1]
        return last


def _is_none(value: cst.BaseExpression) -> bool:
    return isinstance(value, cst.Name) and value.value == "None"


def collect_classes(mapping: ModuleMap, index: SourceIndex) -> dict[str, ClassFacts]:
    """Facts for every top-level class; local bases are processed first so children can merge them."""
    facts: dict[str, ClassFacts] = {}

    def build(name: str, trail: tuple[str, ...]) -> ClassFacts:
        if name in facts:
            return facts[name]
        if name in trail:
            raise ScaffoldError(f"{index.display_path}: class {name} inherits from itself")
        node = mapping.classes[name]
        bases = tuple(SourceIndex.code(base.value) for base in node.bases)
        local_bases = tuple(
            base.value.value
            for base in node.bases
            if isinstance(base.value, cst.Name) and base.value.value in mapping.classes
        )
        inherited = [build(base, (*trail, name)) for base in local_bases]
        own = _class_body(node)
        assigns: list[SelfAssign] = []
        init_locals: dict[str, cst.BaseExpression] = {}
        params: tuple[tuple[str, cst.BaseExpression | None], ...] = ()
        methods: dict[str, cst.FunctionDef] = {}
        class_attributes: dict[str, cst.BaseExpression] = {}
        buffers: list[str] = []
        for parent in inherited:
            methods.update(parent.methods)
            class_attributes.update(parent.class_attributes)
        for parent in inherited:
            assigns.extend(parent.assigns)
            init_locals.update(parent.init_locals)
            params = params or parent.init_params
            buffers.extend(parent.buffers)
        methods.update(own.methods)
        class_attributes.update(own.class_attributes)
        init = own.methods.get("__init__")
        if init is not None:
            params = _parameters(init)
            if not _calls_super_init(init):
                assigns, init_locals, buffers = [], {}, []
            own: list[SelfAssign] = []
            _flatten_init(init.body, False, own, init_locals, buffers)
            assigns = [*assigns, *(dataclasses.replace(assign, defined_in=name) for assign in own)]
        facts[name] = ClassFacts(
            name=name,
            node=node,
            bases=bases,
            local_bases=local_bases,
            init=methods.get("__init__"),
            forward=methods.get("forward"),
            methods=methods,
            init_params=params,
            assigns=assigns,
            init_locals=init_locals,
            class_attributes=class_attributes,
            buffers=tuple(buffers),
        )
        return facts[name]

    for class_name in mapping.classes:
        build(class_name, ())
    return facts


@dataclass
class _Body:
    methods: dict[str, cst.FunctionDef]
    class_attributes: dict[str, cst.BaseExpression]


def _class_body(node: cst.ClassDef) -> _Body:
    body = _Body({}, {})
    if not isinstance(node.body, cst.IndentedBlock):
        return body
    for statement in node.body.body:
        if isinstance(statement, cst.FunctionDef):
            body.methods[statement.name.value] = statement
        elif isinstance(statement, cst.SimpleStatementLine):
            for small in statement.body:
                if isinstance(small, cst.Assign):
                    for target in small.targets:
                        if isinstance(target.target, cst.Name):
                            body.class_attributes[target.target.value] = small.value
                elif isinstance(small, cst.AnnAssign) and isinstance(small.target, cst.Name) and small.value:
                    body.class_attributes[small.target.value] = small.value
    return body


def _parameters(function: cst.FunctionDef) -> tuple[tuple[str, cst.BaseExpression | None], ...]:
    """Positional-or-keyword and keyword-only parameters after `self`, with their defaults."""
    params = [*function.params.posonly_params, *function.params.params, *function.params.kwonly_params]
    return tuple((param.name.value, param.default) for param in params[1:])


def _calls_super_init(function: cst.FunctionDef) -> bool:
    for node in walk(function.body):
        if (
            isinstance(node, cst.Call)
            and isinstance(node.func, cst.Attribute)
            and node.func.attr.value == "__init__"
            and isinstance(node.func.value, cst.Call)
            and isinstance(node.func.value.func, cst.Name)
            and node.func.value.func.value == "super"
        ):
            return True
    return False


def _flatten_init(
    block: cst.BaseSuite,
    conditional: bool,
    assigns: list[SelfAssign],
    init_locals: dict[str, cst.BaseExpression],
    buffers: list[str],
) -> None:
    """Walk `__init__` statements in order, descending into if/else, for and with blocks."""
    statements = block.body if isinstance(block, cst.IndentedBlock) else [block]
    for statement in statements:
        if isinstance(statement, cst.SimpleStatementLine):
            for small in statement.body:
                _record_small(small, statement, conditional, assigns, init_locals, buffers)
        elif isinstance(statement, cst.If):
            _flatten_init(statement.body, True, assigns, init_locals, buffers)
            orelse = statement.orelse
            while orelse is not None:
                _flatten_init(orelse.body, True, assigns, init_locals, buffers)
                orelse = orelse.orelse if isinstance(orelse, cst.If) else None
        elif isinstance(statement, cst.For | cst.While | cst.With | cst.Try):
            _flatten_init(statement.body, True, assigns, init_locals, buffers)


def _record_small(
    small: cst.BaseSmallStatement,
    statement: cst.CSTNode,
    conditional: bool,
    assigns: list[SelfAssign],
    init_locals: dict[str, cst.BaseExpression],
    buffers: list[str],
) -> None:
    targets: list[cst.BaseExpression] = []
    value: cst.BaseExpression | None = None
    if isinstance(small, cst.Assign):
        targets = [target.target for target in small.targets]
        value = small.value
    elif isinstance(small, cst.AnnAssign) and small.value is not None:
        targets = [small.target]
        value = small.value
    elif isinstance(small, cst.Expr) and isinstance(small.value, cst.Call):
        call = small.value
        if (
            isinstance(call.func, cst.Attribute)
            and call.func.attr.value == "register_buffer"
            and call.args
            and isinstance(call.args[0].value, cst.SimpleString)
        ):
            buffers.append(call.args[0].value.evaluated_value)
        return
    if value is None:
        return
    for target in targets:
        attribute = self_attribute(target)
        if attribute is not None:
            assigns.append(SelfAssign(attribute, value, conditional, statement))
        elif isinstance(target, cst.Name):
            init_locals[target.value] = value


def config_parameter(facts: ClassFacts, config_class: str) -> str | None:
    """The `__init__` parameter that holds the model config: `config`, else the one annotated with the
    config class (or any `...Config`); None when the class takes none (or has no `__init__`)."""
    if facts.init is None:
        return None
    params = [*facts.init.params.posonly_params, *facts.init.params.params, *facts.init.params.kwonly_params]
    if any(param.name.value == "config" for param in params):
        return "config"
    for param in params:
        annotation = code(param.annotation.annotation) if param.annotation is not None else ""
        if annotation.rsplit(".", 1)[-1] in (config_class, "PretrainedConfig") or annotation.endswith(
            "Config"
        ):
            return param.name.value
    return None
