"""A fused q|k|v projection split in the forward under a test of config flags, one layout per branch.

GPTBigCode's attention computes q, k and v with one linear and splits its output in the forward itself,
in a form that depends on a flag the constructor copied from the config:

    if self.multi_query:                                  # q | k | v one after the other, one K/V head
        query, key, value = self.c_attn(x).unsqueeze(1).split((self.embed_dim, self.kv_dim, self.kv_dim), dim=3)
        query = query.view(*input_shape, -1, self.head_dim).transpose(1, 2)
    else:                                                 # per head interleaved: [q0 k0 v0 q1 k1 v1 ...]
        query, key, value = (
            self.c_attn(x).view(*x.shape[:2], self.num_heads, 3 * self.head_dim).transpose(1, 2)
            .split(3 * [self.head_dim], dim=3)
        )

Each branch is one layout of the kind `SourceFusion` describes (G groups of rows, each holding a share of
every part in part order): the contiguous split is one group, the grouped view G groups of one head of
each part. The analysis reads the class as one linear per part, each part's size and the group count
written as conditional expressions over the branch tests (as `helper_fusions` does for a helper's
branches), so that the generated model is right for every value of the flags and the checkpoint spec
(NXS027) splits the fused tensor for whichever layout the config picks. Both branches leave every part
as `(batch, heads, seq, head_dim)`; the `if` becomes one call per part viewed so,
`self.q_proj(x).view(*shape, -1, head_dim).transpose(1, 2)`. A part the contiguous branch leaves as one
head of its whole width (`unsqueeze(1)`, not viewed again) is read as heads of `head_dim`: the same tensor
where its width is the head size, as the attention's product with the query's heads requires.

Only these forms are read: a branch is the unpacked split of `self.<linear>(x)`, either
`.unsqueeze(1)` (optional) then `.split((s1, ..., sn), dim=<last>)` followed by re-views
`t = t.view(<batch, seq>, h, head_dim).transpose(1, 2)` of its parts, or `.view(<batch, seq>, groups,
n * d).transpose(1, 2).split(n * [d], dim=<last>)`; every branch has an `else` and tests only `self`
attributes. Anything else stays as written and is refused (R007, R003). Nothing here names a model or a
flag: the tests are carried over as the source writes them.
"""

from __future__ import annotations

from dataclasses import dataclass

import libcst as cst
import libcst.matchers as m
from libcst.metadata import MetadataWrapper, PositionProvider

from ..blueprint import Location, SourceFusion
from ..syntax import code, fresh_name, names_in, walk
from .helper_fusions import _bound_by_every_branch, _choice, _hoisted, _reads_self_only, _times, _with_hoisted
from .source_fusions import (
    _assigned_attribute,
    _constructor_names,
    _linears,
    _part_names,
    _per_part,
    _single_assignment,
    _split_constructor,
    _uses,
)

VIEW_METHODS = ("view", "reshape")
TRANSPOSE_HEADS = m.Call(
    func=m.Attribute(attr=m.Name("transpose")),
    args=[m.Arg(value=m.Integer("1"), keyword=None), m.Arg(value=m.Integer("2"), keyword=None)],
)


@dataclass(frozen=True)
class _Branch:
    """One branch's layout: `groups` groups of rows (1: the parts one after the other), part p
    `sizes[p]` output features in all (forward terms), every part left as (batch, heads, seq, head_dim)."""

    test: cst.BaseExpression | None
    targets: tuple[str, ...]
    input: cst.BaseExpression
    sizes: tuple[cst.BaseExpression, ...]
    groups: cst.BaseExpression
    head_dim: cst.BaseExpression | None  # None: no part viewed into heads of a written size


def split_branch_fusions(
    module: cst.Module, display_path: str
) -> tuple[cst.Module, tuple[SourceFusion, ...]]:
    """`module` with every fused projection split under branch tests read as one linear per part."""
    splitter = _BranchSplitter(module, display_path)
    return module.visit(splitter), tuple(splitter.fusions)


