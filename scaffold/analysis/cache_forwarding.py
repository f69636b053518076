"""Where the KV cache travels between the functions of a file, for NXS002 to follow it (`CacheForwarding`).

The cache rule strips a function on its own text; three facts need the whole file:

- a cache passed under another name (`layer(hidden, layer_past=past_key_values)`) reaches the callee's
  parameter of that name, which is then as absent as the cache: a parameter becomes an *alias* when every
  call of its function that binds it (by keyword or position) passes the cache, and at least one does;
- a call of a function that loses parameters must stop passing them, positional arguments included
  (`block(hidden, past_key_values, cache_position, mask)` into `forward(self, hidden, past_key_values,
  cache_position, attention_mask)` keeps `block(hidden, mask)`);
- a method that takes the cache and that nothing in the file calls serves generation only (transformers'
  generation utilities call it): it goes.

Calls are resolved from the file alone: `self.<attr>(...)` to the class `__init__` assigns to the attribute
(`self.attn = Attention(...)`), a loop variable over a module list of one class (`for block in self.h`,
`for i, block in enumerate(self.h)`) to that class, `self.<method>(...)` to the method of the class or a
local base, `f(...)` to the module's function `f`; a class call reaches its `forward`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import libcst as cst

from ..blueprint import CacheCallee, CacheForwarding
from ..rules.kv_cache import CACHE_PARAMETERS, FORWARDED_ONLY, cache_valued
from ..rules.prune_closure import GENERATION_METHODS
from ..syntax import dotted, names_in, self_attribute, walk

FORWARD = "forward"
INIT = "__init__"


@dataclass
class _Index:
    """One traversal of the file: the nodes under each function (nested ones included) and in all."""

    nodes: list[cst.CSTNode] = field(default_factory=list)
    within: dict[int, list[cst.CSTNode]] = field(default_factory=dict)  # id(FunctionDef) -> its nodes

    def of(self, function: cst.FunctionDef) -> list[cst.CSTNode]:
        return self.within.get(id(function), [])


def _index(module: cst.Module) -> _Index:
    index = _Index()
    stack: list[tuple[cst.CSTNode, tuple[list[cst.CSTNode], ...]]] = [(module, ())]
    while stack:
        node, enclosing = stack.pop()
        index.nodes.append(node)
        for found in enclosing:
            found.append(node)
        if isinstance(node, cst.FunctionDef):
            index.within[id(node)] = []
            enclosing = (*enclosing, index.within[id(node)])
        stack.extend((child, enclosing) for child in reversed(node.children))
    return index


def cache_functions(module: cst.Module) -> Iterator[tuple[str, cst.FunctionDef]]:
    """Every function the cache rule rewrites, by the name it gives it (`Class.method`, `function`):
    nested ones too, generation methods (dropped by NXS001) not."""

    def visit(node: cst.CSTNode, owner: str | None) -> Iterator[tuple[str, cst.FunctionDef]]:
        for child in node.children:
            if isinstance(child, cst.ClassDef):
                yield from visit(child, child.name.value)
            elif isinstance(child, cst.FunctionDef):
                if owner is not None and child.name.value in GENERATION_METHODS:
                    continue
                yield from visit(child, owner)
                yield (f"{owner}.{child.name.value}" if owner else child.name.value), child
            elif not isinstance(child, cst.SimpleStatementLine | cst.BaseExpression | cst.Decorator):
                yield from visit(child, owner)  # statements can hold definitions; expressions cannot

    yield from visit(module, None)


@dataclass
class _Class:
    name: str
    bases: tuple[str, ...]
    methods: dict[str, cst.FunctionDef]
    children: dict[str, str] = field(default_factory=dict)  # attribute -> local class (or list element)


@dataclass(frozen=True)
class _Call:
    caller: str
    written: str  # the callee as written
    callee: str  # the function it resolves to
    node: cst.Call


def cache_forwarding(module: cst.Module) -> CacheForwarding:
    """The cache's travels in `module` (see the module docstring)."""
    index = _index(module)
    classes = _classes(module, index)
    functions = {
        statement.name.value: statement for statement in module.body if isinstance(statement, cst.FunctionDef)
    }
    subjects = dict(cache_functions(module))
    calls = [
        call
        for subject, function in subjects.items()
        for call in _calls(subject, index.of(function), classes, functions)
    ]
    calls = [call for call in calls if call.callee in subjects]
    aliases = _aliases(subjects, calls, index)
    removed = {
        subject: tuple(
            name
            for name in _positional(function) + _keyword_only(function)
            if name in CACHE_PARAMETERS or name in aliases.get(subject, set())
        )
        for subject, function in subjects.items()
    }
    forwarded = sorted(
        {
            (call.caller, call.written, call.callee)
            for call in calls
            if removed.get(call.callee) and _unambiguous(call, calls)
        }
    )
    return CacheForwarding(
        aliases=tuple((subject, tuple(sorted(names))) for subject, names in sorted(aliases.items()) if names),
        calls=tuple(
            (caller, written, CacheCallee(callee, _bound(subjects[callee]), removed[callee]))
            for caller, written, callee in forwarded
        ),
        helpers=tuple(_helpers(index, subjects)),
    )


