"""Source module + Blueprint -> the rewritten module, rule by rule, as one chain of libcst codemods.

Refusals stop the conversion before any rule runs (unless `allow_unsupported`, where the rules write
`TODO(<code>)` markers). `RulePipeline` is a `libcst.codemod.MagicArgsCodemodCommand`: it runs the enabled
rules in `RULES` order, each built from the context's scratch (`blueprint`, `options`). The result is the
libcst module, not yet formatted (see `scaffold.emit`).
"""

from __future__ import annotations

from collections.abc import Generator, Iterable

import libcst as cst
from libcst.codemod import Codemod, CodemodContext, MagicArgsCodemodCommand

from .blueprint import Blueprint
from .errors import ScaffoldError
from .rules import RULES, Rule, RuleOptions, check_disabled, rule_by_key
from .rules.base import DEFER_IMPORTS
from .rules.unused_imports import without_emptied_guards


def resolve_disabled(keys: Iterable[str]) -> frozenset[str]:
    """Rule codes for `--disable` values given as codes or names.

    ScaffoldError for unknown ones, and for a rule that an enabled rule builds on.
    """
    codes = set()
    for key in keys:
        try:
            codes.add(rule_by_key(key).CODE)
        except KeyError as error:
            raise ScaffoldError(str(error.args[0]), hint="see `scaffold rules` for the list") from None
    check_disabled(codes)
    return frozenset(codes)


def check_refusals(blueprint: Blueprint, options: RuleOptions) -> None:
    """Raise one ScaffoldError naming every refusal (file:line code message), unless allowed."""
    if blueprint.refusals and not options.allow_unsupported:
        lines = "\n".join(f"  {refusal}" for refusal in blueprint.refusals)
        raise ScaffoldError(
            f"{blueprint.model_type}: {len(blueprint.refusals)} construct(s) cannot be converted safely:\n{lines}",
            hint="pass --allow-unsupported to write TODO(<code>) markers there instead, and finish by hand; "
            "`scaffold rules <code>` says what each code means and what to do about it",
        )


class RulePipeline(MagicArgsCodemodCommand):
    """The rules as one codemod: each runs on the previous one's output, with the same context; the
    imports they schedule are added and removed once, after the last one (`CodemodCommand` does that
    for any command that leaves them in its context)."""

    DESCRIPTION = "rewrite a transformers modeling file into an optimum-neuron training model"

    def __init__(self, context: CodemodContext, rules: Iterable[type[Rule]], **scratch: object) -> None:
        super().__init__(context, **scratch)
        self.context.scratch[DEFER_IMPORTS] = True
        self.rules = tuple(rules)

    def get_transforms(self) -> Generator[type[Codemod], None, None]:
        yield from self.rules

    def transform_module(self, tree: cst.Module) -> cst.Module:
        return without_emptied_guards(super().transform_module(tree), self.context.filename)


def apply_rules(
    blueprint: Blueprint,
    module: cst.Module,
    *,
    options: RuleOptions | None = None,
    disabled: frozenset[str] = frozenset(),
    rules: Iterable[type[Rule]] | None = None,
) -> cst.Module:
    """Run the rules (default: all of `RULES`) over `module` in order, skipping disabled codes."""
    chosen = [rule for rule in (RULES if rules is None else rules) if rule.CODE not in disabled]
    context = CodemodContext(filename=blueprint.source_file)
    pipeline = RulePipeline(context, chosen, blueprint=blueprint, options=options or RuleOptions())
    return pipeline.transform_module(module)


def rules_until(code: str) -> tuple[tuple[type[Rule], ...], type[Rule]]:
    """The rules that run before the rule `code`, and that rule (for examples and debugging)."""
    for index, rule in enumerate(RULES):
        if rule.CODE == code:
            return RULES[:index], rule
    raise KeyError(code)
