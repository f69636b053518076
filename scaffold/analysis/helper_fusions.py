"""A fused q|k|v projection split by a helper method whose layout depends on the configuration.

Falcon's and Bloom's attentions compute q, k and v with one linear and hand its output to a helper method
of the class (`query, key, value = self._split_heads(fused)`). The helper views the output as groups of
heads and picks each part's heads out of every group; which grouping depends on flags the constructor
copied from the config, one branch per layout:

    if self.grouped:                                      # K/V-grouped: per group R q heads, 1 k, 1 v
        qkv = fused.view(batch, seq, -1, R + 2, self.head_dim)
        query, key, value = qkv[:, :, :, :-2], qkv[:, :, :, [-2]], qkv[:, :, :, [-1]]
        ...broadcast key, value to query's heads, flatten the group and head dimensions
    elif not self.shared:                                 # per head interleaved: [q0 k0 v0 q1 k1 v1 ...]
        qkv = fused.view(batch, seq, self.num_heads, 3, self.head_dim)
        return qkv[..., 0, :], qkv[..., 1, :], qkv[..., 2, :]
    else:                                                 # one shared k/v head after all q heads
        qkv = fused.view(batch, seq, self.num_heads + 2, self.head_dim)
        return qkv[..., :-2, :], qkv[..., [-2], :], qkv[..., [-1], :]

Every branch is one layout of the same kind: G groups, each holding `n_p` heads of part p, in part order.
The analysis therefore reads the class as one linear per part, each part's heads `G * n_p` and the group
count `G` written as conditional expressions over the branch tests, so the generated model builds the
right sizes for every value of the flags, and the checkpoint spec (NXS027, `SourceFusion.groups`)
de-interleaves the fused tensor for whichever layout the config picks. The call becomes one call per part
viewed as `(..., -1, head_dim)`; a part the helper broadcasts to another part's head count (the K/V-grouped
layout's k and v) is repeated per head (`repeat_interleave` of the rank's own head ratio) under that
branch's test, as the helper did; where the module keeps its config, only for the eager kernel (the source's
own, which relies on it): SDPA and the Neuron flash path repeat K/V heads themselves by
`num_key_value_groups`, and a second repeat would multiply the heads.

Only this shape is read (a branch's view of the leading two dimensions, then an optional group dimension,
the parts' dimension and the head size; parts picked from the parts' dimension by literal slices, `[i]`
or `i`, tiling it in order); any other helper stays as written and is refused (R003, R007). Nothing here
names a model or a flag: the tests are carried over as the source writes them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import libcst as cst
import libcst.matchers as m
from libcst.metadata import MetadataWrapper, PositionProvider

from ..blueprint import Location, SourceFusion
from ..syntax import code, fresh_name, names_in, walk
from .source_fusions import (
    _assigned_attribute,
    _computable,
    _constructor_names,
    _grouped,
    _linears,
    _part_names,
    _single_assignment,
    _split_constructor,
    _uses,
)

VIEW_METHODS = ("view", "reshape")
IMPLEMENTATION = "_attn_implementation"


@dataclass(frozen=True)
class _Bound:
    """A position along the parts' dimension: `offset` from its start, or from its end (`from_end`)."""

    from_end: bool
    offset: int


@dataclass(frozen=True)
class _Part:
    lower: _Bound
    upper: _Bound
    drops: bool  # an integer index: the parts' dimension goes
    transposed: bool = False  # then `.transpose(1, 2)`: (batch, heads, seq, head_dim)


@dataclass(frozen=True)
class _Layout:
    """One branch of the helper: `groups` groups (None: `-1`, from the linear's width) of `extent` heads,
    part p holding `heads[p]` of them; `expands[p]` is the part whose head count p is broadcast to."""

    test: cst.BaseExpression | None
    groups: cst.BaseExpression | None
    extent: cst.BaseExpression
    head_dim: cst.BaseExpression
    heads: tuple[cst.BaseExpression, ...]
    expands: tuple[int | None, ...]
    transposed: tuple[bool, ...] = ()


