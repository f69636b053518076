"""Local subclasses of `nn.Linear` whose `forward` is the plain linear, read as `nn.Linear` itself.

Falcon builds its projections from `FalconLinear(nn.Linear)`, whose only method computes
`input @ self.weight.T`, plus the bias when there is one: what `nn.Linear.forward` computes, with the same
parameters under the same names. The analysis reads the constructor calls of such a class as calls of its
base (`FalconLinear(a, b, bias=c)` -> `nn.Linear(a, b, bias=c)`), so the linear rules shard them as any
other linear and the checkpoint keys stay as they are; the class, then unused, leaves with the pruning
(NXS001). A subclass with anything else (its own `__init__`, attributes, another computation) stays as it
is and is refused (R012).
"""

from __future__ import annotations

import libcst as cst
import libcst.matchers as m

from ..syntax import code, is_docstring

LINEAR_BASES = ("nn.Linear", "torch.nn.Linear")
FUNCTIONAL_LINEAR = ("F.linear", "nn.functional.linear", "torch.nn.functional.linear")
WEIGHT = m.Attribute(value=m.Name("self"), attr=m.Name("weight"))
BIAS = m.Attribute(value=m.Name("self"), attr=m.Name("bias"))
TRANSPOSED_WEIGHT = m.Attribute(value=WEIGHT, attr=m.Name("T")) | m.Call(
    func=m.Attribute(value=WEIGHT, attr=m.Name("t")), args=[]
)


def read_as_linear(module: cst.Module) -> cst.Module:
    """`module` with the calls of its plain-linear subclasses written as calls of their base."""
    bases = plain_linear_subclasses(module)
    if not bases:
        return module
    return module.visit(_Rename(bases))


def plain_linear_subclasses(module: cst.Module) -> dict[str, cst.BaseExpression]:
    """`{class name: its base}` for the module's top-level subclasses of `nn.Linear` whose body is one
    `forward(self, x)` computing the plain linear (a docstring aside)."""
    found: dict[str, cst.BaseExpression] = {}
    for statement in module.body:
        if not isinstance(statement, cst.ClassDef) or len(statement.bases) != 1 or statement.keywords:
            continue
        base = statement.bases[0].value
        if code(base) not in LINEAR_BASES or statement.decorators:
            continue
        body = [s for s in statement.body.body if not is_docstring(s)]
        if len(body) == 1 and isinstance(body[0], cst.FunctionDef) and _plain_forward(body[0]):
            found[statement.name.value] = base
    return found


def _plain_forward(forward: cst.FunctionDef) -> bool:
    params = forward.params
    if forward.name.value != "forward" or forward.decorators or forward.asynchronous:
        return False
    if len(params.params) != 2 or not isinstance(params.star_arg, cst.MaybeSentinel):
        return False
    if params.kwonly_params or params.star_kwarg or params.posonly_params or params.params[1].default:
        return False
    inp = params.params[1].name.value
    body = [s for s in forward.body.body if not is_docstring(s)]
    return _functional(body, inp) or _matmul_then_bias(body, inp)


def _functional(body: list[cst.BaseStatement], inp: str) -> bool:
    """`return F.linear(x, self.weight, self.bias)`."""
    if len(body) != 1 or not m.matches(body[0], m.SimpleStatementLine(body=[m.Return()])):
        return False
    value = body[0].body[0].value  # type: ignore[attr-defined]
    return (
        isinstance(value, cst.Call)
        and code(value.func) in FUNCTIONAL_LINEAR
        and len(value.args) == 3
        and all(arg.keyword is None and not arg.star for arg in value.args)
        and m.matches(value.args[0].value, m.Name(inp))
        and m.matches(value.args[1].value, WEIGHT)
        and m.matches(value.args[2].value, BIAS)
    )


def _matmul_then_bias(body: list[cst.BaseStatement], inp: str) -> bool:
    """`h = x @ self.weight.T`, `if self.bias is None: return h`, `return h + self.bias`."""
    if len(body) != 3:
        return False
    first = m.extract(
        body[0],
        m.SimpleStatementLine(
            body=[
                m.Assign(
                    targets=[m.AssignTarget(target=m.SaveMatchedNode(m.Name(), "out"))],
                    value=m.BinaryOperation(
                        left=m.Name(inp), operator=m.MatrixMultiply(), right=TRANSPOSED_WEIGHT
                    ),
                )
            ]
        ),
    )
    if first is None:
        return False
    out = first["out"].value  # type: ignore[union-attr]
    no_bias = m.If(
        test=m.Comparison(
            left=BIAS, comparisons=[m.ComparisonTarget(operator=m.Is(), comparator=m.Name("None"))]
        ),
        body=m.IndentedBlock(body=[m.SimpleStatementLine(body=[m.Return(value=m.Name(out))])]),
        orelse=None,
    )
    with_bias = m.SimpleStatementLine(
        body=[m.Return(value=m.BinaryOperation(left=m.Name(out), operator=m.Add(), right=BIAS))]
    )
    return m.matches(body[1], no_bias) and m.matches(body[2], with_bias)


class _Rename(cst.CSTTransformer):
    """Calls `Sub(...)` of the plain subclasses written `Base(...)`."""

    def __init__(self, bases: dict[str, cst.BaseExpression]) -> None:
        super().__init__()
        self.bases = bases

    def leave_Call(self, original_node: cst.Call, updated_node: cst.Call) -> cst.Call:
        if isinstance(updated_node.func, cst.Name) and updated_node.func.value in self.bases:
            return updated_node.with_changes(func=self.bases[updated_node.func.value])
        return updated_node
