"""Errors on the ranks, as checks report them: one line that names where it happened, and agreement
between ranks so that every rank takes the same branch after a failure."""

from __future__ import annotations

import traceback

MODEL_PACKAGE_MARKER = "modeling_"
"""Frames in a file whose name starts with this are the model package's code (the contributor's)."""


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


def first_line(error: str) -> str:
    """The first line of an error message, for a reason (the whole message goes to the traceback)."""
    return error.strip().splitlines()[0] if error.strip() else "failed"


def first_rank_error(error: str | None) -> str | None:
    """Every rank's error (or None) exchanged; the first one found, prefixed with its rank, or None."""
    import torch.distributed as dist

    errors: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(errors, error)
    for rank, found in enumerate(errors):
        if found is not None:
            return f"rank {rank}: {found}"
    return None


def _is_model_code(filename: str) -> bool:
    return filename.rsplit("/", 1)[-1].startswith(MODEL_PACKAGE_MARKER)