def split_helper_fusions(
    module: cst.Module, display_path: str
) -> tuple[cst.Module, tuple[SourceFusion, ...]]:
    """`module` with every fused projection split by a layout helper read as one linear per part."""
    splitter = _HelperSplitter(module, display_path)
    return module.visit(splitter), tuple(splitter.fusions)


class _HelperSplitter(cst.CSTTransformer):
    def __init__(self, module: cst.Module, display_path: str) -> None:
        super().__init__()
        self.module = module
        self.display_path = display_path
        self.fusions: list[SourceFusion] = []

    def _line(self, node: cst.CSTNode) -> int:
        positions = MetadataWrapper(self.module, unsafe_skip_copy=True).resolve(PositionProvider)
        return positions[node].start.line

    def visit_FunctionDef(self, node: cst.FunctionDef) -> bool:
        return False

    def leave_ClassDef(self, original_node: cst.ClassDef, updated_node: cst.ClassDef) -> cst.ClassDef:
        methods = {s.name.value: s for s in updated_node.body.body if isinstance(s, cst.FunctionDef)}
        init, forward = methods.get("__init__"), methods.get("forward")
        if init is None or forward is None:
            return updated_node
        for source, (index, call) in sorted(_linears(init).items(), key=lambda item: item[1][0]):
            if _uses(updated_node, source) != 2:
                continue
            found = _helper_call(forward, source, methods)
            if found is None:
                continue
            call_index, split_index, helper, targets, call_input = found
            if _uses(updated_node, helper) != 1:
                continue
            layouts = _layouts(methods[helper], len(targets))
            if layouts is None:
                continue
            sizes_and_groups = _constructor_terms(layouts, init, index, call)
            if sizes_and_groups is None:
                continue
            sizes, groups, hoisted = sizes_and_groups
            taken = names_in(updated_node) | {
                name for name in (_assigned_attribute(s) for s in init.body.body) if name
            }
            parts = _part_names(targets, source, taken)
            line = self._line(_original_statement(original_node, index))
            init, index = _with_hoisted(init, index, hoisted)
            init, bias = _split_constructor(init, index, call, parts, sizes)
            keeps_config = "config" in {_assigned_attribute(s) for s in init.body.body}
            forward = _split_forward(
                forward, call_index, split_index, targets, parts, call_input, layouts, eager_only=keeps_config
            )
            self.fusions.append(
                SourceFusion(
                    owner=updated_node.name.value,
                    source_name=source,
                    part_names=parts,
                    part_sizes=tuple(code(size) for size in sizes),
                    bias=bias,
                    location=Location(self.display_path, line),
                    groups=code(groups),
                )
            )
            body = [
                init if s is methods["__init__"] else forward if s is methods["forward"] else s
                for s in updated_node.body.body
                if s is not methods[helper]
            ]
            updated_node = updated_node.with_changes(body=updated_node.body.with_changes(body=body))
            methods = {s.name.value: s for s in updated_node.body.body if isinstance(s, cst.FunctionDef)}
        return updated_node


def _original_statement(cls: cst.ClassDef, index: int) -> cst.CSTNode:
    """The constructor's statement `index` in the class as parsed (for its line)."""
    for statement in cls.body.body:
        if isinstance(statement, cst.FunctionDef) and statement.name.value == "__init__":
            return statement.body.body[index]
    return cls


def _with_hoisted(init: cst.FunctionDef, index: int, hoisted: tuple[int, ...]) -> tuple[cst.FunctionDef, int]:
    """The constructor with statements `hoisted` moved (in order) right before statement `index`, and the
    statement's new position."""
    body = list(init.body.body)
    moved = [body[i] for i in hoisted]
    rest = [s for i, s in enumerate(body) if i not in hoisted]
    position = rest.index(body[index])
    body = [*rest[:position], *moved, *rest[position:]]
    return init.with_changes(body=init.body.with_changes(body=body)), position + len(moved)


