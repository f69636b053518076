"""What a rule is: one libcst codemod for one concern, with a stable code and its own examples.

A rule reads facts from the Blueprint (never from the source again) and rewrites the module. Imports it
needs are scheduled through its context (`schedule_import` / `schedule_removal` in `_imports`), never
spliced by hand. Each rule carries examples: the text of one class or function of a real model's file
just before the rule runs in the pipeline and just after. The examples are the rule's documentation
(`scaffold rules`) and its tests (tests/scaffold/rules/test_rule_examples.py). Their texts are data files
beside the rules, `examples/<folder>/before.py.txt` and `after.py.txt` (package data, not code: ruff and
pytest leave them alone); a rule declares each example in one line, `stored_example(CODE, model, scope)`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import ClassVar

import libcst as cst

from ..blueprint import Blueprint
from ._context import RuleContext
from ._descent import StatementDescent, descent_for_hooks
from ._imports import ADD_KEY, REMOVE_KEY, UnusedImportRemover, add_scheduled_imports

EXAMPLES_FOLDER = "examples"  # beside this module: one folder of texts per example
BEFORE_FILE = "before.py.txt"
AFTER_FILE = "after.py.txt"
BLUEPRINT_KEY = "nxd_scaffold.blueprint"
OPTIONS_KEY = "nxd_scaffold.options"


@dataclass(frozen=True)
class RuleOptions:
    """Switches that reach every rule."""

    allow_unsupported: bool = False  # write TODO(<code>) markers instead of refusing


@dataclass(frozen=True)
class RuleExample:
    """The definition `scope` (class or function name) of `model_type`'s file, before and after the rule."""

    model_type: str
    scope: str
    before: str
    after: str


def example_folder(code: str, model_type: str, scope: str) -> str:
    """The folder name of an example's texts: `NXS024-qwen2-Qwen2MLP` (`<imports>` reads `imports`)."""
    return "-".join((code, model_type, re.sub(r"[^A-Za-z0-9_]", "", scope)))


def stored_example(code: str, model_type: str, scope: str) -> RuleExample:
    """Rule `code`'s example for `scope` of `model_type`'s file, read from its folder under `examples/`."""
    folder = resources.files(__package__).joinpath(EXAMPLES_FOLDER, example_folder(code, model_type, scope))
    before, after = (folder.joinpath(name).read_text(encoding="utf-8") for name in (BEFORE_FILE, AFTER_FILE))
    return RuleExample(model_type=model_type, scope=scope, before=before, after=after)


class Rule(StatementDescent):
    """Base class of every rule. Subclasses set the class variables and override libcst visitor methods."""

    CODE: ClassVar[str]  # "NXS010": stable, never reused
    NAME: ClassVar[str]  # "parallel-linears": what `--disable` also accepts
    SUMMARY: ClassVar[str]  # one line for `scaffold rules` and the inspect table
    EXAMPLES: ClassVar[tuple[RuleExample, ...]] = ()

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        cls.DESCENT = descent_for_hooks(list(cls.__mro__[: cls.__mro__.index(Rule)]))

    @property
    def blueprint(self) -> Blueprint:
        return self.context.scratch[BLUEPRINT_KEY]

    @property
    def options(self) -> RuleOptions:
        return self.context.scratch[OPTIONS_KEY]

    def transform_module(self, tree: cst.Module) -> cst.Module:
        """Run the rule, then add and remove the imports it scheduled."""
        tree = tree.visit(self)
        if ADD_KEY in self.context.scratch:
            tree = add_scheduled_imports(tree, self.context)
        if REMOVE_KEY in self.context.scratch:
            tree = tree.visit(UnusedImportRemover(self.context))
        return tree


def make_context(blueprint: Blueprint, options: RuleOptions) -> RuleContext:
    """A rule context carrying the Blueprint and the options for one rule run."""
    context = RuleContext()
    context.scratch[BLUEPRINT_KEY] = blueprint
    context.scratch[OPTIONS_KEY] = options
    return context


def definition_source(module: cst.Module, scope: str) -> str:
    """The code of the top-level class or function named `scope` in `module` (KeyError if absent)."""
    for statement in module.body:
        if isinstance(statement, cst.ClassDef | cst.FunctionDef) and statement.name.value == scope:
            return module.code_for_node(statement).strip("\n") + "\n"
    raise KeyError(scope)
