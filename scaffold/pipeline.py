"""Source text + Blueprint -> the rewritten module, rule by rule.

Refusals stop the conversion before any rule runs (unless `allow_unsupported`, where the rules write
`TODO(<code>)` markers). Rules run in `RULES` order; disabled ones are skipped. The result is the libcst
module, not yet formatted (see `scaffold.emit`).
"""

from __future__ import annotations

from collections.abc import Iterable

import libcst as cst

from .blueprint import Blueprint
from .errors import ScaffoldError
from .rules import RULES, Rule, RuleOptions, rule_by_key
from .rules.base import make_context


def resolve_disabled(keys: Iterable[str]) -> frozenset[str]:
    """Rule codes for `--disable` values given as codes or names (ScaffoldError for unknown ones)."""
    codes = set()
    for key in keys:
        try:
            codes.add(rule_by_key(key).CODE)
        except KeyError as error:
            raise ScaffoldError(str(error.args[0]), hint="see `scaffold rules` for the list") from None
    return frozenset(codes)


def check_refusals(blueprint: Blueprint, options: RuleOptions) -> None:
    """Raise one ScaffoldError naming every refusal (file:line code message), unless allowed."""
    if blueprint.refusals and not options.allow_unsupported:
        lines = "\n".join(f"  {refusal}" for refusal in blueprint.refusals)
        raise ScaffoldError(
            f"{blueprint.model_type}: {len(blueprint.refusals)} construct(s) cannot be converted safely:\n{lines}",
            hint="pass --allow-unsupported to write TODO(<code>) markers there instead, and finish by hand",
        )


def apply_rules(
    blueprint: Blueprint,
    module: cst.Module,
    *,
    options: RuleOptions | None = None,
    disabled: frozenset[str] = frozenset(),
    rules: Iterable[type[Rule]] | None = None,
) -> cst.Module:
    """Run the rules (default: all of `RULES`) over `module` in order, skipping disabled codes."""
    options = options or RuleOptions()
    for rule in RULES if rules is None else rules:
        if rule.CODE in disabled:
            continue
        module = rule(make_context(blueprint, options)).transform_module(module)
    return module


def rules_until(code: str) -> tuple[tuple[type[Rule], ...], type[Rule]]:
    """The rules that run before the rule `code`, and that rule (for examples and debugging)."""
    for index, rule in enumerate(RULES):
        if rule.CODE == code:
            return RULES[:index], rule
    raise KeyError(code)