def _helper_call(
    forward: cst.FunctionDef, source: str, methods: dict[str, cst.FunctionDef]
) -> tuple[int, int, str, tuple[str, ...], cst.BaseExpression] | None:
    """(call index, split index, helper, targets, input) of `t = self.<source>(x)` followed by
    `a, b, c = self.<helper>(t)`, `t` read nowhere else and `x` not rebound between."""
    body = list(forward.body.body)
    call = m.Call(func=m.Attribute(value=m.Name("self"), attr=m.Name(source)), args=[m.Arg(keyword=None)])
    for index, statement in enumerate(body):
        assignment = _single_assignment(statement)
        if (
            assignment is None
            or not isinstance(assignment[0], cst.Name)
            or not m.matches(assignment[1], call)
        ):
            continue
        fused, call_input = assignment[0].value, assignment[1].args[0].value  # type: ignore[attr-defined]
        readers = [i for i, s in enumerate(body) if i != index and fused in names_in(s)]
        if len(readers) != 1:
            return None
        split = _single_assignment(body[readers[0]])
        if split is None or not isinstance(split[0], cst.Tuple):
            return None
        helper_call = m.Call(
            func=m.Attribute(value=m.Name("self"), attr=m.Name()),
            args=[m.Arg(value=m.Name(fused), keyword=None)],
        )
        if not m.matches(split[1], helper_call):
            return None
        helper = split[1].func.attr.value  # type: ignore[attr-defined]
        targets = tuple(e.value.value for e in split[0].elements if isinstance(e.value, cst.Name))
        if helper not in methods or len(targets) != len(split[0].elements) or len(targets) < 2:
            return None
        between = body[index + 1 : readers[0]]
        if any(_binds(s) & names_in(call_input) for s in between):
            return None
        return index, readers[0], helper, targets, call_input
    return None


def _binds(statement: cst.BaseStatement) -> set[str]:
    assignment = _single_assignment(statement)
    return set() if assignment is None else names_in(assignment[0])


# --- reading the helper -----------------------------------------------------------------------------------


def _layouts(helper: cst.FunctionDef, count: int) -> tuple[_Layout, ...] | None:
    """One layout per branch of the helper (a lone branch when it has no `if`), all with `count` parts
    and one head size; None when any branch has another shape."""
    params = [p.name.value for p in helper.params.params]
    if len(params) != 2 or params[0] != "self" or helper.params.kwonly_params or helper.params.star_kwarg:
        return None
    statements = [s for s in helper.body.body if not _is_docstring(s)]
    branches: list[tuple[cst.BaseExpression | None, list[cst.BaseStatement]]] = []
    if len(statements) == 1 and isinstance(statements[0], cst.If):
        node: cst.If | cst.Else | None = statements[0]
        while isinstance(node, cst.If):
            branches.append((node.test, list(node.body.body)))
            node = node.orelse
        if node is None:
            return None  # no else: the helper may fall through
        branches.append((None, list(node.body.body)))
    else:
        branches.append((None, statements))
    layouts = []
    for test, body in branches:
        if test is not None and (params[1] in names_in(test) or not _reads_self_only(test)):
            return None
        layout = _layout(test, body, params[1], count)
        if layout is None:
            return None
        layouts.append(layout)
    if (
        len({code(layout.head_dim) for layout in layouts}) != 1
        or len({lay.transposed for lay in layouts}) != 1
    ):
        return None
    return tuple(layouts)


def _is_docstring(statement: cst.BaseStatement) -> bool:
    return m.matches(statement, m.SimpleStatementLine(body=[m.Expr(value=m.SimpleString())]))


def _reads_self_only(expression: cst.BaseExpression) -> bool:
    """Literals and `self.x` attributes only: the forward can evaluate it as the helper did."""
    return names_in(expression) <= {"self", "True", "False", "None"}


