"""The license header of a transformers model, as optimum-neuron's hand-written models keep it.

optimum-neuron's training models start with the comment block of the transformers file they were adapted
from (`# coding=utf-8`, the copyright line, the Apache-2.0 notice). A transformers modeling file generated
from a modular file starts with the modular converter's banner instead, sometimes followed by the license
and sometimes not; the model's configuration file, written by the same authors, always carries it then.

`license_lines(text)` takes the block from a file's leading comments: from the `coding` or first copyright
line to the end of that run of comment lines, and only when it mentions a copyright or a license.
`model_license(modeling_file, fallback_folder)` tries the modeling file, then the configuration file(s) of
the model's folder in transformers.
"""

from __future__ import annotations

import re
from pathlib import Path

_CODING = re.compile(r"^#.*coding[:=]")
_COPYRIGHT = re.compile(r"copyright", re.IGNORECASE)
_NOTICE = re.compile(r"copyright|license", re.IGNORECASE)


def license_lines(text: str) -> tuple[str, ...]:
    """The license comment block at the top of a Python file (empty when it has none)."""
    leading: list[str] = []
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            leading.append(line.rstrip())
            continue
        break
    start = next((index for index, line in enumerate(leading) if _COPYRIGHT.search(line)), None)
    if start is None:
        return ()
    if start > 0 and _CODING.match(leading[start - 1]):
        start -= 1
    end = start
    while end < len(leading) and leading[end].startswith("#"):
        end += 1
    block = tuple(leading[start:end])
    return block if any(_NOTICE.search(line) for line in block) else ()


def model_license(modeling_file: Path, fallback_folder: Path | None = None) -> tuple[str, ...]:
    """The license block of `modeling_file`, else of a `configuration_*.py` in `fallback_folder`.

    `fallback_folder` is the model's folder in the installed transformers (its configuration file carries
    the license when the modeling file was generated from a modular file without one). Unreadable files
    count as having none.
    """
    candidates = [modeling_file]
    if fallback_folder is not None:
        stem = modeling_file.stem.removeprefix("modeling_")
        preferred = fallback_folder / f"configuration_{stem}.py"
        candidates += [
            preferred,
            *sorted(p for p in fallback_folder.glob("configuration_*.py") if p != preferred),
        ]
    for path in candidates:
        try:
            found = license_lines(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError):
            continue
        if found:
            return found
    return ()
