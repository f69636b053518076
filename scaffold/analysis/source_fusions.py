"""Projections fused contiguously in the source, read as the separate linears they stand for.

Some transformers models compute several projections with one linear and split its output along the
features: `qkv = self.qkv_proj(x)` then `q = qkv[..., :a]`, `k = qkv[..., a : a + b]`, `v = qkv[..., a + b :]`,
or `gate, up = self.gate_up_proj(x).chunk(2, dim=-1)`. Column-splitting that one linear over the ranks
would give rank 0 all of q and none of v. The analysis therefore reads such a class as if it built one
linear per part (`self.query_proj = nn.Linear(in, a)`, ...) and called each on the input: everything
after (roles, the attention variants, the fused gate/up) sees a model of separate projections, and
`SourceFusion` records how the checkpoint's fused tensor splits into them, for NXS025 to map it.

A fused output viewed into groups before it is chunked, `qkv = self.qkv(x).view(*shape, -1, 3 * d)` then
`q, k, v = qkv.chunk(3, dim=-1)` (GPT-NeoX), interleaves the parts per group (per head: `[q0 k0 v0 q1 k1 v1
...]`). It is read the same way, each part viewed with last dimension `d` (`self.q_proj(x).view(*shape, -1,
d)`), and `SourceFusion.groups` records how many groups the checkpoint's rows form, so that NXS027's spec
de-interleaves them.

A fused output cut into groups by a statement of its own, `g = t.reshape(t.shape[:-1] + (groups, -1))`, then
split, `query, value, key = torch.split(g, size, dim=-1)` (CodeGen's `mp_num` groups of `q|v|k`), holds in
each group a share of every part, in the order of the split's targets. It is read as one linear per part in
that order, each part's output cut into the groups by the same statement, and `SourceFusion.groups` records
the group count; `groups_in_forward` says that the forward still cuts each rank's share so, which holds only
when the heads per rank are a multiple of the groups (NXS027 guards the constructor).

Only the patterns below are read this way; a split of any other shape stays as it is, and is refused
(R007, R003). The rewrite is structural: it names no model, only linears, views, slices and `chunk`.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping
from dataclasses import dataclass

import libcst as cst
import libcst.matchers as m
from libcst.metadata import CodeRange, MetadataWrapper, PositionProvider

from ..blueprint import CrossAttentionPruning, InputGuard, Location, SourceFusion
from ..source import ModelSource
from ..syntax import code, name_nodes, names_in, walk
from .conv1d import TransposedLinear, read_conv1d_as_linear
from .cross_attention import prune_cross_attention
from .current_forms import current_forms
from .head_pruning import without_head_pruning
from .linear_subclasses import read_as_linear
from .optional_inputs import optional_inputs
from .parsing import parse_module

LINEAR_CONSTRUCTORS = ("nn.Linear", "torch.nn.Linear")
VIEW_METHODS = ("view", "reshape")
STRIPPED_SUFFIXES = ("_states", "_state", "_layer", "_output", "_out")
SHORT_STEMS = {"query": "q", "key": "k", "value": "v"}  # the usual names of the parallel layers: q_proj...


@dataclass(frozen=True)
class ReadSource:
    """The modeling file as analysis and the rules read it, what was split, what was pruned of its
    cross-attention path, and the config flags it was read without (`optional_inputs`)."""

    module: cst.Module
    fusions: tuple[SourceFusion, ...]
    cross_attention: CrossAttentionPruning
    guards: tuple[InputGuard, ...]


def read_source(source: ModelSource) -> ReadSource:
    """The modeling file parsed, its cross-attention path read as absent (`cross_attention`), read with
    inputs built under a config flag off (`optional_inputs`), its Conv1D layers as linears stored
    transposed (`conv1d`), its pre-refactor forms read as the current ones (`current_forms`), its
    plain-linear subclasses as `nn.Linear` (`linear_subclasses`) and its fused projections as separate
    linears."""
    parsed = parse_module(source.read_text(), source.display_path)
    pruned, pruning = prune_cross_attention(parsed, source.display_path)
    pruned, guards = optional_inputs(pruned, source.display_path)
    pruned, transposed = read_conv1d_as_linear(
        without_head_pruning(pruned), source.package, source.display_path
    )
    module, fusions = split_source_fusions(read_as_linear(current_forms(pruned)), source.display_path)
    return ReadSource(module, with_transposed(fusions, transposed), pruning, guards)


def read_module(source: ModelSource) -> tuple[cst.Module, tuple[SourceFusion, ...]]:
    """`read_source`'s module and fusions (what analysis and the rules both work on)."""
    read = read_source(source)
    return read.module, read.fusions


def with_transposed(
    fusions: tuple[SourceFusion, ...], transposed: tuple[TransposedLinear, ...]
) -> tuple[SourceFusion, ...]:
    """The fusions, those of a linear stored transposed marked so, and such a linear that is not split
    as a fusion of one part (itself): its checkpoint tensor needs the transposing spec all the same."""
    marked = {(linear.owner, linear.attribute) for linear in transposed}
    result = [
        dataclasses.replace(f, transposed=True) if (f.owner, f.source_name) in marked else f for f in fusions
    ]
    split = {(f.owner, f.source_name) for f in fusions}
    result += [
        SourceFusion(
            owner=linear.owner,
            source_name=linear.attribute,
            part_names=(linear.attribute,),
            part_sizes=(linear.out_features,),
            bias="True",
            location=linear.location,
            transposed=True,
        )
        for linear in transposed
        if (linear.owner, linear.attribute) not in split
    ]
    return tuple(result)


def split_source_fusions(
    module: cst.Module, display_path: str
) -> tuple[cst.Module, tuple[SourceFusion, ...]]:
    """`module` with every recognised fused projection read as separate linears, and what was split
    (those a layout helper method splits first: `helper_fusions`; then those split under branch tests in
    the forward: `branch_fusions`)."""
    from .branch_fusions import split_branch_fusions  # they build on this module's readers
    from .helper_fusions import split_helper_fusions

    module, by_helpers = split_helper_fusions(module, display_path)
    module, by_branches = split_branch_fusions(module, display_path)
    splitter = _Splitter(module, display_path)
    result = module.visit(splitter)
    return result, (*by_helpers, *by_branches, *splitter.fusions)