def _layout(
    test: cst.BaseExpression | None, body: list[cst.BaseStatement], fused: str, count: int
) -> _Layout | None:
    lead: tuple[str, str] | None = None
    viewed: str | None = None
    shape: list[cst.BaseExpression] = []
    parts: dict[str, _Part] = {}
    broadcast: dict[str, str] = {}
    flattened: set[str] = set()
    returned: list[cst.BaseExpression] | None = None
    for statement in body:
        if m.matches(statement, m.SimpleStatementLine(body=[m.Return(value=m.Tuple())])):
            returned = [e.value for e in statement.body[0].value.elements]  # type: ignore[attr-defined]
            break
        assignment = _single_assignment(statement)
        if assignment is None:
            return None
        target, value = assignment
        if _unpacks_shape(target, value, fused):
            names = [e.value.value for e in target.elements]  # type: ignore[attr-defined]
            lead = (names[0], names[1])
        elif isinstance(target, cst.Name) and _view_of(value, fused) is not None and viewed is None:
            viewed, shape = target.value, _view_of(value, fused)  # type: ignore[assignment]
        elif isinstance(target, cst.Name) and viewed is not None and _selection(value, viewed, len(shape)):
            parts[target.value] = _selection(value, viewed, len(shape))  # type: ignore[assignment]
        elif isinstance(target, cst.Name) and _broadcast_to(value, target.value) in parts:
            broadcast[target.value] = _broadcast_to(value, target.value)  # type: ignore[assignment]
        elif _flattens(target, value) is not None:
            flattened |= _flattens(target, value)  # type: ignore[operator]
        else:
            return None
    if returned is None or lead is None or viewed is None or len(returned) != count:
        return None
    if len(shape) not in (4, 5) or not all(
        m.matches(s, m.Name(n)) for s, n in zip(shape, lead, strict=False)
    ):
        return None
    grouped = len(shape) == 5
    extent, head_dim = shape[-2], shape[-1]
    groups = (
        None
        if grouped and m.matches(shape[2], m.Integer("-1") | m.UnaryOperation(m.Minus(), m.Integer("1")))
        else (shape[2] if grouped else cst.Integer("1"))
    )
    order: list[str] = []
    for item in returned:
        if isinstance(item, cst.Name) and item.value in parts:
            order.append(item.value)
        else:
            selection = _selection(item, viewed, len(shape))
            if selection is None:
                return None
            name = f"part_{len(order)}"
            parts[name] = selection
            order.append(name)
    for name in order:  # each part ends as (batch, seq, heads, head_dim)
        drops, joined = parts[name].drops, name in flattened
        ok = (drops and not joined) or (not drops and joined) if grouped else not (drops or joined)
        if not ok:
            return None
    if not flattened <= set(order):
        return None
    if not _tiles([parts[name] for name in order], extent):
        return None
    for name, onto in broadcast.items():
        if (
            onto not in order
            or _heads(parts[name], extent) is None
            or code(_heads(parts[name], extent)) != "1"
        ):
            return None
    if not all(_reads_self_only(e) for e in (head_dim, extent, groups) if e is not None):
        return None
    heads = tuple(_heads(parts[name], extent) for name in order)
    if any(h is None for h in heads):
        return None
    return _Layout(
        test=test,
        groups=groups,
        extent=extent,
        head_dim=head_dim,
        heads=heads,  # type: ignore[arg-type]
        expands=tuple(order.index(broadcast[name]) if name in broadcast else None for name in order),
        transposed=tuple(parts[name].transposed for name in order),
    )


def _unpacks_shape(target: cst.BaseAssignTargetExpression, value: cst.BaseExpression, fused: str) -> bool:
    """`a, b, c = t.shape` (or `t.size()`): the fused output's three dimensions named."""
    reads = m.Attribute(value=m.Name(fused), attr=m.Name("shape")) | m.Call(
        func=m.Attribute(value=m.Name(fused), attr=m.Name("size")), args=[]
    )
    return (
        isinstance(target, cst.Tuple)
        and len(target.elements) == 3
        and all(isinstance(e.value, cst.Name) for e in target.elements)
        and m.matches(value, reads)
    )


