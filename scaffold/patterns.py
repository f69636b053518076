"""The code shapes the analysis and the rules look for, declared once as libcst matchers.

`libcst.matchers.matches(node, PATTERN)` reads as the shape it tests; a pattern that takes a name
(`self_attribute_named("q_proj")`) is a small function returning a matcher.
"""

from __future__ import annotations

import libcst.matchers as m

# `self.<anything>`
SELF_ATTRIBUTE = m.Attribute(value=m.Name("self"))

# A docstring: a statement line holding only a string.
DOCSTRING = m.SimpleStatementLine(body=[m.Expr(value=m.SimpleString() | m.ConcatenatedString())])

# `super().__init__(...)`
SUPER_INIT_CALL = m.Call(func=m.Attribute(value=m.Call(func=m.Name("super")), attr=m.Name("__init__")))

# `super().__init__(...)` or `Base.__init__(self, ...)` as a statement of its own (other statements may
# follow it on its line: `scaffold.analysis.current_forms` keeps a config there, `; self.config = config`).
PARENT_INIT_STATEMENT = m.SimpleStatementLine(
    body=[m.Expr(value=m.Call(func=m.Attribute(attr=m.Name("__init__")))), m.ZeroOrMore()]
)

# `self.post_init()`: transformers' end-of-constructor hook.
POST_INIT_STATEMENT = m.SimpleStatementLine(
    body=[m.Expr(value=m.Call(func=m.Attribute(value=m.Name("self"), attr=m.Name("post_init"))))]
)

# `isinstance(<anything>, <Name>)`: a test of an object's class against one class.
CLASS_TEST = m.Call(
    func=m.Name("isinstance"), args=[m.Arg(keyword=None), m.Arg(value=m.Name(), keyword=None)]
)

# A statement line holding import statements only.
IMPORT_LINE = m.SimpleStatementLine(body=[m.AtLeastN(m.Import() | m.ImportFrom(), n=1)])

# `<name> = ...` or `<name>: T = ...` with one plain-name target.
NAME_ASSIGNMENT = m.SimpleStatementLine(
    body=[
        m.Assign(targets=[m.AssignTarget(target=m.Name())])
        | m.AnnAssign(target=m.Name(), value=m.DoNotCare())
    ]
)

# `self.<attr> = ...` or `self.<attr>: T = ...` with one target.
SELF_ASSIGNMENT = m.SimpleStatementLine(
    body=[
        m.Assign(targets=[m.AssignTarget(target=SELF_ATTRIBUTE)])
        | m.AnnAssign(target=SELF_ATTRIBUTE, value=m.DoNotCare())
    ]
)

# `x is not None` / `x is None`
IS_NOT_NONE = m.Comparison(comparisons=[m.ComparisonTarget(operator=m.IsNot(), comparator=m.Name("None"))])
IS_NONE = m.Comparison(comparisons=[m.ComparisonTarget(operator=m.Is(), comparator=m.Name("None"))])

# `x.shape[:-1]` / `x.size()[:-1]`: the leading dimensions of a tensor; of a 3-D tensor (an attention's
# (B, S, D) input) also `x.shape[:2]` / `x.size()[:2]`.
LEADING_SHAPE = m.Subscript(
    value=m.Attribute(attr=m.Name("shape")) | m.Call(func=m.Attribute(attr=m.Name("size")), args=[]),
    slice=[
        m.SubscriptElement(
            slice=m.Slice(
                lower=None,
                step=None,
                upper=m.UnaryOperation(operator=m.Minus(), expression=m.Integer("1")) | m.Integer("2"),
            )
        )
    ],
)


# `ALL_ATTENTION_FUNCTIONS[...]`: transformers' table of attention functions.
ATTENTION_TABLE_LOOKUP = m.Subscript(value=m.Name("ALL_ATTENTION_FUNCTIONS"))


def self_attribute_named(name: str) -> m.Attribute:
    """`self.<name>`."""
    return m.Attribute(value=m.Name("self"), attr=m.Name(name))


def self_call(name: str) -> m.Call:
    """`self.<name>(...)`."""
    return m.Call(func=self_attribute_named(name))


def method_named(name: str) -> m.FunctionDef:
    """`def <name>(...)`."""
    return m.FunctionDef(name=m.Name(name))


def class_named(name: str) -> m.ClassDef:
    """`class <name>(...)`."""
    return m.ClassDef(name=m.Name(name))
