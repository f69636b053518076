"""Which deviations (`deviations.py`) this process went through: the reference layers and host note an id
at the point where they do something the released Neuron stack does differently.

A check never guesses which deviations a configuration touches: the code that deviates says so, and the
on-rank harness (`conformance.harness.on_rank`) clears the record before each job and collects it from
every rank afterwards. The record is per process (rank workers are separate processes) and holds ids only.

A step that builds a model and then overwrites its random initialisation (the host's `from_pretrained`)
runs inside `discarding_random_init()`: a deviation that only changes random initialisation (NXD-03) is
not touched there, because the values it affects are thrown away.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

RANDOM_INIT_ONLY = frozenset({"NXD-03"})
"""Deviations that change nothing but random initialisation."""

_noted: set[str] = set()
_discarding_init = 0


def note(deviation_id: str, *, random_init_only: bool = False) -> None:
    """Record that this process just went through deviation `deviation_id`; `random_init_only` says that
    this passage changes nothing but random initialisation (as every passage of NXD-03 does)."""
    if _discarding_init and (random_init_only or deviation_id in RANDOM_INIT_ONLY):
        return
    _noted.add(deviation_id)


def noted() -> tuple[str, ...]:
    """The ids noted since the last `clear()`, sorted."""
    return tuple(sorted(_noted))


def clear() -> None:
    """Forget every noted id (the harness calls this before each job)."""
    _noted.clear()


@contextlib.contextmanager
def discarding_random_init() -> Iterator[None]:
    """Within the block, random initialisation is overwritten afterwards (a checkpoint is loaded over it)."""
    global _discarding_init
    _discarding_init += 1
    try:
        yield
    finally:
        _discarding_init -= 1


@contextlib.contextmanager
def recording() -> Iterator[set[str]]:
    """For tests: a set that holds, once the block ends, the ids noted inside it (the record is cleared
    at the start and restored to its earlier content at the end)."""
    before = set(_noted)
    _noted.clear()
    found: set[str] = set()
    try:
        yield found
    finally:
        found.update(_noted)
        _noted.clear()
        _noted.update(before)