def _unambiguous(call: _Call, calls: list[_Call]) -> bool:
    """Whether the callee as written means one function throughout its caller."""
    return all(
        other.callee == call.callee
        for other in calls
        if (other.caller, other.written) == (call.caller, call.written)
    )


# --- the file's classes and calls ---------------------------------------------------------------------


def _classes(module: cst.Module, index: _Index) -> dict[str, _Class]:
    found: dict[str, _Class] = {}
    for statement in module.body:
        if not isinstance(statement, cst.ClassDef):
            continue
        methods = {
            child.name.value: child for child in statement.body.body if isinstance(child, cst.FunctionDef)
        }
        bases = tuple(name for base in statement.bases if (name := dotted(base.value)) is not None)
        found[statement.name.value] = _Class(statement.name.value, bases, methods)
    for info in found.values():
        init = info.methods.get(INIT)
        if init is None:
            continue
        for node in index.of(init):
            if isinstance(node, cst.Assign) and len(node.targets) == 1:
                attribute = self_attribute(node.targets[0].target)
                built = _built_class(node.value, found)
                if attribute is not None and built is not None:
                    info.children[attribute] = built
    return found


def _built_class(value: cst.BaseExpression, classes: dict[str, _Class]) -> str | None:
    """The one local class `value` builds: `Cls(...)`, or every element of `nn.ModuleList([...])`."""
    if not isinstance(value, cst.Call):
        return None
    name = dotted(value.func)
    if name in classes:
        return name
    if name is None or not name.endswith("ModuleList"):
        return None
    built = {
        called
        for node in walk(value)
        if isinstance(node, cst.Call) and (called := dotted(node.func)) in classes
    }
    return built.pop() if len(built) == 1 else None


def _method(classes: dict[str, _Class], owner: str, name: str) -> str | None:
    """`Class.name` of the class (or its nearest local base) that defines method `name`."""
    seen: set[str] = set()
    pending = [owner]
    while pending:
        current = pending.pop(0)
        if current in seen or current not in classes:
            continue
        seen.add(current)
        if name in classes[current].methods:
            return f"{current}.{name}"
        pending.extend(classes[current].bases)
    return None


def _calls(
    subject: str, nodes: list[cst.CSTNode], classes: dict[str, _Class], functions: dict[str, cst.FunctionDef]
) -> Iterator[_Call]:
    owner = subject.split(".")[0] if "." in subject else None
    info = classes.get(owner) if owner else None
    loops: dict[str, str] = {}  # loop variable -> the class of the module list it walks
    for node in nodes:
        if isinstance(node, cst.For) and info is not None:
            target, iterable = node.target, node.iter
            if isinstance(iterable, cst.Call) and dotted(iterable.func) == "enumerate" and iterable.args:
                iterable = iterable.args[0].value
                target = (
                    target.elements[-1].value
                    if isinstance(target, cst.Tuple) and len(target.elements) == 2
                    else None
                )
            while isinstance(iterable, cst.Subscript):
                iterable = iterable.value
            attribute = self_attribute(iterable)
            if isinstance(target, cst.Name) and attribute in info.children:
                loops[target.value] = info.children[attribute]
    for node in nodes:
        if not isinstance(node, cst.Call):
            continue
        written = dotted(node.func)
        if written is None:
            continue
        callee: str | None = None
        attribute = self_attribute(node.func)
        if attribute is not None and owner is not None and info is not None:
            if attribute in info.children:
                callee = _method(classes, info.children[attribute], FORWARD)
            else:
                callee = _method(classes, owner, attribute)
        elif written in loops:
            callee = _method(classes, loops[written], FORWARD)
        elif written in functions:
            callee = written
        elif written in classes:
            continue  # a constructor call
        if callee is not None:
            yield _Call(subject, written, callee, node)


def _positional(function: cst.FunctionDef) -> list[str]:
    params = function.params
    return [param.name.value for param in (*params.posonly_params, *params.params)]


