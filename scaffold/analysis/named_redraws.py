"""Re-draws by parameter name in a source's `_init_weights`: the loop

    for name, p in module.named_parameters():
        if name == "c_proj.weight":  # or name.endswith("c_proj.weight")
            p.data.normal_(mean=0.0, std=<expression of self.config and constants>)

(GPT-2's scaled init of the residual projections). `named_redraws` reads such loops; a loop of another
shape, or whose std reads anything but `self.config` fields, numbers and the file's imported modules, is
not one (it stays as the source writes it).

The same re-draw written per class (GPTBigCode's), as the first branch of the method's top-level `if`:

    if isinstance(module, (SomeMLP, SomeAttention)):
        module.c_proj.weight.data.normal_(mean=0.0, std=<expression of self.config and constants>)
        module.c_proj._is_hf_initialized = True  # optional, kept

re-draws the weight of the layer `c_proj` of those classes only; `class_redraws` reads it.
"""

from __future__ import annotations

from dataclasses import dataclass

import libcst as cst
import libcst.matchers as m

from ..syntax import dotted, walk

WEIGHT = ".weight"
NORMAL_CALLS = ("nn.init.normal_", "torch.nn.init.normal_")
_SELF_CONFIG = m.Attribute(value=m.Name("self"), attr=m.Name("config"))


@dataclass(frozen=True)
class NamedRedraw:
    """One loop of `_init_weights` that re-draws the weight of the layers named `attribute` from N(0, std^2)."""

    loop: cst.For  # the loop, as a node of the tree it was read from
    attribute: str  # the layer's attribute name (`c_proj`)
    suffix: bool  # `name.endswith(...)`: every attribute ending in `attribute`; else exactly it
    std: cst.BaseExpression  # the std, as the source writes it (reads `self.config`)


@dataclass(frozen=True)
class ClassRedraw:
    """The first branch of `_init_weights`' top-level `if`, `isinstance(module, classes)`, re-drawing the
    weight of each such module's layer `attribute` from N(0, std^2) in `statement`."""

    statement: cst.SimpleStatementLine  # the re-draw, as a node of the tree it was read from
    classes: tuple[str, ...]
    attribute: str
    std: cst.BaseExpression  # the std, as the source writes it (reads `self.config`)


def class_redraws(init_weights: cst.FunctionDef, modules: frozenset[str]) -> list[ClassRedraw]:
    """The re-draws of one layer's weight by module class in the first branch of `init_weights`' top-level
    `if`, whose body holds only such re-draws and `module.<layer>._is_hf_initialized = True`; `modules` are
    the names the file binds by `import` (`math`), which the std may call."""
    params = init_weights.params.params
    first = next((s for s in init_weights.body.body if isinstance(s, cst.If)), None)
    if first is None or len(params) != 2:
        return []
    module = params[1].name.value
    classes = _isinstance_classes(first.test, module)
    if classes is None:
        return []
    found: list[ClassRedraw] = []
    for statement in first.body.body:
        if _marks_initialized(statement, module):
            continue
        redraw = _layer_redraw(statement, module, modules)
        if redraw is None:
            return []
        attribute, std = redraw
        found.append(ClassRedraw(statement, classes, attribute, std))  # type: ignore[arg-type]
    return found


def _isinstance_classes(test: cst.BaseExpression, module: str) -> tuple[str, ...] | None:
    """`(A, B)` of `isinstance(module, (A, B))` or `isinstance(module, A)`, plain class names."""
    if not m.matches(
        test,
        m.Call(func=m.Name("isinstance"), args=[m.Arg(m.Name(module), keyword=None), m.Arg(keyword=None)]),
    ):
        return None
    kinds = test.args[1].value  # type: ignore[attr-defined]
    names = [e.value for e in kinds.elements] if isinstance(kinds, cst.Tuple) else [kinds]
    if not names or not all(isinstance(name, cst.Name) for name in names):
        return None
    return tuple(name.value for name in names)  # type: ignore[attr-defined]


def _marks_initialized(statement: cst.BaseStatement, module: str) -> bool:
    """`module.<layer>._is_hf_initialized = True`."""
    return m.matches(
        statement,
        m.SimpleStatementLine(
            body=[
                m.Assign(
                    targets=[
                        m.AssignTarget(
                            m.Attribute(
                                value=m.Attribute(value=m.Name(module)), attr=m.Name("_is_hf_initialized")
                            )
                        )
                    ],
                    value=m.Name("True"),
                )
            ]
        ),
    )


def _layer_redraw(
    statement: cst.BaseStatement, module: str, modules: frozenset[str]
) -> tuple[str, cst.BaseExpression] | None:
    """(layer, std) of `module.<layer>.weight.data.normal_(mean=0.0, std=...)` (or `.weight.normal_`), the
    std a constant expression of the config."""
    if not m.matches(statement, m.SimpleStatementLine(body=[m.Expr(m.Call())])):
        return None
    call = statement.body[0].value  # type: ignore[attr-defined]
    weight = (dotted(call.func) or "").removesuffix(".normal_").removesuffix(".data")
    parts = weight.split(".")
    if len(parts) != 3 or parts[0] != module or parts[2] != "weight" or not parts[1].isidentifier():
        return None
    std = _normal_std(statement, weight)
    if std is None or not _constant(std, modules):
        return None
    return parts[1], std