@dataclass(frozen=True)
class _Split:
    """A fused call `target = self.<source>(input)` in the forward and the statements that split it."""

    source: str
    call_index: int
    split_indices: tuple[int, ...]
    targets: tuple[str, ...]
    sizes: tuple[cst.BaseExpression, ...]  # in forward terms; None-free
    input: cst.BaseExpression
    view: _GroupedView | None = None  # the fused output viewed into groups before the split
    elementwise: tuple[int, ...] = ()  # statements between the call and the split: `t = t.clamp(...)`
    groups_first: _GroupsFirst | None = None  # the fused output cut into groups by a statement of its own
    by_size: bool = False  # `t.split(size, ...)`: every part `size` features
    subscripted: str | None = (
        None  # `c = t.chunk(n, dim=-1)` read only as `c[i]`: `c[i]` becomes `targets[i]`
    )


@dataclass(frozen=True)
class _GroupsFirst:
    """`g = t.reshape(t.shape[:-1] + (groups, -1))` (or `view`, or `(*t.shape[:-1], groups, -1)`), statement
    `index` of the forward: the fused output cut into `groups` equal groups, each holding a share of every
    part in turn, before the groups are split into the parts (CodeGen's `qkv_split`, `mp_num` groups of
    `q|v|k`). Each part is then viewed the same way: the statement, reading the part instead of `t`."""

    index: int
    name: str
    groups: cst.BaseExpression  # in forward terms
    statement: cst.BaseStatement


@dataclass(frozen=True)
class _GroupedView:
    """`self.<source>(x).view(shape)` (then transposes), the shape's last element `n * group` for a
    split into `n` parts: each group of `n * group` output features holds `group` features of each part."""

    expression: cst.BaseExpression  # the fused statement's whole value
    last: cst.BaseExpression  # the shape's last element (`n * group`)
    shape_local: str | None  # the forward's local holding the shape (`hidden_shape`), if the view reads one
    group: cst.BaseExpression | None = None  # one part's features in one group, in forward terms


class _Splitter(cst.CSTTransformer):
    def __init__(self, module: cst.Module, display_path: str) -> None:
        super().__init__()
        self.module = module
        self.positions: Mapping[cst.CSTNode, CodeRange] | None = None  # computed once a fusion is found
        self.display_path = display_path
        self.fusions: list[SourceFusion] = []

    def visit_FunctionDef(self, node: cst.FunctionDef) -> bool:
        return False

    def leave_ClassDef(self, original_node: cst.ClassDef, updated_node: cst.ClassDef) -> cst.ClassDef:
        methods = {s.name.value: s for s in updated_node.body.body if isinstance(s, cst.FunctionDef)}
        init, forward = methods.get("__init__"), methods.get("forward")
        if init is None or forward is None:
            return updated_node
        linears = _linears(init)
        for source, (index, call) in sorted(linears.items(), key=lambda item: item[1][0]):
            if _uses(updated_node, source) != 2:  # built once and called once, nothing else reads it
                continue
            split = _find_split(forward, source)
            if split is None:
                continue
            sizes = _constructor_sizes(split, forward, init, index, call)
            if sizes is None:
                continue
            taken = names_in(updated_node) | {
                name for name in (_assigned_attribute(s) for s in init.body.body) if name
            }
            groups = None
            if split.view is not None:
                groups = _constructor_groups(split, sizes[0], forward, init, index)
                if groups is None:
                    continue
            elif split.groups_first is not None:
                groups = _constructor_expression(
                    split.groups_first.groups, forward, split.groups_first.index, init, index
                )
                if groups is None:
                    continue
            parts = _part_names(split.targets, source, taken)
            location = self._location(original_node, init.name.value, index)
            init, bias = _split_constructor(init, index, call, parts, sizes)
            forward = _split_forward(forward, split, parts)
            self.fusions.append(
                SourceFusion(
                    owner=updated_node.name.value,
                    source_name=source,
                    part_names=parts,
                    part_sizes=tuple(code(size) for size in sizes),
                    bias=bias,
                    location=location,
                    groups=None if groups is None else code(groups),
                    groups_in_forward=split.groups_first is not None,
                )
            )
        body = [
            init if s is methods["__init__"] else forward if s is methods["forward"] else s
            for s in updated_node.body.body
        ]
        return updated_node.with_changes(body=updated_node.body.with_changes(body=body))

    def _location(self, cls: cst.ClassDef, method: str, index: int) -> Location:
        if self.positions is None:  # positions cost a pass over the file: only files with a fusion pay it
            self.positions = MetadataWrapper(self.module, unsafe_skip_copy=True).resolve(PositionProvider)
        node: cst.CSTNode = cls
        for statement in cls.body.body:
            if isinstance(statement, cst.FunctionDef) and statement.name.value == method:
                node = statement.body.body[index]
        return Location(self.display_path, self.positions[node].start.line)


def _uses(cls: cst.ClassDef, attribute: str) -> int:
    """How often the class's code names `self.<attribute>`."""
    pattern = m.Attribute(value=m.Name("self"), attr=m.Name(attribute))
    return sum(1 for node in walk(cls) if m.matches(node, pattern))


def _assigned_attribute(statement: cst.BaseStatement) -> str | None:
    """`x` of a statement `self.x = ...`."""
    found = m.extract(
        statement,
        m.SimpleStatementLine(
            body=[
                m.Assign(
                    targets=[
                        m.AssignTarget(
                            target=m.Attribute(value=m.Name("self"), attr=m.SaveMatchedNode(m.Name(), "attr"))
                        )
                    ]
                )
            ]
        ),
    )
    return found["attr"].value if found else None  # type: ignore[union-attr]


def _linears(init: cst.FunctionDef) -> dict[str, tuple[int, cst.Call]]:
    """The constructor's top-level `self.x = nn.Linear(in, out, ...)`, by attribute (built once only)."""
    found: dict[str, tuple[int, cst.Call]] = {}
    seen: set[str] = set()
    for index, statement in enumerate(init.body.body):
        name = _assigned_attribute(statement)
        if name is None:
            continue
        value = statement.body[0].value  # type: ignore[attr-defined]
        positional = (
            isinstance(value, cst.Call)
            and len(value.args) >= 2
            and all(arg.keyword is None for arg in value.args[:2])
        )
        if name not in seen and positional and code(value.func) in LINEAR_CONSTRUCTORS:
            found[name] = (index, value)
        elif name in found:
            del found[name]
        seen.add(name)
    return found