def _view_of(value: cst.BaseExpression, fused: str) -> list[cst.BaseExpression] | None:
    """The shape of `t.view(a, b, ...)` (or one tuple argument)."""
    if not (
        isinstance(value, cst.Call)
        and isinstance(value.func, cst.Attribute)
        and value.func.attr.value in VIEW_METHODS
        and m.matches(value.func.value, m.Name(fused))
        and value.args
        and not any(arg.keyword or arg.star for arg in value.args)
    ):
        return None
    if len(value.args) == 1 and isinstance(value.args[0].value, cst.Tuple):
        elements = value.args[0].value.elements
        if any(isinstance(e, cst.StarredElement) for e in elements):
            return None
        return [e.value for e in elements]
    return [arg.value for arg in value.args]


def _integer(node: cst.BaseExpression | None) -> int | None:
    if isinstance(node, cst.Integer):
        return int(node.value)
    if isinstance(node, cst.UnaryOperation) and isinstance(node.operator, cst.Minus):
        inner = _integer(node.expression)
        return None if inner is None else -inner
    return None


def _bound(value: int) -> _Bound:
    return _Bound(value < 0, value)


TRANSPOSE = m.Call(
    func=m.Attribute(attr=m.Name("transpose")),
    args=[m.Arg(value=m.Integer("1"), keyword=None), m.Arg(value=m.Integer("2"), keyword=None)],
)


def _selection(value: cst.BaseExpression, viewed: str, ndim: int) -> _Part | None:
    """`t[..., s, :]` or `t[:, :, :, s]` picking heads `s` (a literal slice, `[i]` or `i`) of the
    second-to-last (the parts') dimension of the view `t` of `ndim` dimensions, maybe followed by
    `.transpose(1, 2)` where that leaves (batch, heads, seq, head_dim)."""
    if m.matches(value, TRANSPOSE):
        part = _selection(value.func.value, viewed, ndim)  # type: ignore[attr-defined]
        return dataclasses.replace(part, transposed=True) if part is not None and part.drops else None
    if not (isinstance(value, cst.Subscript) and m.matches(value.value, m.Name(viewed))):
        return None
    elements = [e.slice for e in value.slice]
    full = m.Slice(lower=None, upper=None, step=None)
    if elements and isinstance(elements[0], cst.Index) and isinstance(elements[0].value, cst.Ellipsis):
        rest = elements[1:]
        start = ndim - len(rest)
    else:
        rest, start = elements, 0
    picked = [i for i, e in enumerate(rest) if not m.matches(e, full)]
    if len(picked) != 1 or start + picked[0] != ndim - 2:
        return None
    selected = rest[picked[0]]
    if isinstance(selected, cst.Slice):
        if selected.step is not None:
            return None
        lower = 0 if selected.lower is None else _integer(selected.lower)
        upper = _integer(selected.upper) if selected.upper is not None else None
        if lower is None or (selected.upper is not None and upper is None):
            return None
        return _Part(_bound(lower), _Bound(True, 0) if upper is None else _bound(upper), drops=False)
    assert isinstance(selected, cst.Index)
    if isinstance(selected.value, cst.List) and len(selected.value.elements) == 1:
        index, drops = _integer(selected.value.elements[0].value), False
    else:
        index, drops = _integer(selected.value), True
    if index is None:
        return None
    upper = _Bound(True, 0) if index == -1 else _bound(index + 1)
    return _Part(_bound(index), upper, drops=drops)