def named_redraws(init_weights: cst.FunctionDef, modules: frozenset[str]) -> list[NamedRedraw]:
    """The loops of `init_weights`'s top level that re-draw one weight by name with a constant std;
    `modules` are the names the file binds by `import` (`math`), which the std may call."""
    found = []
    for statement in init_weights.body.body:
        redraw = _redraw(statement, modules) if isinstance(statement, cst.For) else None
        if redraw is not None:
            found.append(redraw)
    return found


def _redraw(loop: cst.For, modules: frozenset[str]) -> NamedRedraw | None:
    if not m.matches(
        loop,
        m.For(
            target=m.Tuple([m.Element(m.Name()), m.Element(m.Name())]),
            iter=m.Call(func=m.Attribute(value=m.Name(), attr=m.Name("named_parameters")), args=[]),
            body=m.IndentedBlock(body=[m.If(orelse=None)]),
        ),
    ):
        return None
    name, parameter = (element.value.value for element in loop.target.elements)  # type: ignore[attr-defined]
    branch = loop.body.body[0]  # type: ignore[attr-defined]
    matched = _tested_name(branch.test, name)
    if matched is None or len(branch.body.body) != 1:
        return None
    text, suffix = matched
    attribute = text.removesuffix(WEIGHT)
    if not text.endswith(WEIGHT) or not attribute.isidentifier():
        return None
    std = _normal_std(branch.body.body[0], parameter)
    if std is None or not _constant(std, modules):
        return None
    return NamedRedraw(loop, attribute, suffix, std)


def _tested_name(test: cst.BaseExpression, name: str) -> tuple[str, bool] | None:
    """`("c_proj.weight", False)` for `name == "c_proj.weight"`, `(..., True)` for `name.endswith(...)`."""
    if m.matches(
        test, m.Comparison(left=m.Name(name), comparisons=[m.ComparisonTarget(m.Equal(), m.SimpleString())])
    ):
        return test.comparisons[0].comparator.evaluated_value, False  # type: ignore[attr-defined]
    if m.matches(
        test,
        m.Call(func=m.Attribute(value=m.Name(name), attr=m.Name("endswith")), args=[m.Arg(m.SimpleString())]),
    ):
        return test.args[0].value.evaluated_value, True  # type: ignore[attr-defined]
    return None


def _normal_std(statement: cst.BaseStatement, parameter: str) -> cst.BaseExpression | None:
    """The std of `p.data.normal_(mean=0.0, std=...)`, `p.normal_(...)` or `nn.init.normal_(p, ...)`."""
    if not m.matches(statement, m.SimpleStatementLine(body=[m.Expr(m.Call())])):
        return None
    call = statement.body[0].value  # type: ignore[attr-defined]
    target = dotted(call.func)
    args = list(call.args)
    if target in (f"{parameter}.data.normal_", f"{parameter}.normal_"):
        pass
    elif (
        target in NORMAL_CALLS
        and args
        and args[0].keyword is None
        and m.matches(args[0].value, m.Name(parameter))
    ):
        args = args[1:]
    else:
        return None
    keywords = {arg.keyword.value: arg.value for arg in args if arg.keyword is not None}
    positional = [arg.value for arg in args if arg.keyword is None]
    values = dict(zip(("mean", "std"), positional, strict=False)) | keywords
    mean = values.get("mean")
    if set(values) - {"mean", "std"} or "std" not in values:
        return None
    if mean is not None and not (m.matches(mean, m.Float() | m.Integer()) and float(mean.value) == 0.0):  # type: ignore[attr-defined]
        return None
    return values["std"]


def _constant(expression: cst.BaseExpression, modules: frozenset[str]) -> bool:
    """Whether `expression` reads only `self.config` fields, numbers and attributes of imported modules."""
    allowed = (
        cst.BinaryOperation,
        cst.UnaryOperation,
        cst.Integer,
        cst.Float,
        cst.Call,
        cst.Arg,
        cst.Attribute,
        cst.Name,
        cst.LeftParen,
        cst.RightParen,
        cst.BaseBinaryOp,
        cst.BaseUnaryOp,
        cst.Comma,
        cst.Dot,
        cst.BaseParenthesizableWhitespace,
        cst.EmptyLine,
        cst.Newline,
        cst.TrailingWhitespace,
        cst.Comment,
        cst.ParenthesizedWhitespace,
    )
    for node in walk(expression):
        if not isinstance(node, allowed):
            return False
        if isinstance(node, cst.Call) and dotted(node.func) is None:
            return False
    # Every name chain starts at self.config or an imported module.
    return all(_root_allowed(node, modules) for node in _chains(expression))


def _chains(expression: cst.BaseExpression) -> list[cst.BaseExpression]:
    """The outermost Name/Attribute chains of `expression`."""
    chains: list[cst.BaseExpression] = []

    class Visitor(cst.CSTVisitor):
        def visit_Attribute(self, node: cst.Attribute) -> bool:
            chains.append(node)
            return False

        def visit_Name(self, node: cst.Name) -> bool:
            chains.append(node)
            return False

    expression.visit(Visitor())
    return chains


def _root_allowed(chain: cst.BaseExpression, modules: frozenset[str]) -> bool:
    text = dotted(chain)
    if text is None:
        return False
    root, *rest = text.split(".")
    if root == "self":
        return len(rest) == 2 and rest[0] == "config"
    return root in modules and bool(rest)


def self_config_to(expression: cst.BaseExpression, config: str) -> cst.BaseExpression:
    """`expression` with `self.config` read as the constructor's `config` parameter."""
    return m.replace(expression, _SELF_CONFIG, cst.Name(config))  # type: ignore[return-value]