def _single_assignment(
    statement: cst.BaseStatement,
) -> tuple[cst.BaseAssignTargetExpression, cst.BaseExpression] | None:
    if not isinstance(statement, cst.SimpleStatementLine) or len(statement.body) != 1:
        return None
    assign = statement.body[0]
    if not isinstance(assign, cst.Assign) or len(assign.targets) != 1:
        return None
    return assign.targets[0].target, assign.value


def _find_split(forward: cst.FunctionDef, source: str) -> _Split | None:
    """The forward's `t = self.<source>(x)` and the statements right after that split `t` and nothing else."""
    body = list(forward.body.body)
    for index, statement in enumerate(body):
        inline = _inline_chunk(statement, index, source) or _inline_split(statement, index, source, forward)
        if inline is not None:
            return inline
        assignment = _single_assignment(statement)
        if assignment is None or not isinstance(assignment[0], cst.Name):
            continue
        target, value = assignment
        view = _grouped_view(value, source, body, index)
        if view is None and not m.matches(value, _call_of(source)):
            continue
        fused = target.value
        if view is not None:
            split = _chunk_split(body, index, fused, source, _innermost_call(value).args[0].value)
            group = None if split is None else _per_part(view.last, len(split.targets))
            if split is None or group is None:
                return None
            split = dataclasses.replace(split, view=dataclasses.replace(view, group=group))
        else:
            call_input = value.args[0].value  # type: ignore[attr-defined]
            split = (
                _chunk_split(body, index, fused, source, call_input, _features_dims(forward, call_input))
                or _slice_split(body, index, fused, source, call_input)
                or _groups_first_split(body, index, fused, source, call_input)
            )
        if split is None:
            return None
        call_input = split.input
        split_statements = (index, *split.split_indices, *split.elementwise)
        if split.groups_first is not None:
            split_statements += (split.groups_first.index,)
        uses = sum(1 for i, s in enumerate(body) if i not in split_statements and fused in names_in(s))
        inputs = names_in(call_input)
        between = body[index + 1 : max(split.split_indices)]
        rebinds = any(_binds(s) & inputs for s in between)
        if uses and not (
            _rebound_by_split(body, split, fused) or _rebound_after_split(body, split_statements, fused)
        ):
            return None
        return None if rebinds else split
    return None


def _grouped_view(
    value: cst.BaseExpression, source: str, body: list[cst.BaseStatement], index: int
) -> _GroupedView | None:
    """`self.<source>(x).view(shape)`, then any `.transpose(i, j)` of literal dimensions that keep the
    last one last, as statement `index` of `body`; the shape written in the call or read from a tuple
    local that this statement alone reads. A starred part of the shape (`*input_shape`) counts as two
    dimensions: a projection's input has batch and sequence dimensions at least."""
    node, view, transposed = value, None, [0]
    while isinstance(node, cst.Call) and not m.matches(node, _call_of(source)):
        if not isinstance(node.func, cst.Attribute):
            return None
        method = node.func.attr.value
        if method in VIEW_METHODS and view is None:
            view = node
        elif method == "transpose" and view is None and _non_negative_literals(node):
            transposed += [int(arg.value.value) for arg in node.args]  # type: ignore[attr-defined]
        else:
            return None
        node = node.func.value
    if view is None or not m.matches(node, _call_of(source)) or any(arg.keyword for arg in view.args):
        return None
    local = None
    items = [(arg.value, bool(arg.star)) for arg in view.args]
    if len(view.args) == 1 and isinstance(view.args[0].value, cst.Name):
        local = view.args[0].value.value
        bound = [s for s in body[:index] if local in _binds(s)]
        readers = [i for i, s in enumerate(body) if i != index and local in names_in(s)]
        if len(bound) != 1 or len(readers) != 1 or body[readers[0]] is not bound[0]:
            return None  # rebound, or read elsewhere: rewriting it would change another use
        items = [(bound[0].body[0].value, False)]  # type: ignore[attr-defined]
    if len(items) == 1 and isinstance(items[0][0], cst.Tuple):
        items = [(e.value, isinstance(e, cst.StarredElement)) for e in items[0][0].elements]
    if len(items) < 2 or items[-1][1] or max(transposed) >= sum(2 if star else 1 for _, star in items) - 1:
        return None
    return _GroupedView(value, items[-1][0], local)


def _non_negative_literals(call: cst.Call) -> bool:
    return len(call.args) == 2 and all(
        arg.keyword is None and isinstance(arg.value, cst.Integer) for arg in call.args
    )


def _innermost_call(value: cst.BaseExpression) -> cst.Call:
    """The call `self.<source>(x)` under a chain of method calls on its result."""
    node = value
    while (
        isinstance(node, cst.Call)
        and isinstance(node.func, cst.Attribute)
        and not (m.matches(node.func.value, m.Name("self")))
    ):
        node = node.func.value
    assert isinstance(node, cst.Call)
    return node


def _per_part(last: cst.BaseExpression, count: int) -> cst.BaseExpression | None:
    """`size` of a group's extent `count * size` (or `size * count`)."""
    if isinstance(last, cst.BinaryOperation) and isinstance(last.operator, cst.Multiply):
        if m.matches(last.left, m.Integer(str(count))):
            return _ungrouped(last.right)
        if m.matches(last.right, m.Integer(str(count))):
            return _ungrouped(last.left)
    return None


def _features_dims(forward: cst.FunctionDef, call_input: cst.BaseExpression) -> tuple[int, ...]:
    """The dimensions that are the features of the linear's output: the last, and 2 when its input is the
    forward's first input (a block's hidden states: (batch, sequence, features), or (sequence, batch,
    features) under sequence parallelism)."""
    params = [param.name.value for param in forward.params.params]
    first = params[1] if len(params) > 1 and params[0] == "self" else None
    return (-1, 2) if first is not None and m.matches(call_input, m.Name(first)) else (-1,)


def _rebound_by_split(body: list[cst.BaseStatement], split: _Split, fused: str) -> bool:
    """The split binds the fused name again (`up, gate = up.chunk(2, dim=-1)`): later uses read a part."""
    return fused in split.targets


