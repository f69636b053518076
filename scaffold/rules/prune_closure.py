"""NXS001: keep only what training the causal LM needs.

The Blueprint's closure (`classes`, `functions`) is the dependency closure of the base model and the
causal-LM head; every other class and function goes (sequence-classification heads, ...), as do module
variables nothing kept reads, `GenerationMixin`, hub/docstring/deprecation decorators, the output
recorder table of `check_model_inputs`, docstrings that show transformers' own usage (`>>>`) and the
"generated from modular_<x>.py, do not edit" banner (the license header stays). A kept definition loses
its `if isinstance(<x>, C):` branches for a class `C` of the file that goes (a type test alone does not
keep a class: see type_tests.py).
Imports are left to NXS030, which drops the unused ones.
"""

from __future__ import annotations

from collections.abc import Sequence

import libcst as cst

from ..syntax import assigned_target, docstring_count, dotted, names_in, with_body
from ..type_tests import without_type_tests
from .base import Rule, stored_example

# Decorators that only serve transformers' docs, the kernel hub, argument deprecation or output capture.
DROPPED_DECORATORS = frozenset(
    {
        "auto_docstring",
        "add_start_docstrings",
        "add_start_docstrings_to_model_forward",
        "add_code_sample_docstrings",
        "replace_return_docstrings",
        "check_model_inputs",
        "use_kernel_forward_from_hub",
        "deprecate_kwarg",
    }
)
GENERATION_BASES = frozenset({"GenerationMixin"})
DROPPED_CLASS_ATTRIBUTES = frozenset({"_can_record_outputs"})
# transformers' modular converter frames its banner with lines of this character.
MODULAR_BANNER_RULE = "\N{POLICE CARS REVOLVING LIGHT}"
MODULAR_BANNER_TEXT = "automatically generated from"
GENERATION_METHODS = frozenset({"prepare_inputs_for_generation", "_reorder_cache"})


class PruneToTrainingClosure(Rule):
    CODE = "NXS001"
    NAME = "prune-to-training-closure"
    SUMMARY = "keep the closure of the base model and causal-LM head; drop other heads, generation and doc decorators"
    ADVICE = (
        "A class or function you need was dropped when nothing the base model or the causal-LM head builds "
        "reaches it: add it back by hand. Disabling the rule keeps every definition of the source."
    )
    EXAMPLES = (
        stored_example(CODE, "llama", "LlamaPreTrainedModel"),
        stored_example(CODE, "llama", "LlamaForCausalLM"),
    )

    def visit_ClassDef(self, node: cst.ClassDef) -> bool:
        return False  # the rule rewrites the module's body as a whole

    def visit_FunctionDef(self, node: cst.FunctionDef) -> bool:
        return False

    def leave_Module(self, original_node: cst.Module, updated_node: cst.Module) -> cst.Module:
        blueprint = self.blueprint
        kept_classes = {plan.name for plan in blueprint.classes}
        kept_functions = set(blueprint.functions)
        dropped = frozenset(
            statement.name.value
            for statement in updated_node.body
            if isinstance(statement, cst.ClassDef) and statement.name.value not in kept_classes
        )
        body: list[cst.BaseStatement] = []
        for statement in updated_node.body:
            if isinstance(statement, cst.ClassDef):
                if statement.name.value in kept_classes:
                    body.append(without_type_tests(_clean_class(statement), dropped))
            elif isinstance(statement, cst.FunctionDef):
                if statement.name.value in kept_functions:
                    body.append(without_type_tests(_clean_function(statement), dropped))
            else:
                body.append(statement)
        return updated_node.with_changes(
            header=_without_modular_banner(updated_node.header),
            body=_drop_unread_variables(body, kept_classes | kept_functions),
        )


def _without_modular_banner(header: Sequence[cst.EmptyLine]) -> list[cst.EmptyLine]:
    """The header without transformers' "generated from modular_<x>.py, do not edit" banner (it would be
    wrong in the generated file); the license and copyright lines stay."""
    comments = [line.comment.value if line.comment is not None else "" for line in header]
    marks = [index for index, text in enumerate(comments) if MODULAR_BANNER_RULE in text]
    if len(marks) < 2 or not any(MODULAR_BANNER_TEXT in text for text in comments[marks[0] : marks[1]]):
        return list(header)
    return [*header[: marks[0]], *header[marks[1] + 1 :]]


