"""Attention over heads folded into the batch, `torch.bmm` on (B*h, S, d), read as the 4-D matmul form.

Older attention forwards fold the heads into the batch before the kernel: `P = (bsz * h, -1, d)`, then
`x = x.reshape(*P)` (or `.view`) for the query, keys and values, `w = torch.bmm(q, k.transpose(1, 2))`,
views of the scores between (B*h, T, S) and (B, h, T, S) around the mask and head-mask steps, `o =
torch.bmm(p, v)`, then `o = o.view(bsz, h, T, d)` before the transpose back. On (B, h, S, d) tensors the
same steps are the current matmul kernel, which `current_forms` already reads, so this rewrites the first
form into the second, in the forward, before that reading:

- the three folding statements go (and the shape tuple where nothing else reads it);
- `torch.bmm(a, b)` -> `torch.matmul(a, b)`, and `t.transpose(1, 2)` of a folded tensor -> `t.transpose(2,
  3)` (the last two dimensions either way);
- a view or reshape of a folded tensor (or of one computed from them) to 3 or 4 sizes is the identity in
  4-D: the tensor itself; `t.size(i)` for i = 1, 2 reads `t.size(i + 1)`;
- size checks (`if <...size()...>: raise ...`) between them go: they read the folded layout and the
  unsharded head count;
- what is left as `x = x`, or `y = x` right after `x = y`, goes.

Only a forward with exactly three folded tensors, scores from a `bmm` of two of them, a second `bmm` with
the third, and the output viewed back to 4 sizes is rewritten; anything else is left as written (R027).
Removed lines become blank lines after the rewritten statements, so later lines keep their numbers.
"""

from __future__ import annotations

import libcst as cst
import libcst.matchers as m

from ..syntax import code, names_in, walk

BMM = m.Call(func=m.Attribute(value=m.Name("torch"), attr=m.Name("bmm")))
RESHAPES = frozenset({"view", "reshape"})


def batched_as_matmul(forward: cst.FunctionDef) -> cst.FunctionDef:
    """`forward` with its folded-heads kernel in the 4-D form (unchanged when it has none)."""
    if not isinstance(forward.body, cst.IndentedBlock):
        return forward
    body = list(forward.body.body)
    shapes = _folded_shapes(body)
    folds = [(i, name) for i, s in enumerate(body) if (name := _fold(s, shapes)) is not None]
    if len(folds) != 3 or len({name for _, name in folds}) != 3:
        return forward
    folded = {name for _, name in folds}
    first = folds[0][0]
    end = _output_view(body, first, folded)
    if end is None:
        return forward
    tracked = _computed_from(body[first : end + 1], folded)
    drop = {i for i, _ in folds}
    definitions = {
        i: a[0] for i, s in enumerate(body) if (a := _assignment(s)) is not None and a[0] in shapes
    }
    readers = [s for i, s in enumerate(body) if i not in drop and i not in definitions]
    used = {shape for shape in shapes if any(shape in names_in(s) for s in readers)}
    drop |= {i for i, shape in definitions.items() if shape not in used}
    kept: list[cst.BaseStatement] = []
    for index, statement in enumerate(body[first : end + 1], first):
        if index in drop or _size_check(statement):
            continue
        new = statement.visit(_FourD(tracked))
        if isinstance(new, cst.RemovalSentinel) or new is None:
            continue
        kept.append(new)  # type: ignore[arg-type]
    kept = _without_aliases(kept)
    if kept is None:
        return forward
    before = [s for i, s in enumerate(body[:first]) if i not in drop]
    rest = list(body[end + 1 :])
    missing = sum(_line_count(s) for s in body[: end + 1]) - sum(_line_count(s) for s in (*before, *kept))
    if missing > 0 and rest:
        blanks = [cst.EmptyLine(indent=False) for _ in range(missing)]
        rest[0] = rest[0].with_changes(leading_lines=[*blanks, *rest[0].leading_lines])
    return forward.with_changes(body=forward.body.with_changes(body=[*before, *kept, *rest]))


def _assignment(statement: cst.CSTNode) -> tuple[str, cst.BaseExpression] | None:
    if isinstance(statement, cst.SimpleStatementLine) and len(statement.body) == 1:
        small = statement.body[0]
        if isinstance(small, cst.Assign) and len(small.targets) == 1:
            target = small.targets[0].target
            if isinstance(target, cst.Name):
                return target.value, small.value
    return None