def _rebound_after_split(
    body: list[cst.BaseStatement], split_statements: tuple[int, ...], fused: str
) -> bool:
    """After the fused call, the fused name is read only by the split's statements and bound again, by a
    plain `t = <expression not reading t>`, in the first later statement that names it: later uses read
    the new value (reads before the call read an earlier value)."""
    first, last = min(split_statements), max(split_statements)
    between = [i for i in range(first, last + 1) if i not in split_statements and fused in names_in(body[i])]
    later = next((i for i in range(last + 1, len(body)) if fused in names_in(body[i])), None)
    if between or later is None:
        return False
    assignment = _single_assignment(body[later])
    return (
        assignment is not None
        and m.matches(assignment[0], m.Name(fused))
        and fused not in names_in(assignment[1])
    )


def _binds(statement: cst.BaseStatement) -> set[str]:
    assignment = _single_assignment(statement)
    if assignment is None:
        return set()
    return names_in(assignment[0])


def _chunk_split(
    body: list[cst.BaseStatement],
    index: int,
    fused: str,
    source: str,
    call_input: cst.BaseExpression,
    features_dims: tuple[int, ...] = (-1,),
) -> _Split | None:
    """`a, b = t.chunk(n, dim=-1)` as the next statement that reads `t`, after any statements that apply
    an elementwise method to `t` in place (`t = t.clamp(...)`, alone or under an `if` without `else`)."""
    elementwise: list[int] = []
    for later in range(index + 1, len(body)):
        if fused not in names_in(body[later]):
            continue
        if _elementwise_rebind(body[later], fused):
            elementwise.append(later)
            continue
        assignment = _single_assignment(body[later])
        if assignment is None:
            return None
        target, value = assignment
        names = _chunk_targets(target, value, m.Name(fused), features_dims)
        subscripted = None
        if names is None:
            subscripted = _subscripted_chunk(body, later, fused, features_dims)
            if subscripted is None:
                return None
            subscripted, names = subscripted
        return _Split(
            source,
            index,
            (later,),
            names,
            (),
            call_input,
            elementwise=tuple(elementwise),
            subscripted=subscripted,
        )
    return None


def _subscripted_chunk(
    body: list[cst.BaseStatement], at: int, fused: str, features_dims: tuple[int, ...]
) -> tuple[str, tuple[str, ...]] | None:
    """`(c, (c_0, ..., c_{n-1}))` for statement `at`, `c = t.chunk(n, dim=-1)` (or `torch.chunk(t, ...)`),
    when every other read of `c` in the forward is a constant subscript `c[i]`, `0 <= i < n`: the split
    `c_0, ..., c_{n-1} = t.chunk(n, dim=-1)` with `c[i]` read as `c_i` (fresh names, else None)."""
    assignment = _single_assignment(body[at])
    if assignment is None or not isinstance(assignment[0], cst.Name):
        return None
    target, value = assignment
    count = _chunk_count(value, m.Name(fused), features_dims)
    name = target.value
    if count is None or name == fused:
        return None
    for number, statement in enumerate(body):
        if number != at and name in names_in(statement) and not _only_subscripted(statement, name, count):
            return None
    taken = set().union(*(names_in(statement) for statement in body))
    names = tuple(f"{name}_{i}" for i in range(count))
    return None if taken & set(names) else (name, names)


BINDINGS = (cst.AssignTarget, cst.AugAssign, cst.AnnAssign, cst.For, cst.CompFor, cst.WithItem, cst.NamedExpr)


def _only_subscripted(statement: cst.BaseStatement, name: str, count: int) -> bool:
    """Every occurrence of `name` under `statement` is the value of `name[i]`, `i` a literal in `[0, count)`."""
    for node in walk(statement):
        target = getattr(node, "target", None) if isinstance(node, BINDINGS) else None
        if isinstance(node, cst.Del) or (target is not None and name in names_in(target)):
            return False  # `c[0] = ...`, `del c[0]`, `for c in ...`: not a read
    occurrences = [node for node in name_nodes(statement) if node.value == name]
    subscripted = [
        node.value for node in walk(statement) if _constant_subscript(node, name, count) is not None
    ]
    return len(occurrences) == len(subscripted) and all(
        any(node is value for value in subscripted) for node in occurrences
    )


def _constant_subscript(node: cst.CSTNode, name: str, count: int) -> int | None:
    """`i` when `node` is `name[i]`, `i` an integer literal in `[0, count)` (a load, not a target)."""
    if not m.matches(
        node,
        m.Subscript(
            value=m.Name(name),
            slice=[m.SubscriptElement(slice=m.Index(value=m.Integer(), star=None))],
        ),
    ):
        return None
    index = int(node.slice[0].slice.value.value)  # type: ignore[attr-defined]
    return index if 0 <= index < count else None


def _groups_first_split(
    body: list[cst.BaseStatement], index: int, fused: str, source: str, call_input: cst.BaseExpression
) -> _Split | None:
    """`g = t.reshape(t.shape[:-1] + (groups, -1))` as the next statement that reads `t`, then
    `a, b, c = torch.split(g, size, dim=-1)` (or `g.split(size, dim=-1)`, `g.chunk(n, dim=-1)`) as the
    next one that reads `g`: every group is cut into the same parts, so each part holds the same share of
    every group (the n names of a split by one size: n equal parts, as the part views require)."""
    later = next((i for i in range(index + 1, len(body)) if fused in names_in(body[i])), None)
    if later is None:
        return None
    grouped = _groups_view(body[later], fused)
    if grouped is None:
        return None
    name, groups = grouped
    split_at = next((i for i in range(later + 1, len(body)) if name in names_in(body[i])), None)
    if split_at is None:
        return None
    assignment = _single_assignment(body[split_at])
    if assignment is None:
        return None
    names = _chunk_targets(*assignment, m.Name(name)) or _split_targets(*assignment, name)
    if names is None or name in names:
        return None
    uses = [i for i, statement in enumerate(body) if name in names_in(statement)]
    if uses != [later, split_at]:
        return None  # the grouped tensor is read elsewhere
    first = _GroupsFirst(later, name, groups, body[later])
    return _Split(source, index, (split_at,), names, (), call_input, groups_first=first)