class _BranchSplitter(cst.CSTTransformer):
    def __init__(self, module: cst.Module, display_path: str) -> None:
        super().__init__()
        self.module = module
        self.display_path = display_path
        self.fusions: list[SourceFusion] = []

    def visit_FunctionDef(self, node: cst.FunctionDef) -> bool:
        return False

    def leave_ClassDef(self, original_node: cst.ClassDef, updated_node: cst.ClassDef) -> cst.ClassDef:
        methods = {s.name.value: s for s in updated_node.body.body if isinstance(s, cst.FunctionDef)}
        init, forward = methods.get("__init__"), methods.get("forward")
        if init is None or forward is None:
            return updated_node
        for source, (index, call) in sorted(_linears(init).items(), key=lambda item: item[1][0]):
            found = _branch_split(forward, source)
            if found is None:
                continue
            at, branches = found
            if _uses(updated_node, source) != 1 + len(branches):  # built once, called once per branch
                continue
            terms = _constructor_terms(branches, forward, at, init, index)
            if terms is None:
                continue
            sizes, groups, hoisted = terms
            taken = names_in(updated_node) | {
                name for name in (_assigned_attribute(s) for s in init.body.body) if name
            }
            parts = _part_names(branches[0].targets, source, taken)
            line = self._line(original_node, index)
            init, index = _with_hoisted(init, index, hoisted)
            init, bias = _split_constructor(init, index, call, parts, sizes)
            forward = _split_forward(forward, at, branches, parts)
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
        ]
        return updated_node.with_changes(body=updated_node.body.with_changes(body=body))

    def _line(self, cls: cst.ClassDef, index: int) -> int:
        """The line of the constructor's statement `index` (positions cost a pass: only on a find)."""
        node: cst.CSTNode = cls
        for statement in cls.body.body:
            if isinstance(statement, cst.FunctionDef) and statement.name.value == "__init__":
                node = statement.body.body[index]
        positions = MetadataWrapper(self.module, unsafe_skip_copy=True).resolve(PositionProvider)
        return positions[node].start.line


# --- reading the branches ---------------------------------------------------------------------------------


def _branch_split(forward: cst.FunctionDef, source: str) -> tuple[int, tuple[_Branch, ...]] | None:
    """(position, branches) of the forward's top-level `if` whose every branch splits `self.<source>(x)`
    into the same names, each in a form read as a layout."""
    params = [p.name.value for p in forward.params.params]
    first = params[1] if len(params) > 1 and params[0] == "self" else None
    for position, statement in enumerate(forward.body.body):
        if not isinstance(statement, cst.If) or f"self.{source}(" not in code(statement):
            continue
        branches: list[_Branch] = []
        node: cst.If | cst.Else | None = statement
        while isinstance(node, cst.If):
            if not _reads_self_only(node.test):
                return None
            branch = _branch(node.test, list(node.body.body), source, first)
            if branch is None:
                return None
            branches.append(branch)
            node = node.orelse
        if node is None:
            return None  # no else: the parts may be computed another way
        branch = _branch(None, list(node.body.body), source, first)
        if branch is None:
            return None
        branches.append(branch)
        if len({b.targets for b in branches}) != 1 or len({code(b.input) for b in branches}) != 1:
            return None
        head_dims = {code(b.head_dim) for b in branches if b.head_dim is not None}
        if len(head_dims) != 1:
            return None
        return position, tuple(branches)
    return None


def _branch(
    test: cst.BaseExpression | None, body: list[cst.BaseStatement], source: str, first: str | None
) -> _Branch | None:
    """The branch's layout, when its first statement unpacks a split of `self.<source>(x)` and the rest
    only views its parts into heads. A split names its last dimension by number only where the linear
    reads the forward's first input (a block's hidden states: batch, sequence, features)."""
    if not body:
        return None
    assignment = _single_assignment(body[0])
    if assignment is None or not isinstance(assignment[0], cst.Tuple):
        return None
    target, value = assignment
    targets = tuple(e.value.value for e in target.elements if isinstance(e.value, cst.Name))
    if len(targets) < 2 or len(targets) != len(target.elements) or len(set(targets)) != len(targets):
        return None
    chain = _chain(value, source)
    if chain is None:
        return None
    call, methods = chain
    names = [method.func.attr.value for method in methods]  # type: ignore[attr-defined]
    call_input = call.args[0].value
    ndim = 4 if len(methods) > 1 else 3
    if names[-1] != "split" or not _splits_last(
        methods[-1], ndim, m.matches(call_input, m.Name(first or ""))
    ):
        return None
    if names[:-1] == ["view", "transpose"] and len(body) == 1:
        return _grouped_branch(test, targets, call_input, methods)
    if names[:-1] in ([], ["unsqueeze"]):
        if names[:-1] and not m.matches(methods[0], m.Call(args=[m.Arg(value=m.Integer("1"), keyword=None)])):
            return None
        return _contiguous_branch(test, targets, call_input, methods[-1], body[1:], one_head=bool(names[:-1]))
    return None


