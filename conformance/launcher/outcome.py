"""What each rank did during one call: the data the launcher collects and its errors report.

Plain data only, so the worker can build a `RankFailure` without importing the parent-side code and an
outcome survives pickling.
"""

from __future__ import annotations

import signal
import traceback
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class RankFailure:
    """An exception raised on one rank, captured there as text (the exception object may not pickle)."""

    rank: int
    exc_type: str
    """Qualified name of the exception class; builtins are unqualified (``ValueError``)."""
    message: str
    traceback: str
    """The remote traceback, formatted as Python prints it, launcher frames removed."""


@dataclass
class RankOutcome:
    """Per-rank results of one call (or of pool startup); every rank lands in exactly one bucket."""

    world_size: int
    label: str
    """What ran, as a noun phrase for messages: ``"boom()"`` or ``"worker startup (...)"``."""
    timeout: float
    phase: str = "call"
    """``"call"`` or ``"startup"`` (spawning the pool)."""
    values: dict[int, Any] = field(default_factory=dict)
    failures: dict[int, RankFailure] = field(default_factory=dict)
    exit_codes: dict[int, int | None] = field(default_factory=dict)
    """Ranks whose process ended without replying: exit status, negative for a signal, None if unknown."""
    unfinished: tuple[int, ...] = ()
    timed_out: bool = False
    """True when `unfinished` ran out of time; False when they were stopped because another rank failed."""
    stacks: dict[int, str] = field(default_factory=dict)
    """Python stacks of unfinished ranks, dumped just before they were killed."""
    group_lost: set[int] = field(default_factory=set)
    """Ranks whose call left the default process group destroyed; the pool cannot be reused."""

    @property
    def complete(self) -> bool:
        return not (self.failures or self.exit_codes or self.unfinished)

    @property
    def finished(self) -> list[int]:
        return sorted(self.values)


def describe_exit(code: int | None) -> str:
    """Say how a process ended, in words: ``exited with status 3`` / ``was killed by SIGSEGV``."""
    if code is None:
        return "ended (exit status unknown)"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name}"
    return f"exited with status {code}"


def failure_from_exception(
    rank: int, exc: BaseException, *, note: str = "", skip_frames_of: str | None = None
) -> RankFailure:
    """Capture `exc` as text; leading frames from the file `skip_frames_of` (the launcher's) are dropped."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == skip_frames_of:
        tb = tb.tb_next
    text = "".join(traceback.TracebackException(type(exc), exc, tb or exc.__traceback__).format())
    if note:
        text += note + "\n"
    cls = type(exc)
    name = cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    try:
        message = str(exc)
    except Exception:
        message = "<str() of the exception failed>"
    return RankFailure(rank=rank, exc_type=name, message=message, traceback=text)