def _groups_view(statement: cst.BaseStatement, fused: str) -> tuple[str, cst.BaseExpression] | None:
    """`(g, groups)` of `g = t.reshape(t.shape[:-1] + (groups, -1))` (`view`, or `(*t.shape[:-1], groups,
    -1)`), with `t` the fused output."""
    assignment = _single_assignment(statement)
    if assignment is None or not isinstance(assignment[0], cst.Name):
        return None
    target, value = assignment
    view = m.Call(
        func=m.Attribute(value=m.Name(fused), attr=m.OneOf(*(m.Name(name) for name in VIEW_METHODS))),
        args=[m.Arg(keyword=None, star="")],
    )
    if not m.matches(value, view):
        return None
    shape = value.args[0].value  # type: ignore[attr-defined]
    leading = f"{fused}.shape[:-1]"
    minus_one = m.UnaryOperation(operator=m.Minus(), expression=m.Integer("1"))
    if (
        isinstance(shape, cst.BinaryOperation)
        and isinstance(shape.operator, cst.Add)
        and code(shape.left) == leading
        and isinstance(shape.right, cst.Tuple)
        and len(shape.right.elements) == 2
        and m.matches(shape.right.elements[1].value, minus_one)
        and not isinstance(shape.right.elements[0], cst.StarredElement)
    ):
        return target.value, shape.right.elements[0].value
    if (
        isinstance(shape, cst.Tuple)
        and len(shape.elements) == 3
        and isinstance(shape.elements[0], cst.StarredElement)
        and code(shape.elements[0].value) == leading
        and m.matches(shape.elements[2].value, minus_one)
        and not isinstance(shape.elements[1], cst.StarredElement)
    ):
        return target.value, shape.elements[1].value
    return None


def _split_targets(
    target: cst.BaseAssignTargetExpression, value: cst.BaseExpression, receiver: str
) -> tuple[str, ...] | None:
    """The names of `a, b, c = torch.split(g, size, dim=-1)` or `g.split(size, dim=-1)` (one size, not a
    list of sizes), else None."""
    minus_one = m.UnaryOperation(operator=m.Minus(), expression=m.Integer("1"))
    size = m.Arg(value=~m.List() & ~m.Tuple(), keyword=None, star="")
    dim = m.Arg(value=minus_one, keyword=m.Name("dim"))
    function = m.Call(
        func=m.Attribute(value=m.Name("torch"), attr=m.Name("split")),
        args=[m.Arg(value=m.Name(receiver), keyword=None, star=""), size, dim],
    )
    method = m.Call(func=m.Attribute(value=m.Name(receiver), attr=m.Name("split")), args=[size, dim])
    if not m.matches(value, function | method) or not isinstance(target, cst.Tuple):
        return None
    names = [e.value.value for e in target.elements if isinstance(e.value, cst.Name)]
    if len(names) < 2 or len(names) != len(target.elements):
        return None
    return tuple(names)


ELEMENTWISE_METHODS = ("clamp", "clip")


def _elementwise_rebind(statement: cst.BaseStatement, fused: str) -> bool:
    """`t = t.clamp(...)` (arguments not reading `t`), or that alone under an `if` (whose test does not
    read `t`) without `else`: it commutes with a split of `t` along its features."""
    if isinstance(statement, cst.If):
        body = statement.body.body
        return (
            statement.orelse is None
            and fused not in names_in(statement.test)
            and len(body) == 1
            and _elementwise_rebind(body[0], fused)
        )
    assignment = _single_assignment(statement)
    if assignment is None or not m.matches(assignment[0], m.Name(fused)):
        return False
    value = assignment[1]
    return (
        isinstance(value, cst.Call)
        and m.matches(value.func, m.Attribute(value=m.Name(fused)))
        and value.func.attr.value in ELEMENTWISE_METHODS  # type: ignore[attr-defined]
        and not any(fused in names_in(arg) for arg in value.args)
    )


def _inline_chunk(statement: cst.BaseStatement, index: int, source: str) -> _Split | None:
    """`a, b = self.<source>(x).chunk(n, dim=-1)`: the call and its split in one statement."""
    assignment = _single_assignment(statement)
    if assignment is None:
        return None
    target, value = assignment
    names = _chunk_targets(target, value, _call_of(source))
    if names is None:
        return None
    call_input = _chunked(value).args[0].value  # type: ignore[attr-defined]
    return _Split(source, index, (index,), names, (), call_input)


def _inline_split(
    statement: cst.BaseStatement, index: int, source: str, forward: cst.FunctionDef
) -> _Split | None:
    """`a, b, c = self.<source>(x).split(size, dim=d)`, `d` a dimension of the features: parts of `size`
    features each (exact when the linear has `n * size`; otherwise the spec's split of the checkpoint
    tensor fails when loading, as the source's own unpacking would)."""
    assignment = _single_assignment(statement)
    if assignment is None or not isinstance(assignment[0], cst.Tuple):
        return None
    target, value = assignment
    call = m.Call(
        func=m.Attribute(value=_call_of(source), attr=m.Name("split")),
        args=[m.Arg(keyword=None), m.Arg(value=m.Integer() | m.UnaryOperation(), keyword=m.Name("dim"))],
    )
    if not m.matches(value, call):
        return None
    call_input = value.func.value.args[0].value  # type: ignore[attr-defined]
    dim = value.args[1].value  # type: ignore[attr-defined]
    dim_value = -int(dim.expression.value) if isinstance(dim, cst.UnaryOperation) else int(dim.value)
    size = value.args[0].value  # type: ignore[attr-defined]
    names = [e.value.value for e in target.elements if isinstance(e.value, cst.Name)]
    if (
        dim_value not in _features_dims(forward, call_input)
        or len(names) != len(target.elements)
        or len(names) < 2
        or isinstance(size, cst.List | cst.Tuple)
    ):
        return None
    return _Split(source, index, (index,), tuple(names), (size,) * len(names), call_input, by_size=True)


def _call_of(source: str) -> m.Call:
    return m.Call(func=m.Attribute(value=m.Name("self"), attr=m.Name(source)), args=[m.Arg(keyword=None)])


def _chunk_targets(
    target: cst.BaseAssignTargetExpression,
    value: cst.BaseExpression,
    receiver: m.BaseMatcherNode,
    features_dims: tuple[int, ...] = (-1,),
) -> tuple[str, ...] | None:
    """The names `a, b` of `a, b = <receiver>.chunk(n, dim=d)` (n names, `d` one of `features_dims`, the
    dimensions that are the features), else None."""
    count = _chunk_count(value, receiver, features_dims)
    if count is None or not isinstance(target, cst.Tuple):
        return None
    names = [e.value.value for e in target.elements if isinstance(e.value, cst.Name)]
    if len(names) != count or len(target.elements) != count:
        return None
    return tuple(names)