def _chain(value: cst.BaseExpression, source: str) -> tuple[cst.Call, list[cst.Call]] | None:
    """`self.<source>(x)` and the method calls made on its result, innermost first."""
    methods: list[cst.Call] = []
    node = value
    own = m.Call(func=m.Attribute(value=m.Name("self"), attr=m.Name(source)), args=[m.Arg(keyword=None)])
    while isinstance(node, cst.Call) and not m.matches(node, own):
        if not isinstance(node.func, cst.Attribute):
            return None
        methods.insert(0, node)
        node = node.func.value
    if not m.matches(node, own) or not methods:
        return None
    return node, methods  # type: ignore[return-value]


def _splits_last(split: cst.Call, ndim: int, numbered: bool) -> bool:
    """`.split(sizes, dim=d)` with `d` the last of `ndim` dimensions (`-1`, or its number where `numbered`)."""
    if (
        len(split.args) != 2
        or split.args[0].keyword is not None
        or not m.matches(split.args[1].keyword, m.Name("dim"))
    ):
        return False
    dim = split.args[1].value
    last = m.UnaryOperation(operator=m.Minus(), expression=m.Integer("1"))
    return m.matches(dim, last | m.Integer(str(ndim - 1)) if numbered else last)


def _contiguous_branch(
    test: cst.BaseExpression | None,
    targets: tuple[str, ...],
    call_input: cst.BaseExpression,
    split: cst.Call,
    rest: list[cst.BaseStatement],
    one_head: bool,
) -> _Branch | None:
    """`a, b, c = self.x(inp)[.unsqueeze(1)].split((s1, s2, s3), dim=<last>)`, then `t = t.view(<batch,
    seq>, h, d).transpose(1, 2)` for parts; without the `unsqueeze(1)` every part must be viewed so."""
    sizes = split.args[0].value
    if not isinstance(sizes, cst.Tuple | cst.List) or len(sizes.elements) != len(targets):
        return None
    if any(isinstance(e, cst.StarredElement) for e in sizes.elements):
        return None
    viewed: dict[str, cst.BaseExpression] = {}
    for statement in rest:
        assignment = _single_assignment(statement)
        if assignment is None or not isinstance(assignment[0], cst.Name):
            return None
        name = assignment[0].value
        head_dim = _heads_view(assignment[1], name)
        if name not in targets or name in viewed or head_dim is None:
            return None
        viewed[name] = head_dim
    if len({code(d) for d in viewed.values()}) > 1 or (not one_head and len(viewed) != len(targets)):
        return None
    return _Branch(
        test=test,
        targets=targets,
        input=call_input,
        sizes=tuple(e.value for e in sizes.elements),
        groups=cst.Integer("1"),
        head_dim=next(iter(viewed.values()), None),
    )


def _heads_view(value: cst.BaseExpression, name: str) -> cst.BaseExpression | None:
    """`d` of `name.view(<batch, seq>, h, d).transpose(1, 2)`: four dimensions, heads second."""
    if not m.matches(value, TRANSPOSE_HEADS):
        return None
    view = value.func.value  # type: ignore[attr-defined]
    if not (
        isinstance(view, cst.Call)
        and m.matches(view.func, m.Attribute(value=m.Name(name)))
        and view.func.attr.value in VIEW_METHODS  # type: ignore[attr-defined]
    ):
        return None
    shape = _four_dims(view)
    return None if shape is None else shape[-1]


def _four_dims(view: cst.Call) -> list[cst.BaseExpression] | None:
    """The last two elements of a view's shape `(<batch, seq>, a, b)`: its leading dimensions one starred
    element (`*input_shape`, a projection's input has batch and sequence dimensions) or two plain ones."""
    if any(arg.keyword for arg in view.args):
        return None
    items = [(arg.value, bool(arg.star)) for arg in view.args]
    if len(items) == 1 and isinstance(items[0][0], cst.Tuple):
        items = [(e.value, isinstance(e, cst.StarredElement)) for e in items[0][0].elements]
    if items and items[0][1] and len(items) == 3 and not items[1][1] and not items[2][1]:
        return [items[1][0], items[2][0]]
    if len(items) == 4 and not any(star for _, star in items):
        return [items[2][0], items[3][0]]
    return None


def _grouped_branch(
    test: cst.BaseExpression | None,
    targets: tuple[str, ...],
    call_input: cst.BaseExpression,
    methods: list[cst.Call],
) -> _Branch | None:
    """`a, b, c = self.x(inp).view(<batch, seq>, groups, n * d).transpose(1, 2).split(n * [d], dim=<last>)`:
    `groups` groups of one head of each part."""
    view, transpose, split = methods
    shape = _four_dims(view)
    if shape is None or not m.matches(transpose, TRANSPOSE_HEADS):
        return None
    groups, last = shape
    head_dim = _per_part(last, len(targets))
    if head_dim is None or _equal_sizes(split.args[0].value, len(targets)) != code(head_dim):
        return None
    return _Branch(
        test=test,
        targets=targets,
        input=call_input,
        sizes=(_times(groups, head_dim),) * len(targets),
        groups=groups,
        head_dim=head_dim,
    )