def _broadcast_to(value: cst.BaseExpression, name: str) -> str | None:
    """`p` of `torch.broadcast_to(name, p.shape)`."""
    pattern = m.Call(
        func=m.Attribute(value=m.Name("torch"), attr=m.Name("broadcast_to")),
        args=[
            m.Arg(value=m.Name(name), keyword=None),
            m.Arg(value=m.Attribute(value=m.Name(), attr=m.Name("shape")), keyword=None),
        ],
    )
    return value.args[1].value.value.value if m.matches(value, pattern) else None  # type: ignore[attr-defined]


def _flattens(target: cst.BaseAssignTargetExpression, value: cst.BaseExpression) -> set[str] | None:
    """The names of `a, b = [x.flatten(2, 3) for x in (a, b)]` (the group and head dimensions joined)."""
    if not (isinstance(target, cst.Tuple) and isinstance(value, cst.ListComp | cst.GeneratorExp)):
        return None
    loop = value.for_in
    if loop.inner_for_in is not None or loop.ifs or not isinstance(loop.target, cst.Name):
        return None
    each = loop.target.value
    flatten = m.Call(
        func=m.Attribute(value=m.Name(each), attr=m.Name("flatten")),
        args=[m.Arg(value=m.Integer("2"), keyword=None), m.Arg(value=m.Integer("3"), keyword=None)],
    )
    if not m.matches(value.elt, flatten) or not isinstance(loop.iter, cst.Tuple | cst.List):
        return None
    names = [e.value.value for e in target.elements if isinstance(e.value, cst.Name)]
    sources = [e.value.value for e in loop.iter.elements if isinstance(e.value, cst.Name)]
    if names != sources or len(names) != len(target.elements):
        return None
    return set(names)


def _tiles(parts: list[_Part], extent: cst.BaseExpression) -> bool:
    """The parts follow one another from the start of the parts' dimension to its end."""
    size = _integer(extent)

    def same(a: _Bound, b: _Bound) -> bool:
        if a == b:
            return True
        if size is None:
            return False
        return (size + a.offset if a.from_end else a.offset) == (size + b.offset if b.from_end else b.offset)

    bounds = [_Bound(False, 0)]
    for part in parts:
        if not same(bounds[-1], part.lower):
            return False
        bounds.append(part.upper)
    return same(bounds[-1], _Bound(True, 0))


def _heads(part: _Part, extent: cst.BaseExpression) -> cst.BaseExpression | None:
    """How many heads of one group the part takes: a literal, or the extent less a literal."""
    if part.lower.from_end == part.upper.from_end:
        count = part.upper.offset - part.lower.offset
        return cst.Integer(str(count)) if count > 0 else None
    if part.lower.from_end:
        return None
    return _plus(extent, part.upper.offset - part.lower.offset)


def _plus(expression: cst.BaseExpression, offset: int) -> cst.BaseExpression:
    """`expression + offset`, folding a literal term of the expression (`(n + 2) - 2` -> `n`)."""
    if offset == 0:
        return expression
    if isinstance(expression, cst.BinaryOperation) and isinstance(expression.operator, cst.Add):
        literal = _integer(expression.right)
        if literal is not None:
            return _plus(expression.left, literal + offset)
    operator = cst.Add() if offset > 0 else cst.Subtract()
    return cst.BinaryOperation(_grouped(expression), operator, cst.Integer(str(abs(offset))))


# --- the constructor's sizes ------------------------------------------------------------------------------


def _times(left: cst.BaseExpression, right: cst.BaseExpression) -> cst.BaseExpression:
    if code(left) == "1":
        return right
    if code(right) == "1":
        return left
    return cst.BinaryOperation(_grouped(left), cst.Multiply(), _grouped(right))


def _choice(values: list[tuple[cst.BaseExpression | None, cst.BaseExpression]]) -> cst.BaseExpression:
    """`a if t1 else b if t2 else c` over the branches, a test dropped where its value is the one of the
    branches after it (one value where all branches agree)."""
    result = values[-1][1]
    for test, value in reversed(values[:-1]):
        assert test is not None
        if code(value) != code(result):
            result = cst.IfExp(test=test, body=_grouped(value), orelse=result)
    return _grouped(result)


