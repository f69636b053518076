"""Whether an error is the refusal the kit expected, naming what it refuses.

Two refusals are predicted from the configuration, never from the model's name:

- a TP size the catalogue cannot build the variant at (`reference_models.unsupported_reason`: a vocabulary,
  head count or intermediate size T does not divide). No implementation can shard it, so refusing it is the
  right answer: the error must name T and the value it does not divide;
- a flash-attention case whose config needs what the NKI kernel lacks (`flash_kernel_limits`): the error
  must name flash attention and the missing feature.
"""

from __future__ import annotations

import re


def offending_values(rejection: str) -> list[str]:
    """The config value each problem of a catalogue rejection is about: the first number of each `; ` part."""
    found = (re.search(r"\d+", problem) for problem in rejection.split("; "))
    return [match.group() for match in found if match]


def names_value(text: str, value: object) -> bool:
    """Whether `text` contains `value` as a whole number."""
    return re.search(rf"(?<!\d){value}(?!\d)", text) is not None


def names_tp_rejection(message: str, tp_size: int, rejection: str) -> bool:
    """Whether an error names the TP size and one of the values it does not divide."""
    return names_value(message, tp_size) and any(
        names_value(message, value) for value in offending_values(rejection)
    )