def _equal_sizes(sizes: cst.BaseExpression, count: int) -> str | None:
    """The code of `d` in `count * [d]`, `[d] * count` or a list or tuple of `count` times `d`."""
    if isinstance(sizes, cst.BinaryOperation) and isinstance(sizes.operator, cst.Multiply):
        for times, listed in ((sizes.left, sizes.right), (sizes.right, sizes.left)):
            if (
                m.matches(times, m.Integer(str(count)))
                and isinstance(listed, cst.List | cst.Tuple)
                and len(listed.elements) == 1
                and not isinstance(listed.elements[0], cst.StarredElement)
            ):
                return code(listed.elements[0].value)
        return None
    if isinstance(sizes, cst.List | cst.Tuple) and len(sizes.elements) == count:
        texts = {code(e.value) for e in sizes.elements if not isinstance(e, cst.StarredElement)}
        return texts.pop() if len(texts) == 1 and len(sizes.elements) == count else None
    return None


# --- the constructor's sizes ------------------------------------------------------------------------------


def _constructor_terms(
    branches: tuple[_Branch, ...], forward: cst.FunctionDef, at: int, init: cst.FunctionDef, index: int
) -> tuple[tuple[cst.BaseExpression, ...], cst.BaseExpression, tuple[int, ...]] | None:
    """Each part's output features and the group count, chosen by the branch tests, as the constructor
    computes them where it built the fused linear; the statements to move before it. None where a term
    reads one of the forward's own names (its value is the forward's, not the constructor's)."""
    sizes = tuple(
        _choice([(b.test, b.sizes[part]) for b in branches]) for part in range(len(branches[0].targets))
    )
    groups = _choice([(b.test, b.groups) for b in branches])
    forward_names = {p.name.value for p in forward.params.params} - {"self"}
    for statement in forward.body.body[:at]:
        assignment = _single_assignment(statement)
        if assignment is not None:
            forward_names |= names_in(assignment[0])
    expressions = (*sizes, groups)
    if any(names_in(e) & forward_names for e in expressions):
        return None
    names, attributes = _constructor_names(init, index)
    hoisted = _hoisted(expressions, init, index, (names | _bound_by_every_branch(init, index), attributes))
    if hoisted is None:
        return None
    return sizes, groups, hoisted


# --- the forward ------------------------------------------------------------------------------------------


def _split_forward(
    forward: cst.FunctionDef, at: int, branches: tuple[_Branch, ...], parts: tuple[str, ...]
) -> cst.FunctionDef:
    """The `if` replaced by one call per part, viewed as (batch, heads, seq, head_dim)."""
    body = list(forward.body.body)
    call_input = code(branches[0].input)
    head_dim = code(next(b.head_dim for b in branches if b.head_dim is not None))
    shape = _leading_shape(forward, at, call_input)
    new: list[cst.BaseStatement] = []
    if shape is None:
        shape = fresh_name("input_shape", names_in(forward))
        new.append(cst.parse_statement(f"{shape} = {call_input}.shape[:-1]"))
    for target, part in zip(branches[0].targets, parts, strict=True):
        new.append(
            cst.parse_statement(
                f"{target} = self.{part}({call_input}).view(*{shape}, -1, {head_dim}).transpose(1, 2)"
            )
        )
    new[0] = new[0].with_changes(leading_lines=body[at].leading_lines)  # type: ignore[union-attr]
    body[at : at + 1] = new
    return forward.with_changes(body=forward.body.with_changes(body=body))


def _leading_shape(forward: cst.FunctionDef, at: int, call_input: str) -> str | None:
    """The name of a top-level `shape = <input>.shape[:-1]` before statement `at`, the only binding of
    that name and of the input in the forward (so both still hold there)."""
    bindings: dict[str, int] = {}
    for node in walk(forward.body):
        if isinstance(node, cst.AssignTarget | cst.AugAssign | cst.AnnAssign):
            for name in names_in(node.target):
                bindings[name] = bindings.get(name, 0) + 1
    for statement in forward.body.body[:at]:
        assignment = _single_assignment(statement)
        if (
            assignment is not None
            and isinstance(assignment[0], cst.Name)
            and code(assignment[1]) == f"{call_input}.shape[:-1]"
            and bindings.get(assignment[0].value) == 1
            and call_input not in bindings
        ):
            return assignment[0].value
    return None
