"""What a rule is: one libcst codemod pass for one concern, with a stable code, its prerequisites and its
own examples.

A rule is a `libcst.codemod.VisitorBasedCodemodCommand`: it runs with a `CodemodContext`, reads facts from
the Blueprint (never from the source again), declares the metadata it reads (`METADATA_DEPENDENCIES`) and
schedules the imports it needs through the context (`self.add_needed_import`, `self.remove_unused_import`),
which libcst's `AddImportsVisitor` / `RemoveImportsVisitor` apply once the pass is done (in the pipeline:
once, after the last pass).

`REQUIRES` names the rules whose rewrites this one builds on; `scaffold.rules.RULES` declares the order
(every rule after the ones it requires) and `--disable` refuses to skip a rule that an enabled one
requires. Where the Blueprint refuses a construct a rule relies on, the rule leaves it as written with
a `TODO(<code>)` marker (reached only with `--allow-unsupported`: otherwise nothing runs).

Each rule carries examples: the text of one class or function of a real model's file just before the
rule runs in the pipeline and just after. They are its documentation (`scaffold rules`) and its tests
(tests/scaffold/rules/test_rule_examples.py). Their texts are data files beside the rules,
`examples/<folder>/before.py.txt` and `after.py.txt`; a rule declares each in one line,
`stored_example(CODE, model, scope)`. Minimal hand-written before/after cases live in tests/scaffold/passes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from typing import ClassVar, TypeVar

import libcst as cst
from libcst.codemod import Codemod, CodemodContext, VisitorBasedCodemodCommand

from ..blueprint import Blueprint, Refusal
from .templates import Needed

EXAMPLES_FOLDER = "examples"  # beside this module: one folder of texts per example
BEFORE_FILE = "before.py.txt"
AFTER_FILE = "after.py.txt"
DEFER_IMPORTS = "nxd_scaffold.defer_imports"  # scratch key: the pipeline applies the scheduled imports
HOST_LEVEL = 2
_Marked = TypeVar(
    "_Marked", cst.ClassDef, cst.FunctionDef, cst.SimpleStatementLine, cst.BaseCompoundStatement
)  # the host modules are imported relatively, from the package's parent: `from ..config import`


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


class Rule(VisitorBasedCodemodCommand):
    """Base class of every rule. Subclasses set the class variables and override libcst visitor methods."""

    CODE: ClassVar[str]  # "NXS010": stable, never reused
    NAME: ClassVar[str]  # "parallel-linears": what `--disable` also accepts
    SUMMARY: ClassVar[str]  # one line for `scaffold rules` and the inspect table
    ADVICE: ClassVar[str]  # what a contributor can do when the rule does not fit their model
    REQUIRES: ClassVar[tuple[str, ...]] = ()  # codes of the rules whose output this one builds on
    EXAMPLES: ClassVar[tuple[RuleExample, ...]] = ()

    def __init__(
        self, context: CodemodContext, blueprint: Blueprint, options: RuleOptions | None = None
    ) -> None:
        super().__init__(context)
        self.blueprint = blueprint
        self.options = options or RuleOptions()

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "SUMMARY" in vars(cls):
            cls.DESCRIPTION = cls.SUMMARY  # what libcst's codemod tooling lists

    def transform_module(self, tree: cst.Module) -> cst.Module:
        """Run the pass, then the import visitors it scheduled; inside the pipeline, whose context says
        `DEFER_IMPORTS`, the pipeline runs them once after the last rule instead.

        A pass that reads no metadata visits the tree as it is: libcst's `MetadataWrapper`, which
        `Codemod.transform_module` builds for every pass, copies the whole tree to compute metadata.
        """
        if not self.context.scratch.get(DEFER_IMPORTS):
            return super().transform_module(tree)
        if self.get_inherited_dependencies():
            return Codemod.transform_module(self, tree)
        return self.transform_module_impl(tree)

    # --- refusals ---------------------------------------------------------------------------------------

    def refusal_for(self, subject: str) -> Refusal | None:
        """The refusal that keeps this rule away from `subject` (a class or function name), if any.

        Refusals name the rules that cannot convert their subject; a rule also stays away from what the
        rules it requires could not convert.
        """
        blocked = {self.CODE, *self.REQUIRES}
        for refusal in self.blueprint.refusals:
            if refusal.subject == subject and blocked & set(refusal.rules):
                return refusal
        return None

    def config_parameter(self, class_name: str) -> str:
        """The `__init__` parameter of `class_name` that holds the model config (a Blueprint fact; a class
        that builds parallel layers without one is refused in analysis, R018)."""
        return self.blueprint.class_plan(class_name).config_parameter or "config"

    def add_host_import(self, module: str, name: str) -> None:
        """`from ..<module> import <name>` (the training host, by relative import)."""
        self.add_needed_import(module, name, relative=HOST_LEVEL)

    def add_template_imports(self, needed: Iterable[Needed]) -> None:
        """Schedule the imports that code filled from a template reads (`templates.fill_*`)."""
        for item in sorted(needed, key=lambda item: (item.level, item.module, item.name or "")):
            self.add_torch_import(item.module, item.name, item.level)

    def add_torch_import(self, module: str, name: str | None = None, level: int = 0) -> None:
        """`add_needed_import`, except `from torch import nn` in a file that binds `nn` already (libcst's
        visitor would not see that `import torch.nn as nn` binds it, and add a second binding)."""
        if (module, name) == ("torch", "nn") and self.blueprint.style.nn_alias:
            return
        self.add_needed_import(module, name, relative=level)


def todo_comment(refusal: Refusal) -> str:
    """The marker a rule leaves where it could not convert (`--allow-unsupported`)."""
    return f"# TODO({refusal.code}): {refusal.message}"


def with_todo(node: _Marked, refusal: Refusal) -> _Marked:
    """`node` with the refusal's `TODO(<code>)` marker on the line above it (once)."""
    text = todo_comment(refusal)
    if any(line.comment is not None and line.comment.value == text for line in node.leading_lines):
        return node
    return node.with_changes(leading_lines=[*node.leading_lines, cst.EmptyLine(comment=cst.Comment(text))])


def definition_source(module: cst.Module, scope: str) -> str:
    """The code of the top-level class or function named `scope` in `module` (KeyError if absent)."""
    for statement in module.body:
        if isinstance(statement, cst.ClassDef | cst.FunctionDef) and statement.name.value == scope:
            return module.code_for_node(statement).strip("\n") + "\n"
    raise KeyError(scope)
