"""The checks there are: every module of `conformance.checks` defines one, as its module-level `CHECK`.

Adding a check is adding a module there (a `Check` subclass with a typed configuration, a plan, an
on-rank function and a judge); nothing else lists the checks. They run, and reports show them, in the
order of their `order` attribute.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from typing import Any

from .protocol import Check

CHECKS_PACKAGE = "conformance.checks"


@functools.cache
def all_checks() -> tuple[Check[Any, Any, Any], ...]:
    """Every registered check, by `order` (then name)."""
    package = importlib.import_module(CHECKS_PACKAGE)
    found = []
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{CHECKS_PACKAGE}.{info.name}")
        check = getattr(module, "CHECK", None)
        if not isinstance(check, Check):
            raise TypeError(
                f"{module.__name__} defines no CHECK: every module of {CHECKS_PACKAGE} is one check "
                "(a Check instance named CHECK); put helpers in conformance.model_runs or conformance.comparisons"
            )
        found.append(check)
    names = [check.name for check in found]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise TypeError(f"several checks are named {duplicates}")
    return tuple(sorted(found, key=lambda check: (check.order, check.name)))


def check_names() -> tuple[str, ...]:
    """The names of every registered check, in order."""
    return tuple(check.name for check in all_checks())


def check_named(name: str) -> Check[Any, Any, Any]:
    """The check called `name` (ValueError listing the known ones otherwise)."""
    for check in all_checks():
        if check.name == name:
            return check
    raise ValueError(f"unknown check {name!r}; known: {', '.join(check_names())}")
