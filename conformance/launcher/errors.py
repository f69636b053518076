"""Exceptions raised by `run_on_ranks`, with messages that say which rank did what and what to do next.

`RankError`, `RankCrashed` and `RankTimeout` share `RankCallFailed`, which carries the full `RankOutcome`
(remote tracebacks, exit codes, stacks of ranks that were stuck). When several things went wrong the class
names the root cause: a crash beats an exception (a dead peer makes the others raise in collectives), an
exception beats a timeout (the others were usually waiting for the rank that raised).
"""

from __future__ import annotations

from conformance.launcher.outcome import RankOutcome, describe_exit


class LaunchError(RuntimeError):
    """Base class of every error the launcher raises."""


class DeviceUnavailable(LaunchError):
    """The requested device cannot host one rank per accelerator; callers may skip instead of fail."""


class RankCallFailed(LaunchError):
    """A call (or the pool startup) did not complete on every rank; the worker pool was killed."""

    hint = ""

    def __init__(self, outcome: RankOutcome) -> None:
        self.outcome = outcome
        super().__init__(_format(self._headline(), outcome, self._hint()))

    def __reduce__(self) -> tuple[type, tuple[RankOutcome]]:
        return (type(self), (self.outcome,))

    @property
    def ranks(self) -> tuple[int, ...]:
        """The ranks this error is about (those that raised, died or did not finish)."""
        raise NotImplementedError

    def _headline(self) -> str:
        raise NotImplementedError

    def _hint(self) -> str:
        return self.hint


class RankError(RankCallFailed):
    """One or more ranks raised; `outcome.failures` holds each remote traceback."""

    hint = "Ranks that did not finish were most likely waiting for the failed rank in a collective."

    @property
    def ranks(self) -> tuple[int, ...]:
        return tuple(sorted(self.outcome.failures))

    def _hint(self) -> str:
        return self.hint if self.outcome.unfinished else ""

    def _headline(self) -> str:
        o = self.outcome
        first = o.failures[self.ranks[0]]
        cause = f"{first.exc_type}: {first.message}" if first.message else first.exc_type
        if len(self.ranks) == 1:
            return f"rank {first.rank} of {o.world_size} raised {cause} in {o.label}"
        return f"ranks {_ranks(self.ranks)} of {o.world_size} raised in {o.label}; rank {first.rank}: {cause}"


class RankCrashed(RankCallFailed):
    """One or more rank processes ended without replying (os._exit, a signal, the OOM killer)."""

    hint = (
        "A rank process ended without reporting: os._exit, a segfault or the OOM killer. Ranks still "
        "running were probably blocked in a collective with it."
    )

    startup_hint = (
        "A rank process ended while starting; its stderr above says why. 'An attempt has been made to "
        "start a new process before the current process has finished its bootstrapping phase' means the "
        'calling script needs an `if __name__ == "__main__":` guard: spawned workers re-import it.'
    )

    @property
    def ranks(self) -> tuple[int, ...]:
        return tuple(sorted(self.outcome.exit_codes))

    def _hint(self) -> str:
        return self.startup_hint if self.outcome.phase == "startup" else self.hint

    def _headline(self) -> str:
        o = self.outcome
        if len(self.ranks) == 1:
            (rank,) = self.ranks
            return f"rank {rank} of {o.world_size} {describe_exit(o.exit_codes[rank])} in {o.label}"
        return f"ranks {_ranks(self.ranks)} of {o.world_size} died in {o.label}"


class RankTimeout(RankCallFailed):
    """One or more ranks were still running when the timeout expired; `outcome.stacks` shows where."""

    hint = (
        "If the work is legitimately slow, raise timeout=. Otherwise the stacks below show where each rank "
        "was stuck; a collective that not every rank reached is the usual cause."
    )

    @property
    def ranks(self) -> tuple[int, ...]:
        return self.outcome.unfinished

    def _headline(self) -> str:
        o = self.outcome
        who = f"rank {self.ranks[0]}" if len(self.ranks) == 1 else f"ranks {_ranks(self.ranks)}"
        return f"{who} of {o.world_size} did not finish {o.label} within {o.timeout:g} s"


def error_for(outcome: RankOutcome) -> RankCallFailed:
    """The exception that names the root cause of an incomplete outcome (see the module docstring)."""
    if outcome.complete:
        raise ValueError("error_for() needs an incomplete outcome")
    if outcome.exit_codes:
        return RankCrashed(outcome)
    if outcome.failures:
        return RankError(outcome)
    return RankTimeout(outcome)


def _ranks(ranks: tuple[int, ...] | list[int]) -> str:
    return ", ".join(map(str, ranks))


def _format(headline: str, o: RankOutcome, hint: str) -> str:
    lines = [headline]
    if o.finished:
        lines.append(f"  finished: {_ranks(o.finished)}")
    for rank, failure in sorted(o.failures.items()):
        lines.append(f"  raised: {rank} ({failure.exc_type})")
    for rank, code in sorted(o.exit_codes.items()):
        lines.append(f"  died: {rank} ({describe_exit(code)})")
    if o.unfinished:
        why = "timed out" if o.timed_out else "stopped after another rank failed"
        lines.append(f"  did not finish: {_ranks(o.unfinished)} ({why})")
    lines.append("The worker pool was killed; the next call starts a fresh one.")
    if hint:
        lines.append(hint)
    first_with: dict[str, int] = {}  # identical tracebacks (the usual case) are printed once
    for rank, failure in sorted(o.failures.items()):
        if failure.traceback in first_with:
            lines += [
                "",
                f"--- rank {rank}: remote traceback: same as rank {first_with[failure.traceback]} ---",
            ]
            continue
        first_with[failure.traceback] = rank
        lines += ["", f"--- rank {rank}: remote traceback ---", failure.traceback.rstrip()]
    for rank, stack in sorted(o.stacks.items()):
        lines += ["", f"--- rank {rank}: Python stack when stopped ---", stack.rstrip()]
    return "\n".join(lines)