def _chunk_count(
    value: cst.BaseExpression, receiver: m.BaseMatcherNode, features_dims: tuple[int, ...] = (-1,)
) -> int | None:
    """`n` of `<receiver>.chunk(n, dim=d)` or `torch.chunk(<receiver>, n, dim=d)`, `d` one of
    `features_dims`, else None."""
    dims = [
        m.UnaryOperation(operator=m.Minus(), expression=m.Integer(str(-dim)))
        if dim < 0
        else m.Integer(str(dim))
        for dim in features_dims
    ]
    count = m.Arg(value=m.Integer(), keyword=None, star="")
    dim = m.Arg(value=m.OneOf(*dims) if len(dims) > 1 else dims[0], keyword=m.Name("dim"))
    method = m.Call(func=m.Attribute(value=receiver, attr=m.Name("chunk")), args=[count, dim])  # type: ignore[arg-type]
    function = m.Call(
        func=m.Attribute(value=m.Name("torch"), attr=m.Name("chunk")),
        args=[m.Arg(value=receiver, keyword=None, star=""), count, dim],  # type: ignore[arg-type]
    )
    if not m.matches(value, method | function):
        return None
    return int(value.args[-2].value.value)  # type: ignore[attr-defined]


def _chunked(value: cst.BaseExpression) -> cst.BaseExpression:
    """The tensor chunked by `value` (`t` of `t.chunk(...)` or `torch.chunk(t, ...)`)."""
    assert isinstance(value, cst.Call)
    if isinstance(value.func, cst.Attribute) and value.func.attr.value == "chunk" and len(value.args) == 2:
        return value.func.value
    return value.args[0].value


def _slice_split(
    body: list[cst.BaseStatement], index: int, fused: str, source: str, call_input: cst.BaseExpression
) -> _Split | None:
    """Consecutive `a = t[..., :x]`, `b = t[..., x:y]`, ..., `c = t[..., z:]` (others may come between)."""
    indices: list[int] = []
    targets: list[str] = []
    bounds: list[tuple[cst.BaseExpression | None, cst.BaseExpression | None]] = []
    for later in range(index + 1, len(body)):
        if fused not in names_in(body[later]):
            continue
        assignment = _single_assignment(body[later])
        if assignment is None or not isinstance(assignment[0], cst.Name):
            break
        value = assignment[1]
        pattern = m.Subscript(
            value=m.Name(fused),
            slice=[
                m.SubscriptElement(slice=m.Index(value=m.Ellipsis())),
                m.SubscriptElement(slice=m.Slice(step=None)),
            ],
        )
        if not m.matches(value, pattern):
            break
        piece = value.slice[1].slice  # type: ignore[attr-defined]
        indices.append(later)
        targets.append(assignment[0].value)
        bounds.append((piece.lower, piece.upper))
    if len(bounds) < 2 or bounds[0][0] is not None or bounds[-1][1] is not None:
        return None
    for (_, upper), (lower, _) in itertools.pairwise(bounds):
        if upper is None or lower is None or code(upper) != code(lower):
            return None
    sizes: list[cst.BaseExpression] = []
    for lower, upper in bounds[:-1]:
        assert upper is not None
        if lower is None:
            sizes.append(upper)
        elif (
            isinstance(upper, cst.BinaryOperation)
            and isinstance(upper.operator, cst.Add)
            and code(upper.left) == code(lower)
        ):
            sizes.append(upper.right)
        else:
            sizes.append(cst.BinaryOperation(_grouped(upper), cst.Subtract(), _grouped(lower)))
    return _Split(source, index, tuple(indices), tuple(targets), tuple(sizes), call_input)


def _ungrouped(expression: cst.BaseExpression) -> cst.BaseExpression:
    return expression.with_changes(lpar=[], rpar=[]) if expression.lpar else expression  # type: ignore[attr-defined]


def _grouped(expression: cst.BaseExpression) -> cst.BaseExpression:
    if isinstance(expression, cst.BinaryOperation | cst.UnaryOperation | cst.BooleanOperation | cst.IfExp):
        return expression.with_changes(lpar=[cst.LeftParen()], rpar=[cst.RightParen()])
    return expression


class _Substitute(cst.CSTTransformer):
    """Forward locals replaced by their values (the constructor computes the sizes again)."""

    def __init__(self, values: dict[str, cst.BaseExpression]) -> None:
        super().__init__()
        self.values = values

    def leave_Name(self, original_node: cst.Name, updated_node: cst.Name) -> cst.BaseExpression:
        value = self.values.get(updated_node.value)
        return _grouped(value) if value is not None else updated_node

    def leave_Attribute(
        self, original_node: cst.Attribute, updated_node: cst.Attribute
    ) -> cst.BaseExpression:
        return updated_node.with_changes(attr=original_node.attr)  # `x.name` is no local `name`


def _constructor_sizes(
    split: _Split, forward: cst.FunctionDef, init: cst.FunctionDef, index: int, call: cst.Call
) -> tuple[cst.BaseExpression, ...] | None:
    """Each part's output features as an expression the constructor can compute where it built the
    linear (None when a size reads something only the forward has)."""
    out = call.args[1].value
    count = len(split.targets)
    if not split.sizes:  # chunk: equal parts
        if isinstance(out, cst.BinaryOperation) and isinstance(out.operator, cst.Multiply):
            if m.matches(out.left, m.Integer(str(count))):  # `n * size`
                return (_ungrouped(out.right),) * count
            if m.matches(out.right, m.Integer(str(count))):  # `size * n`
                return (_ungrouped(out.left),) * count
        return (cst.BinaryOperation(_grouped(out), cst.FloorDivide(), cst.Integer(str(count))),) * count
    locals_ = {}
    for statement in forward.body.body[: split.split_indices[0]]:
        assignment = _single_assignment(statement)
        if assignment is not None and isinstance(assignment[0], cst.Name):
            locals_[assignment[0].value] = assignment[1]
    sizes = [_ungrouped(size.visit(_Substitute(locals_))) for size in split.sizes]
    if split.by_size:  # the size's own value: rules may give an attribute of the source a per-rank meaning
        attributes = _attribute_values(init, index)
        sizes = [attributes.get(_self_attribute_name(size), size) for size in sizes]
    if len(sizes) < count:  # slices: the last part is what remains
        total = sizes[0] if len(sizes) == 1 else _sum(sizes)
        sizes.append(cst.BinaryOperation(_grouped(out), cst.Subtract(), _grouped(total)))
    available = _constructor_names(init, index)
    for size in sizes:
        if not _computable(size, available):  # type: ignore[arg-type]
            return None
    return tuple(sizes)  # type: ignore[arg-type]