def _constructor_terms(
    layouts: tuple[_Layout, ...], init: cst.FunctionDef, index: int, call: cst.Call
) -> tuple[tuple[cst.BaseExpression, ...], cst.BaseExpression, tuple[int, ...]] | None:
    """Each part's output features and the group count, as expressions the constructor computes where it
    built the fused linear, and the statements setting attributes they read that must move before it."""
    width = call.args[1].value
    groups: list[tuple[cst.BaseExpression | None, cst.BaseExpression]] = []
    for layout in layouts:
        count = layout.groups
        if count is None:  # `-1`: the linear's width over one group's
            count = cst.BinaryOperation(
                _grouped(width), cst.FloorDivide(), _grouped(_times(layout.extent, layout.head_dim))
            )
        groups.append((layout.test, count))
    head_dim = layouts[0].head_dim
    sizes = []
    for part in range(len(layouts[0].heads)):
        heads = _choice(
            [(lay.test, _times(g, lay.heads[part])) for lay, (_, g) in zip(layouts, groups, strict=True)]
        )
        sizes.append(_times(heads, head_dim))
    group_count = _choice(groups)
    names, attributes = _constructor_names(init, index)
    available = (names | _bound_by_every_branch(init, index), attributes)
    expressions = (*sizes, group_count)
    hoisted = _hoisted(expressions, init, index, available)
    if hoisted is None:
        return None
    return tuple(expressions[:-1]), expressions[-1], hoisted


def _hoisted(
    expressions: tuple[cst.BaseExpression, ...],
    init: cst.FunctionDef,
    index: int,
    available: tuple[set[str], set[str]],
) -> tuple[int, ...] | None:
    """The constructor statements after `index` setting attributes the expressions read (and those they
    read in turn), to move before the linear: each a plain `self.x = value` computable there. None when an
    expression reads anything else the constructor does not have at `index`."""
    later = _later_attributes(init, index)
    names, attributes = set(available[0]), set(available[1])
    moved: set[int] = set()
    pending = [e for e in expressions]
    while pending:
        expression = pending.pop()
        for attribute in _self_attributes_read(expression) - attributes:
            if attribute not in later:
                return None
            position, value = later[attribute]
            moved.add(position)
            attributes.add(attribute)
            pending.append(value)
    if not all(_computable(e, (names, attributes)) for e in expressions):
        return None
    return tuple(sorted(moved))


def _self_attributes_read(expression: cst.BaseExpression) -> set[str]:
    return {
        node.attr.value
        for node in walk(expression)
        if isinstance(node, cst.Attribute) and m.matches(node.value, m.Name("self"))
    }


def _bound_by_every_branch(init: cst.FunctionDef, index: int) -> set[str]:
    """Names that every branch of a top-level `if`/`elif`/`else` before statement `index` binds
    (`if a: width = x elif b: width = y else: width = z`)."""
    bound: set[str] = set()
    for statement in init.body.body[:index]:
        if not isinstance(statement, cst.If):
            continue
        branches: list[set[str]] = []
        node: cst.If | cst.Else | None = statement
        while isinstance(node, cst.If):
            branches.append(_bound_names(node.body.body))
            node = node.orelse
        if node is not None:
            branches.append(_bound_names(node.body.body))
            bound |= set.intersection(*branches)
    return bound


def _bound_names(statements: tuple[cst.BaseStatement, ...] | list[cst.BaseStatement]) -> set[str]:
    found: set[str] = set()
    for statement in statements:
        assignment = _single_assignment(statement)
        if assignment is not None and isinstance(assignment[0], cst.Name):
            found.add(assignment[0].value)
    return found


