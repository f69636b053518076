"""Mask options the training host cannot honour: transformers' `or_mask_function` / `and_mask_function`.

transformers' mask builders take callables that widen (`or_mask_function`) or narrow (`and_mask_function`)
the causal pattern, e.g. a bidirectional attention switched on by a config flag. optimum-neuron's
`create_causal_mask` builds the causal (and padding) mask only, and with `recompute_causal_mask` no mask
is built at all: a generated model that kept such a branch would attend causally whatever the flag says.

A branch the rule can guard is an `if` whose test reads only the model's config (`self.config.<field>`,
`not`, `and`/`or`, comparisons with literals) and whose body only stores mask options into the mask
arguments (`kwargs["or_mask_function"] = ...`). Any other place that sets a mask option is refused (R021).
"""

from __future__ import annotations

from dataclasses import dataclass

import libcst as cst
import libcst.matchers as m

from ..syntax import code, walk

MASK_OPTIONS = frozenset({"or_mask_function", "and_mask_function"})


@dataclass(frozen=True)
class MaskOptionBranch:
    """An `if <config test>:` that sets mask options, and what it sets."""

    branch: cst.If
    test: cst.BaseExpression
    options: tuple[str, ...]


def option_key(target: cst.BaseExpression) -> str | None:
    """The mask option a store target names (`d["or_mask_function"]`), else None."""
    if not m.matches(target, m.Subscript(slice=[m.SubscriptElement(slice=m.Index(value=m.SimpleString()))])):
        return None
    key = target.slice[0].slice.value.evaluated_value  # type: ignore[attr-defined]
    return key if key in MASK_OPTIONS else None


def _option_store(statement: cst.BaseStatement) -> str | None:
    if not isinstance(statement, cst.SimpleStatementLine) or len(statement.body) != 1:
        return None
    small = statement.body[0]
    if not isinstance(small, cst.Assign) or len(small.targets) != 1:
        return None
    return option_key(small.targets[0].target)


def reads_config_only(test: cst.BaseExpression) -> bool:
    """Whether `test` is built from `self.config.<field>` reads, literals and boolean/comparison operators."""
    if m.matches(test, m.Attribute(value=m.Attribute(value=m.Name("self"), attr=m.Name("config")))):
        return True
    if isinstance(test, cst.Name):
        return test.value in ("True", "False", "None")
    if isinstance(test, cst.BaseNumber | cst.SimpleString):
        return True
    if isinstance(test, cst.UnaryOperation):
        return isinstance(test.operator, cst.Not) and reads_config_only(test.expression)
    if isinstance(test, cst.BooleanOperation):
        return reads_config_only(test.left) and reads_config_only(test.right)
    if isinstance(test, cst.Comparison):
        return reads_config_only(test.left) and all(reads_config_only(t.comparator) for t in test.comparisons)
    return False


def guardable_branch(node: cst.If) -> MaskOptionBranch | None:
    """`node` as a branch the rule can move to a construction-time guard, else None."""
    if node.orelse is not None or not reads_config_only(node.test):
        return None
    options = [_option_store(statement) for statement in node.body.body]
    if not options or None in options:
        return None
    return MaskOptionBranch(node, node.test, tuple(dict.fromkeys(o for o in options if o is not None)))


def unguardable_mask_options(function: cst.FunctionDef) -> list[str]:
    """The mask options `function` sets outside a guardable branch (keyword arguments, dict entries, stores)."""
    guarded: set[int] = set()
    for node in walk(function):
        if isinstance(node, cst.If) and (branch := guardable_branch(node)) is not None:
            guarded.update(id(statement.body[0]) for statement in branch.branch.body.body)  # type: ignore[union-attr]
    found: list[str] = []
    for node in walk(function):
        if isinstance(node, cst.Arg) and node.keyword is not None and node.keyword.value in MASK_OPTIONS:
            found.append(node.keyword.value)
        elif isinstance(node, cst.DictElement) and m.matches(node.key, m.SimpleString()):
            key = node.key.evaluated_value  # type: ignore[attr-defined]
            if key in MASK_OPTIONS:
                found.append(key)
        elif isinstance(node, cst.Assign) and id(node) not in guarded:
            found.extend(key for t in node.targets if (key := option_key(t.target)) is not None)
    return list(dict.fromkeys(found))


def describe(test: cst.BaseExpression) -> str:
    """The test as a reader of the guard sees it (`config.<field>`)."""
    return code(test).replace("self.config.", "config.")