def _constructor_groups(
    split: _Split,
    size: cst.BaseExpression,
    forward: cst.FunctionDef,
    init: cst.FunctionDef,
    index: int,
) -> cst.BaseExpression | None:
    """How many groups the fused output holds (one part's size over its extent in a group), as an
    expression the constructor can compute where it built the linear."""
    assert split.view is not None and split.view.group is not None
    locals_ = {}
    for statement in forward.body.body[: split.call_index]:
        assignment = _single_assignment(statement)
        if assignment is not None and isinstance(assignment[0], cst.Name):
            locals_[assignment[0].value] = assignment[1]
    group = _ungrouped(split.view.group.visit(_Substitute(locals_)))
    groups = cst.BinaryOperation(_grouped(size), cst.FloorDivide(), _grouped(group))
    return groups if _computable(groups, _constructor_names(init, index)) else None


def _constructor_expression(
    expression: cst.BaseExpression, forward: cst.FunctionDef, before: int, init: cst.FunctionDef, index: int
) -> cst.BaseExpression | None:
    """`expression`, read in the forward before its statement `before`, with the forward's locals replaced
    by their values: when the constructor can compute it where it built the linear (statement `index`)."""
    locals_ = {}
    for statement in forward.body.body[:before]:
        assignment = _single_assignment(statement)
        if assignment is not None and isinstance(assignment[0], cst.Name):
            locals_[assignment[0].value] = assignment[1]
    value = _ungrouped(expression.visit(_Substitute(locals_)))  # type: ignore[arg-type]
    return value if _computable(value, _constructor_names(init, index)) else None


def _sum(sizes: list[cst.BaseExpression]) -> cst.BaseExpression:
    total = sizes[0]
    for size in sizes[1:]:
        total = cst.BinaryOperation(total, cst.Add(), size)
    return total


def _self_attribute_name(node: cst.BaseExpression) -> str:
    return node.attr.value if m.matches(node, m.Attribute(value=m.Name("self"))) else ""  # type: ignore[attr-defined]


def _attribute_values(init: cst.FunctionDef, index: int) -> dict[str, cst.BaseExpression]:
    """`attr -> value` for the attributes the constructor assigns exactly once, `self.attr = value`,
    before its statement `index`."""
    values: dict[str, cst.BaseExpression] = {}
    counts: dict[str, int] = {}
    for statement in init.body.body[:index]:
        assignment = _single_assignment(statement)
        if assignment is not None and m.matches(assignment[0], m.Attribute(value=m.Name("self"))):
            name = assignment[0].attr.value  # type: ignore[attr-defined]
            counts[name] = counts.get(name, 0) + 1
            values[name] = assignment[1]
    return {name: value for name, value in values.items() if counts[name] == 1}


def _constructor_names(init: cst.FunctionDef, index: int) -> tuple[set[str], set[str]]:
    """(names, self attributes) bound in the constructor before its statement `index`."""
    names = {param.name.value for param in init.params.params}
    attributes: set[str] = set()
    for statement in init.body.body[:index]:
        assignment = _single_assignment(statement)
        if assignment is None:
            continue
        target = assignment[0]
        if isinstance(target, cst.Name):
            names.add(target.value)
        elif m.matches(target, m.Attribute(value=m.Name("self"))):
            attributes.add(target.attr.value)  # type: ignore[attr-defined]
    return names, attributes


def _computable(size: cst.BaseExpression, available: tuple[set[str], set[str]]) -> bool:
    names, attributes = available
    for node in _walk(size):
        if (
            m.matches(node, m.Attribute(value=m.Name("self"))) and node.attr.value not in attributes  # type: ignore[attr-defined]
        ):
            return False
    free = {
        node.value
        for node in _walk(size)
        if isinstance(node, cst.Name) and not _is_attribute_name(size, node)
    }
    return free <= names | {"self"}


def _walk(node: cst.CSTNode) -> list[cst.CSTNode]:
    return list(walk(node))


def _is_attribute_name(root: cst.CSTNode, name: cst.Name) -> bool:
    """`name` is the `.attr` part of an attribute access under `root`."""
    return any(isinstance(node, cst.Attribute) and node.attr is name for node in _walk(root))


def _part_names(targets: tuple[str, ...], source: str, taken: set[str]) -> tuple[str, ...]:
    """`query_states` -> `q_proj`, `gate` -> `gate_proj` (a fresh name where one is taken)."""
    names: list[str] = []
    for index, target in enumerate(targets):
        stem = target
        for suffix in STRIPPED_SUFFIXES:
            if stem.endswith(suffix) and len(stem) > len(suffix):
                stem = stem[: -len(suffix)]
                break
        stem = SHORT_STEMS.get(stem, stem)
        name = stem if stem.endswith("_proj") else f"{stem}_proj"
        if name in taken or name in names or name == source:
            name = f"{source}_{index}"
        names.append(name)
    return tuple(names)


def _split_constructor(
    init: cst.FunctionDef,
    index: int,
    call: cst.Call,
    parts: tuple[str, ...],
    sizes: tuple[cst.BaseExpression, ...],
) -> tuple[cst.FunctionDef, str]:
    body = list(init.body.body)
    original = body[index]
    new: list[cst.BaseStatement] = []
    for number, (part, size) in enumerate(zip(parts, sizes, strict=True)):
        args = list(call.args)
        args[1] = args[1].with_changes(value=size)
        statement = cst.SimpleStatementLine(
            body=[
                cst.Assign(
                    targets=[cst.AssignTarget(cst.Attribute(cst.Name("self"), cst.Name(part)))],
                    value=call.with_changes(args=args),
                )
            ]
        )
        if number == 0:
            statement = statement.with_changes(leading_lines=original.leading_lines)  # type: ignore[union-attr]
        new.append(statement)
    body[index : index + 1] = new
    bias = next((code(arg.value) for arg in call.args if arg.keyword and arg.keyword.value == "bias"), None)
    if bias is None:
        bias = code(call.args[2].value) if len(call.args) > 2 and call.args[2].keyword is None else "True"
    return init.with_changes(body=init.body.with_changes(body=body)), bias


