"""The one exception type the command line turns into a single clear error message."""

from __future__ import annotations


class ScaffoldError(Exception):
    """A user-facing failure: what happened, where, and what to do next.

    The CLI prints `str(error)` on one line (plus an optional hint) and exits non-zero; nothing else
    in the package prints errors.
    """

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if self.hint is None else f"{self.message}\n  hint: {self.hint}"