def _keyword_only(function: cst.FunctionDef) -> list[str]:
    return [param.name.value for param in function.params.kwonly_params]


def _bound(function: cst.FunctionDef) -> tuple[str, ...]:
    """The parameters positional arguments bind, in order: a method's `self` is bound by the call."""
    names = _positional(function)
    return tuple(names[1:] if names and names[0] in ("self", "cls") else names)


# --- aliases ------------------------------------------------------------------------------------------


def _aliases(subjects: dict[str, cst.FunctionDef], calls: list[_Call], index: _Index) -> dict[str, set[str]]:
    """Per function, the parameters that only ever receive the cache (to a fixed point: an alias passed
    on makes the next callee's parameter an alias too)."""
    aliases: dict[str, set[str]] = {}
    callers = {call.caller for call in calls}
    assignments = {subject: _single_assignments(index.of(subjects[subject])) for subject in callers}
    names: dict[tuple[str, frozenset[str]], set[str]] = {}
    while True:
        passes: dict[tuple[str, str], list[bool]] = {}  # (callee, parameter) -> is each binding the cache
        for call in calls:
            key = (call.caller, frozenset(aliases.get(call.caller, set())))
            if key not in names:
                names[key] = _cache_names(subjects[call.caller], key[1], assignments[call.caller])
            cache = names[key]
            parameters = _bound(subjects[call.callee])
            everything = set(parameters) | set(_keyword_only(subjects[call.callee]))
            position = 0
            for arg in call.node.args:
                if arg.star:
                    break
                if arg.keyword is None:
                    name = parameters[position] if position < len(parameters) else None
                    position += 1
                else:
                    name = arg.keyword.value if arg.keyword.value in everything else None
                if name is None or name in CACHE_PARAMETERS:
                    continue
                passes.setdefault((call.callee, name), []).append(cache_valued(arg.value, cache))
        found: dict[str, set[str]] = {}
        for (callee, name), cached in passes.items():
            if all(cached):
                found.setdefault(callee, set()).add(name)
        if found == aliases:
            return aliases
        aliases = found


def _single_assignments(nodes: list[cst.CSTNode]) -> list[tuple[str, cst.BaseExpression]]:
    """`name = value` statements of names a function (its `nodes`) assigns once, in source order."""
    counts: dict[str, int] = {}
    for node in nodes:
        targets = (
            [target.target for target in node.targets]
            if isinstance(node, cst.Assign)
            else [node.target]
            if isinstance(node, cst.AugAssign | cst.For | cst.AnnAssign)
            else []
        )
        for target in targets:
            for name in names_in(target):
                counts[name] = counts.get(name, 0) + (
                    1 if isinstance(node, cst.Assign | cst.AnnAssign) else 2
                )
    single = {name for name, count in counts.items() if count == 1}
    return [
        (node.targets[0].target.value, node.value)
        for node in nodes
        if isinstance(node, cst.Assign)
        and len(node.targets) == 1
        and isinstance(node.targets[0].target, cst.Name)
        and node.targets[0].target.value in single
    ]


def _cache_names(
    function: cst.FunctionDef, aliases: frozenset[str], assignments: list[tuple[str, cst.BaseExpression]]
) -> set[str]:
    """The names that hold the absent cache in `function`: its cache parameters, aliases, and names
    assigned once from one of them."""
    parameters = set(_positional(function) + _keyword_only(function))
    cache = {name for name in parameters if name in FORWARDED_ONLY} | (aliases & parameters)
    changed = True
    while changed:
        changed = False
        for name, value in assignments:
            if name not in cache and cache_valued(value, cache):
                cache.add(name)
                changed = True
    return cache


# --- helpers only the cache needs ---------------------------------------------------------------------


def _helpers(index: _Index, subjects: dict[str, cst.FunctionDef]) -> Iterator[str]:
    """Methods that take the cache and that nothing in the file calls or names."""
    referenced: dict[str, int] = {}
    for node in index.nodes:
        if isinstance(node, cst.Attribute):
            referenced[node.attr.value] = referenced.get(node.attr.value, 0) + 1
        elif isinstance(node, cst.Name):
            referenced[node.value] = referenced.get(node.value, 0) + 1
    for subject, function in subjects.items():
        if "." not in subject or subject.count(".") != 1:
            continue
        name = function.name.value
        takes_cache = bool(set(_positional(function) + _keyword_only(function)) & FORWARDED_ONLY)
        if takes_cache and not name.startswith("__") and name != FORWARD and referenced.get(name, 0) == 1:
            yield subject  # its own definition is the one mention
