"""Shared, cached generations for the command tests.

A full generation runs every rule over a transformers file and takes seconds, so the command tests share
one emission per distinct request for the whole session: `fast_emit` swaps the commands' `emit_model`
for a cached one. Emission is deterministic (the golden-file test checks that a fresh process gives the
committed bytes), so the cache changes nothing but time. Tests that need a request emitted from scratch
call `scaffold.emit.emit_model` directly.
"""

from __future__ import annotations

import functools

import pytest

from scaffold import drift
from scaffold import update as update_merge
from scaffold.commands import new_model, update
from scaffold.emit import EmittedModel, Request, emit_model
from scaffold.rules import RULES


@functools.cache
def cached_emit(request: Request) -> EmittedModel:
    """`emit_model(request)`, once per session and request."""
    return emit_model(request)


@pytest.fixture
def fast_emit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make `scaffold new-model`, `update` and `check` use the session's cached emissions."""
    for module in (new_model, update, drift, update_merge):
        monkeypatch.setattr(module, "emit_model", cached_emit)


def no_rules() -> list[str]:
    """`--disable` arguments for every rule: analysis, refusals, header and formatting only (fast)."""
    return [word for rule in RULES for word in ("--disable", rule.CODE)]
