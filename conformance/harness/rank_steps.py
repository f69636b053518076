"""Steps on the ranks that every rank takes together: a step that fails on one rank fails on all of them.

A check's on-rank function is a sequence of steps with collectives between them. If one rank raised while
the others went on into the next collective, they would wait for it forever. `rank_step` runs a step on
every rank, exchanges whether it raised, and raises the same `StepFailed` (the first failing rank's error)
on every rank, so that every rank leaves the job together; the harness turns it into the job's error.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from typing import TypeVar

from .job_errors import JobError

T = TypeVar("T")

MODEL_PACKAGE_MARKER = "modeling_"
"""Frames in a file whose name starts with this are the model package's code (the contributor's)."""


class StepFailed(Exception):
    """A step failed on some rank; raised on every rank alike, carrying the first failing rank's error."""

    def __init__(self, error: JobError):
        super().__init__(error.reason)
        self.error = error


def describe(exc: BaseException) -> str:
    """`Type: message [at file:line in function]`, then the traceback.

    The location is the innermost frame, and when that is not the model's own code, the innermost frame of
    the model's modeling file as well ("model code: modeling_llama.py:77 in forward"): the line a
    contributor should look at first.
    """
    frames = traceback.extract_tb(exc.__traceback__)
    where = ""
    if frames:
        innermost = frames[-1]
        where = f" [at {innermost.filename}:{innermost.lineno} in {innermost.name}"
        model = [frame for frame in frames if _is_model_code(frame.filename)]
        if model and model[-1] is not innermost:
            frame = model[-1]
            where += f"; model code: {frame.filename}:{frame.lineno} in {frame.name}"
        where += "]"
    message = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {message}{where}\n{''.join(traceback.format_exception(exc))}"


def error_of(
    step: str, exc: BaseException, *, construction: bool = False, rank: int | None = None
) -> JobError:
    """The `JobError` of an exception raised during `step`."""
    text = describe(exc)
    return JobError(
        step=step,
        exception_type=type(exc).__name__,
        message=text.splitlines()[0],
        traceback=text,
        rank=rank,
        construction=construction,
    )


def rank_step(step: str, action: Callable[[], T], *, construction: bool = False) -> T:
    """`action()` on every rank; if it raised on any rank, `StepFailed` on every rank (one collective).

    `step` says what was being done ("from_pretrained at T=2"); `construction` marks the step that builds
    the model, where a clear refusal of the configuration is UNSUPPORTED rather than a FAIL
    (`job_errors.JobError.refusal`).
    """
    import torch.distributed as dist

    error: JobError | None = None
    value: T | None = None
    try:
        value = action()
    except Exception as exc:
        error = error_of(step, exc, construction=construction, rank=dist.get_rank())
    found = first_error([error])
    if found is not None:
        raise StepFailed(found)
    return value  # type: ignore[return-value]


def local_step(step: str, action: Callable[[], T]) -> T:
    """`action()` on this rank alone (rank 0's comparison, after the last collective): an exception
    becomes `StepFailed` naming `step`; the harness shares it with the other ranks after the job."""
    import torch.distributed as dist

    try:
        return action()
    except Exception as exc:
        raise StepFailed(error_of(step, exc, rank=dist.get_rank())) from exc


def first_error(errors: list[JobError | None]) -> JobError | None:
    """Every rank's errors exchanged (a collective); the first one, in rank order, or None."""
    import torch.distributed as dist

    gathered: list[list[JobError | None] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, errors)
    for found in gathered:
        for error in found or []:
            if error is not None:
                return error
    return None


def is_rank_zero() -> bool:
    import torch.distributed as dist

    return dist.get_rank() == 0


def _is_model_code(filename: str) -> bool:
    return filename.rsplit("/", 1)[-1].startswith(MODEL_PACKAGE_MARKER)