def _folded_shape(value: cst.BaseExpression) -> bool:
    """`(a * b, -1, d)`: heads folded into the batch."""
    return (
        isinstance(value, cst.Tuple)
        and len(value.elements) == 3
        and isinstance(value.elements[0].value, cst.BinaryOperation)
        and isinstance(value.elements[0].value.operator, cst.Multiply)
        and code(value.elements[1].value).strip() == "-1"
    )


def _folded_shapes(body: list[cst.BaseStatement]) -> list[str]:
    """Names bound once, at the top level, to a folded shape tuple."""
    bound: dict[str, list[bool]] = {}
    for statement in body:
        for node in walk(statement):
            if isinstance(node, cst.Assign):
                for target in node.targets:
                    if isinstance(target.target, cst.Name):
                        bound.setdefault(target.target.value, []).append(False)
    for statement in body:
        assigned = _assignment(statement)
        if assigned is not None and _folded_shape(assigned[1]) and bound.get(assigned[0]) == [False]:
            bound[assigned[0]] = [True]
    return sorted(name for name, flags in bound.items() if flags == [True])


def _fold(statement: cst.BaseStatement, shapes: list[str]) -> str | None:
    """`x` of `x = x.reshape(*P)` / `x.view(P)` / `x.reshape(a * b, -1, d)`, P a folded shape."""
    assigned = _assignment(statement)
    if assigned is None:
        return None
    name, value = assigned
    if not (
        isinstance(value, cst.Call)
        and isinstance(value.func, cst.Attribute)
        and value.func.attr.value in RESHAPES
        and m.matches(value.func.value, m.Name(name))
    ):
        return None
    args = value.args
    if len(args) == 1 and args[0].keyword is None and isinstance(args[0].value, cst.Name):
        return name if args[0].value.value in shapes else None
    if all(arg.keyword is None and not arg.star for arg in args) and _folded_shape(
        cst.Tuple([cst.Element(arg.value) for arg in args])
    ):
        return name
    return None


def _output_view(body: list[cst.BaseStatement], first: int, folded: set[str]) -> int | None:
    """The index of `o = o.view(a, b, c, d)` after `s = bmm(q, k.transpose(1, 2))` and `o = bmm(p, v)`
    (q, k, v folded), followed by `o = o.transpose(1, 2)` (size checks may sit between)."""
    scores = output = None
    for index in range(first, len(body)):
        assigned = _assignment(body[index])
        if assigned is None:
            continue
        name, value = assigned
        bmm = next((n for n in walk(value) if m.matches(n, BMM)), None)
        if scores is None and bmm is not None:
            operands = [names_in(arg.value) for arg in bmm.args]  # type: ignore[attr-defined]
            if len(operands) == 2 and all(o & folded for o in operands):
                scores = name
            continue
        if scores is not None and output is None and bmm is not None:
            args = bmm.args  # type: ignore[attr-defined]
            if len(args) == 2 and isinstance(args[1].value, cst.Name) and args[1].value.value in folded:
                output = name
            continue
        if output is not None and name == output:
            if not _view_of(value, output, 4):
                return None
            following = next((s for s in body[index + 1 :] if not _size_check(s)), None)
            after = _assignment(following) if following is not None else None
            transposed = after is not None and m.matches(
                after[1],
                m.Call(
                    func=m.Attribute(value=m.Name(output), attr=m.Name("transpose")),
                    args=[m.Arg(m.Integer("1")), m.Arg(m.Integer("2"))],
                ),
            )
            return index if transposed else None
    return None


def _view_of(value: cst.BaseExpression, name: str, sizes: int | None = None) -> bool:
    return (
        isinstance(value, cst.Call)
        and isinstance(value.func, cst.Attribute)
        and value.func.attr.value in RESHAPES
        and m.matches(value.func.value, m.Name(name))
        and all(arg.keyword is None and not arg.star for arg in value.args)
        and (len(value.args) == sizes if sizes is not None else len(value.args) in (3, 4))
    )