def _later_attributes(init: cst.FunctionDef, index: int) -> dict[str, tuple[int, cst.BaseExpression]]:
    """`self.x = value` (by position) set once, at the constructor's top level, after its statement
    `index`, to a value without calls (moving it cannot change what anything else computes)."""
    values: dict[str, tuple[int, cst.BaseExpression]] = {}
    counts: dict[str, int] = {}
    for statement in init.body.body:
        name = _assigned_attribute(statement)
        if name is not None:
            counts[name] = counts.get(name, 0) + 1
    for position, statement in enumerate(init.body.body[index + 1 :], index + 1):
        name = _assigned_attribute(statement)
        if name is not None and counts[name] == 1:
            value = statement.body[0].value  # type: ignore[attr-defined]
            if not any(isinstance(node, cst.Call) for node in walk(value)):
                values[name] = (position, value)
    return values


# --- the forward ------------------------------------------------------------------------------------------


def _split_forward(
    forward: cst.FunctionDef,
    call_index: int,
    split_index: int,
    targets: tuple[str, ...],
    parts: tuple[str, ...],
    call_input: cst.BaseExpression,
    layouts: tuple[_Layout, ...],
    eager_only: bool = False,
) -> cst.FunctionDef:
    """The fused call gone; the helper's call replaced by one viewed call per part, and the repeat of a
    part the helper broadcast (under the tests of the branches that did, and only for the eager kernel
    where the module keeps its config: `eager_only`)."""
    body = list(forward.body.body)
    shape = fresh_name("input_shape", names_in(forward))
    head_dim = layouts[0].head_dim
    new: list[cst.BaseStatement] = [
        cst.parse_statement(f"{shape} = {code(call_input)}.shape[:-1]"),
    ]
    for number, (target, part) in enumerate(zip(targets, parts, strict=True)):
        transpose = ".transpose(1, 2)" if layouts[0].transposed[number] else ""
        new.append(
            cst.parse_statement(
                f"{target} = self.{part}({code(call_input)}).view(*{shape}, -1, {code(head_dim)}){transpose}"
            )
        )
    for number, target in enumerate(targets):
        onto = {layout.expands[number] for layout in layouts}
        if onto == {None}:
            continue
        (other,) = onto - {None}  # one target per part across branches
        dim = -3 if layouts[0].transposed[number] else -2
        repeat = cst.parse_statement(
            f"{target} = {target}.repeat_interleave({targets[other]}.shape[{dim}] // {target}.shape[{dim}], dim={dim})"
        )
        condition = _condition([layout.expands[number] is not None for layout in layouts], layouts)
        if eager_only:  # the other kernels repeat K/V heads themselves (num_key_value_groups)
            eager = cst.parse_expression(f'self.config.{IMPLEMENTATION} == "eager"')
            condition = (
                eager if condition is None else cst.BooleanOperation(_grouped(condition), cst.And(), eager)
            )
        new.append(
            repeat if condition is None else cst.If(test=condition, body=cst.IndentedBlock(body=[repeat]))  # type: ignore[list-item]
        )
    new[0] = new[0].with_changes(leading_lines=body[call_index].leading_lines)  # type: ignore[union-attr]
    body[split_index : split_index + 1] = new
    del body[call_index]
    return forward.with_changes(body=forward.body.with_changes(body=body))


def _condition(taken: list[bool], layouts: tuple[_Layout, ...]) -> cst.BaseExpression | None:
    """The test under which a branch with `taken` runs, in the forward (None: always)."""
    if all(taken):
        return None
    clauses = []
    for number, (chosen, layout) in enumerate(zip(taken, layouts, strict=True)):
        if not chosen:
            continue
        terms = [cst.UnaryOperation(cst.Not(), _grouped(lay.test)) for lay in layouts[:number]]  # type: ignore[arg-type]
        if layout.test is not None:
            terms.append(layout.test)
        clause = terms[0]
        for term in terms[1:]:
            clause = cst.BooleanOperation(clause, cst.And(), term)
        clauses.append(clause)
    result = clauses[0]
    for clause in clauses[1:]:
        result = cst.BooleanOperation(_grouped(result), cst.Or(), _grouped(clause))
    return result
