"""Why a job did not complete on the ranks, and whether that is the model refusing the configuration.

A job stops with a `JobError` when a step raises on some rank (`rank_steps.rank_step`), when the package
does not import, or when the whole rank call fails (a rank crashed or hung). Most of these are FAILs. One is
not: a model that refuses a configuration it does not support, with a clear error while it is being built,
is UNSUPPORTED (DESIGN §5: listed, not a pass, not a defect). "Clear" means the exception says so by its
type or its words: `NotImplementedError` (Python's own "not supported"), or a `ValueError` whose message
says the thing is not supported. A crash is a FAIL even during construction: an `AttributeError`, a shape
error, a `KeyError`, an assertion — those are defects, not refusals.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

REFUSAL_TYPES = ("NotImplementedError",)
"""Exception types that are refusals by definition."""

WORDED_REFUSAL_TYPES = ("ValueError",)
"""Exception types that are refusals when their message says so (`REFUSAL_WORDS`)."""

REFUSAL_WORDS = re.compile(r"not supported|unsupported|does not support|do not support|cannot be used with")


@dataclass(frozen=True)
class JobError:
    """One job's failure: where, what, and the rank's traceback."""

    step: str
    """What was being done: "from_pretrained at T=2", "mounting the package", "the rank call at T=2"."""
    exception_type: str
    message: str
    """`Type: message [at file:line ...]`, one line."""
    traceback: str
    rank: int | None = None
    construction: bool = False
    """Raised while the model was being built or loaded (where a clear refusal is UNSUPPORTED)."""
    crashed: bool = False
    """The rank call as a whole failed: a rank crashed or hung (always a FAIL)."""

    @property
    def reason(self) -> str:
        """``from_pretrained at T=2 failed: rank 1: ValueError: ...``."""
        where = f"rank {self.rank}: " if self.rank is not None else ""
        return f"{self.step} failed: {where}{self.message}"

    @property
    def refusal(self) -> bool:
        """A clear refusal of the configuration while the model was built (UNSUPPORTED, not a FAIL)."""
        if self.crashed or not self.construction:
            return False
        return is_refusal(self.exception_type, self.message)


def is_refusal(exception_type: str, message: str) -> bool:
    """Whether an exception of this type and message says "not supported" clearly."""
    if exception_type in REFUSAL_TYPES:
        return True
    return exception_type in WORDED_REFUSAL_TYPES and REFUSAL_WORDS.search(message.lower()) is not None