def _clean_function(function: cst.FunctionDef) -> cst.FunctionDef:
    decorators = [item for item in function.decorators if _decorator_name(item) not in DROPPED_DECORATORS]
    function = function.with_changes(decorators=decorators)
    statements = list(function.body.body)
    if docstring_count(statements) and ">>>" in _docstring_text(statements[0]):
        statements = statements[1:] or [cst.SimpleStatementLine(body=[cst.Pass()])]
        function = with_body(function, statements)  # type: ignore[assignment]
    return function


def _clean_class(cls: cst.ClassDef) -> cst.ClassDef:
    decorators = [item for item in cls.decorators if _decorator_name(item) not in DROPPED_DECORATORS]
    bases = [arg for arg in cls.bases if dotted(arg.value) not in GENERATION_BASES]
    if bases:
        bases[-1] = bases[-1].with_changes(comma=cst.MaybeSentinel.DEFAULT)
    body: list[cst.BaseStatement] = []
    for statement in cls.body.body:
        if isinstance(statement, cst.FunctionDef):
            if statement.name.value not in GENERATION_METHODS:
                body.append(_clean_function(statement))
        elif assigned_target(statement) not in DROPPED_CLASS_ATTRIBUTES:
            body.append(statement)
    return cls.with_changes(decorators=decorators, bases=bases, body=cls.body.with_changes(body=body))


def _decorator_name(decorator: cst.Decorator) -> str | None:
    target = decorator.decorator
    if isinstance(target, cst.Call):
        target = target.func
    name = dotted(target)
    return None if name is None else name.rsplit(".", 1)[-1]


def _docstring_text(statement: cst.BaseStatement) -> str:
    assert isinstance(statement, cst.SimpleStatementLine)
    expression = statement.body[0]
    assert isinstance(expression, cst.Expr)
    value = expression.value.evaluated_value  # type: ignore[union-attr]
    return value if isinstance(value, str) else ""


def _drop_unread_variables(body: list[cst.BaseStatement], kept: set[str]) -> list[cst.BaseStatement]:
    """Module-level assignments survive when a kept definition (or a surviving assignment) reads them.

    `__all__` is narrowed to the kept names.
    """
    variables = {
        index: name
        for index, statement in enumerate(body)
        if (name := assigned_target(statement)) is not None and name != "__all__"
    }
    readers = [statement for statement in body if not isinstance(statement, cst.SimpleStatementLine)]
    read: set[str] = set()
    for statement in readers:
        read |= names_in(statement)
    alive: set[int] = set()
    changed = True
    while changed:
        changed = False
        for index, name in variables.items():
            if index not in alive and name in read:
                alive.add(index)
                read |= names_in(body[index])
                changed = True
    result: list[cst.BaseStatement] = []
    for index, statement in enumerate(body):
        if index in variables and index not in alive:
            continue
        if assigned_target(statement) == "__all__":
            narrowed = _narrow_all(statement, kept)
            if narrowed is not None:
                result.append(narrowed)
            continue
        result.append(statement)
    return result


def _narrow_all(statement: cst.BaseStatement, kept: set[str]) -> cst.BaseStatement | None:
    assert isinstance(statement, cst.SimpleStatementLine)
    assign = statement.body[0]
    assert isinstance(assign, cst.Assign)
    if not isinstance(assign.value, cst.List | cst.Tuple):
        return statement
    elements = [
        element
        for element in assign.value.elements
        if isinstance(element.value, cst.SimpleString) and element.value.evaluated_value in kept
    ]
    if not elements:
        return None
    # One name per line, trailing comma: ruff keeps the list exploded, as people write `__all__`.
    space = cst.SimpleWhitespace(" ")
    elements = [e.with_changes(comma=cst.Comma(whitespace_after=space)) for e in elements[:-1]] + [
        elements[-1].with_changes(comma=cst.Comma())
    ]
    value = cst.List(elements=elements)
    return statement.with_changes(body=[assign.with_changes(value=value)])
