"""The rewrite rules, applied in the order of their codes.

Every module of this package (other than `base`) defines one or more `Rule` subclasses; the registry
collects them and orders them by `CODE`, which is also the pipeline order: a rule may rely on the
rewrites of every rule with a smaller code. Adding a rule means adding a module with a new code.
`scaffold rules` prints the table.
"""

from __future__ import annotations

import importlib
import pkgutil

from .base import Rule, RuleExample, RuleOptions


def _discover() -> tuple[type[Rule], ...]:
    found: dict[str, type[Rule]] = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name == "base" or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, Rule) and value.__module__ == module.__name__:
                if value.CODE in found:
                    raise RuntimeError(
                        f"rule code {value.CODE} is defined twice ({found[value.CODE]}, {value})"
                    )
                found[value.CODE] = value
    return tuple(found[code] for code in sorted(found))


RULES: tuple[type[Rule], ...] = _discover()


def rule_by_key(key: str) -> type[Rule]:
    """The rule whose code or name is `key` (KeyError listing the known ones)."""
    for rule in RULES:
        if key in (rule.CODE, rule.NAME):
            return rule
    known = ", ".join(f"{rule.CODE} ({rule.NAME})" for rule in RULES)
    raise KeyError(f"unknown rule {key!r}; known rules: {known}")


__all__ = ["RULES", "Rule", "RuleExample", "RuleOptions", "rule_by_key"]