def _split_forward(forward: cst.FunctionDef, split: _Split, parts: tuple[str, ...]) -> cst.FunctionDef:
    body = list(forward.body.body)
    view = split.view
    if view is not None and view.shape_local is not None:  # the shape local now views one part
        assert view.group is not None
        body = [
            s.visit(_Replace({view.last: view.group})) if view.shape_local in _binds(s) else s  # type: ignore[misc]
            for s in body
        ]
    calls = [
        cst.SimpleStatementLine(
            body=[
                cst.Assign(
                    targets=[cst.AssignTarget(cst.Name(target))],
                    value=_part_value(split, part),
                )
            ]
        )
        for target, part in zip(split.targets, parts, strict=True)
    ]
    if split.groups_first is not None:  # each part cut into the groups as the fused output was
        first = split.groups_first
        fused = _assigned_name(body[split.call_index])
        calls = [
            statement
            for call, target in zip(calls, split.targets, strict=True)
            for statement in (
                call,
                first.statement.visit(
                    _Substitute({fused: cst.Name(target), first.name: cst.Name(target)})
                ).with_changes(leading_lines=[]),
            )
        ]
    replaced: dict[int, list[cst.BaseStatement]] = {split.call_index: []}
    if split.groups_first is not None:
        replaced[split.groups_first.index] = []
    for index in split.elementwise:  # applied to each part once the parts are computed
        replaced[index] = []
        fused = _assigned_name(body[split.call_index])
        calls.extend(_each_part(body[index], fused, split.targets))  # type: ignore[arg-type]
    if len(split.split_indices) == 1:  # `a, b = t.chunk(2, dim=-1)`: one statement per part
        replaced[split.split_indices[0]] = calls  # type: ignore[assignment]
    else:
        for index, call in zip(split.split_indices, calls, strict=True):
            replaced[index] = [call]
    leading = body[split.call_index].leading_lines  # type: ignore[attr-defined]
    new: list[cst.BaseStatement] = []
    for index, statement in enumerate(body):
        if index in replaced:
            statements = replaced[index]
            if statements and index == min(split.split_indices):
                statements = [
                    statements[0].with_changes(leading_lines=leading),
                    *statements[1:],
                ]
            new.extend(statements)
        else:
            new.append(statement)
    if split.subscripted is not None:  # `c[i]` reads part i
        parts_of = _PartSubscripts(split.subscripted, split.targets)
        new = [statement.visit(parts_of) for statement in new]  # type: ignore[misc]
    split_names: set[str] = set()
    for index in split.split_indices:
        split_names |= names_in(body[index])
    return _without_dead_locals(forward.with_changes(body=forward.body.with_changes(body=new)), split_names)


def _assigned_name(statement: cst.BaseStatement) -> str:
    assignment = _single_assignment(statement)
    assert assignment is not None and isinstance(assignment[0], cst.Name)
    return assignment[0].value


def _each_part(statement: cst.BaseStatement, fused: str, targets: tuple[str, ...]) -> list[cst.BaseStatement]:
    """An elementwise rebind of the fused output (`t = t.clamp(...)`, maybe under an `if`) applied to
    every part instead."""
    if isinstance(statement, cst.If):
        inner = statement.body.body[0]
        each = [inner.visit(_Substitute({fused: cst.Name(target)})) for target in targets]
        return [statement.with_changes(body=statement.body.with_changes(body=each))]
    return [statement.visit(_Substitute({fused: cst.Name(target)})) for target in targets]  # type: ignore[misc]


def _part_value(split: _Split, part: str) -> cst.BaseExpression:
    """`self.<part>(x)`, viewed as the fused output was with one part's extent per group."""
    call = cst.Call(func=cst.Attribute(cst.Name("self"), cst.Name(part)), args=[cst.Arg(split.input)])
    view = split.view
    if view is None:
        return call
    assert view.group is not None
    replacements: dict[cst.CSTNode, cst.CSTNode] = {_innermost_call(view.expression): call}
    if view.shape_local is None:
        replacements[view.last] = view.group
    return view.expression.visit(_Replace(replacements))  # type: ignore[return-value]


class _PartSubscripts(cst.CSTTransformer):
    """`c[i]` (an integer literal `i`) replaced by the name of part `i`."""

    def __init__(self, name: str, targets: tuple[str, ...]) -> None:
        super().__init__()
        self.name = name
        self.targets = targets

    def leave_Subscript(
        self, original_node: cst.Subscript, updated_node: cst.Subscript
    ) -> cst.BaseExpression:
        index = _constant_subscript(original_node, self.name, len(self.targets))
        if index is None:
            return updated_node
        return cst.Name(self.targets[index], lpar=updated_node.lpar, rpar=updated_node.rpar)


class _Replace(cst.CSTTransformer):
    """Nodes (by identity) replaced by others."""

    def __init__(self, replacements: Mapping[cst.CSTNode, cst.CSTNode]) -> None:
        super().__init__()
        self.replacements = {id(old): new for old, new in replacements.items()}

    def on_leave(self, original_node: cst.CSTNode, updated_node: cst.CSTNode) -> cst.CSTNode:  # type: ignore[override]
        return self.replacements.get(id(original_node), updated_node)


def _without_dead_locals(forward: cst.FunctionDef, candidates: set[str]) -> cst.FunctionDef:
    """Drop top-level `name = ...` statements that only the split read (its sizes), now unread."""
    body = list(forward.body.body)
    while True:
        dead = None
        for index, statement in enumerate(body):
            assignment = _single_assignment(statement)
            if assignment is None or not isinstance(assignment[0], cst.Name):
                continue
            name = assignment[0].value
            unread = not any(name in names_in(other) for i, other in enumerate(body) if i != index)
            if unread and name in candidates and _pure(assignment[1]):
                dead = index
                break
        if dead is None:
            break
        statement = body.pop(dead)
        if dead < len(body) and statement.leading_lines:  # type: ignore[attr-defined]
            body[dead] = body[dead].with_changes(
                leading_lines=[*statement.leading_lines, *body[dead].leading_lines]  # type: ignore[attr-defined]
            )
    return forward.with_changes(body=forward.body.with_changes(body=body))


def _pure(value: cst.BaseExpression) -> bool:
    """Arithmetic on names and attributes only (no call): safe to drop when unused."""
    return not any(isinstance(node, cst.Call | cst.Subscript) for node in _walk(value))