def _computed_from(statements: list[cst.BaseStatement], folded: set[str]) -> set[str]:
    """`folded` and every name assigned (at any depth) from an expression reading one of them."""
    tracked = set(folded)
    changed = True
    while changed:
        changed = False
        for statement in statements:
            for node in walk(statement):
                if not isinstance(node, cst.Assign) or not names_in(node.value) & tracked:
                    continue
                for target in node.targets:
                    if isinstance(target.target, cst.Name) and target.target.value not in tracked:
                        tracked.add(target.target.value)
                        changed = True
    return tracked


def _size_check(statement: cst.CSTNode) -> bool:
    """`if <reads a .size()>: raise ...` without an else."""
    return (
        isinstance(statement, cst.If)
        and statement.orelse is None
        and any(
            isinstance(n, cst.Call) and isinstance(n.func, cst.Attribute) and n.func.attr.value == "size"
            for n in walk(statement.test)
        )
        and all(
            isinstance(s, cst.SimpleStatementLine) and all(isinstance(x, cst.Raise) for x in s.body)
            for s in statement.body.body
        )
    )


class _FourD(cst.CSTTransformer):
    """The folded-layout reads of one statement in their 4-D form (see the module docstring)."""

    def __init__(self, tracked: set[str]) -> None:
        super().__init__()
        self.tracked = tracked

    def leave_If(self, original: cst.If, updated: cst.If) -> cst.If | cst.RemovalSentinel:
        body = [s for s in updated.body.body if not _size_check(s)]
        if not body:
            return cst.RemoveFromParent()
        return updated.with_changes(body=updated.body.with_changes(body=body))

    def leave_Call(self, original: cst.Call, updated: cst.Call) -> cst.BaseExpression:
        if m.matches(updated, BMM):
            return updated.with_changes(func=updated.func.with_changes(attr=cst.Name("matmul")))  # type: ignore[union-attr]
        func = updated.func
        if not (isinstance(func, cst.Attribute) and isinstance(func.value, cst.Name)):
            return updated
        if func.value.value not in self.tracked:
            return updated
        method = func.attr.value
        literals = [code(arg.value).strip() for arg in updated.args]
        if method in RESHAPES and _view_of(updated, func.value.value):
            return func.value
        if method == "transpose" and literals == ["1", "2"]:
            return updated.with_changes(
                args=[
                    updated.args[0].with_changes(value=cst.Integer("2")),
                    updated.args[1].with_changes(value=cst.Integer("3")),
                ]
            )
        if method == "size" and literals in (["1"], ["2"]):
            return updated.with_changes(
                args=[updated.args[0].with_changes(value=cst.Integer(str(int(literals[0]) + 1)))]
            )
        return updated


def _without_aliases(statements: list[cst.BaseStatement]) -> list[cst.BaseStatement] | None:
    """`statements` (and the blocks inside them) without `x = x`, nor `y = x` right after `x = y`; None
    where a block would be left empty."""
    kept: list[cst.BaseStatement] = []
    for statement in statements:
        assigned = _assignment(statement)
        if assigned is not None and isinstance(assigned[1], cst.Name):
            if assigned[1].value == assigned[0]:
                continue
            previous = _assignment(kept[-1]) if kept else None
            if (
                previous is not None
                and previous == (assigned[1].value, previous[1])
                and m.matches(previous[1], m.Name(assigned[0]))
            ):
                continue
        if isinstance(statement, cst.If):
            statement = _if_without_aliases(statement)  # type: ignore[assignment]
            if statement is None:
                return None
        kept.append(statement)
    return kept


def _if_without_aliases(statement: cst.If) -> cst.If | None:
    body = _without_aliases(list(statement.body.body))
    if not body:
        return None
    orelse = statement.orelse
    if isinstance(orelse, cst.Else):
        inner = _without_aliases(list(orelse.body.body))
        if not inner:
            return None
        orelse = orelse.with_changes(body=orelse.body.with_changes(body=inner))
    elif isinstance(orelse, cst.If):
        orelse = _if_without_aliases(orelse)
        if orelse is None:
            return None
    return statement.with_changes(body=statement.body.with_changes(body=body), orelse=orelse)


def _line_count(statement: cst.CSTNode) -> int:
    return cst.Module(body=[statement]).code.count("\n")  # type: ignore[list-item]
