"""The progress display of a conformance run: a spinner on the running check, a line per result.

On a terminal the running check shows a live status line; piped (CI logs) only the result lines are
printed, one per configuration, so logs stay readable and deterministic apart from the timings.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

from rich.console import Console

from .harness.protocol import size_label
from .profiles import PlannedCheck
from .results import CheckResult, RunResults, Status

STYLES = {
    Status.PASS: "green",
    Status.WARN: "yellow",
    Status.UNSUPPORTED: "magenta",
    Status.FAIL: "bold red",
    Status.SKIP: "dim",
}


class Progress:
    """Callbacks for `runner.run_model` that print what runs and what came out."""

    def __init__(self, console: Console, total_checks: int):
        self.console = console
        self.total = total_checks
        self.done = 0
        self._current: str | None = None
        self._status: AbstractContextManager[Any] = nullcontext()

    def started(self, planned: PlannedCheck) -> None:
        if planned.name != self._current:
            self._current = planned.name
            self.done += 1
        sizes = "" if len(planned.parallel_sizes) != 1 else f" {size_label(*planned.parallel_sizes[0])}"
        text = f"[{self.done}/{self.total}] {planned.name}{sizes}: {len(planned)} configuration(s)"
        if self.console.is_terminal:
            self._status = self.console.status(text)
            self._status.__enter__()
        else:
            self.console.print(text, highlight=False)

    def finished(self, planned: PlannedCheck, results: list[CheckResult]) -> None:
        self._status.__exit__(None, None, None)
        self._status = nullcontext()
        for result in results:
            style = STYLES[result.status]
            self.console.print(
                f"  [{style}]{result.status.value:4}[/{style}] {result.label} ({result.seconds:.1f}s)",
                highlight=False,
            )
            if result.status is not Status.PASS:
                for reason in result.reasons[:3]:
                    self.console.print(f"       {reason}", highlight=False, markup=False)


def summary_line(run: RunResults) -> str:
    """``llama: WARN (9 PASS, 2 WARN, 1 SKIP) (quick profile, 62.1 s)``."""
    from .reports.figures import headline

    return f"{run.model_type}: {headline(run)} ({run.profile} profile, {run.seconds:.1f} s)"
