"""Three-way merge of a package's files, and the conflict markers it leaves.

Each file is merged from three versions: the pristine previous generation (the base), the file on disk
(the contributor's) and the new generation, with `merge3` (the diff3 algorithm of Bazaar/Breezy, a
library, no git needed). Where only one side changed a region, that side wins; where both changed it
differently, both are kept between git-style markers, so nothing is lost and nothing is resolved
silently. A file that one side removed counts as empty on that side.

`conflict_markers` finds unresolved markers (from this merge or any other tool) in a set of files, so that
`scaffold update` and `scaffold check` can refuse to go on until they are gone.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from merge3 import Merge3

YOURS = "yours (on disk)"
_MARKER = re.compile(
    rb"^(<{7}|>{7}|\|{7})(?: |\r?$)"
)  # git's start/end/base markers; `=======` is too common


@dataclass(frozen=True)
class Conflict:
    """An unresolved conflict: the file (relative to the package) and the 1-based line of its marker."""

    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class MergeResult:
    """The merged files (None: absent after the merge) and the conflicts they hold."""

    files: dict[str, bytes | None]
    conflicts: tuple[Conflict, ...]


def merge_trees(
    base: Mapping[str, bytes], ours: Mapping[str, bytes], theirs: Mapping[str, bytes], theirs_label: str
) -> MergeResult:
    """Merge every file named in any of the three trees; `theirs_label` names the new generation."""
    merged: dict[str, bytes | None] = {}
    for name in sorted({*base, *ours, *theirs}):
        merged[name] = merge_file(base.get(name), ours.get(name), theirs.get(name), theirs_label)
    present = {name: data for name, data in merged.items() if data is not None}
    return MergeResult(files=merged, conflicts=conflict_markers(present))


def merge_file(
    base: bytes | None, ours: bytes | None, theirs: bytes | None, theirs_label: str
) -> bytes | None:
    """One file's merge; None when the result is that the file is absent."""
    if ours == theirs or theirs == base:
        return ours
    if ours == base:
        return theirs
    lines = [_lines(version) for version in (base, ours, theirs)]
    merged = Merge3(*lines).merge_lines(name_a=YOURS, name_b=theirs_label, reprocess=True)
    return "".join(merged).encode("utf-8")


def _lines(data: bytes | None) -> list[str]:
    """Text lines with their endings; a last line without one gets one, so a marker never joins it."""
    lines = (data or b"").decode("utf-8").splitlines(keepends=True)
    if lines and not lines[-1].endswith(("\n", "\r")):
        lines[-1] += "\n"
    return lines


def conflict_markers(files: Mapping[str, bytes]) -> tuple[Conflict, ...]:
    """Every line that starts with a conflict marker, by file then line."""
    found = []
    for name in sorted(files):
        for number, line in enumerate(files[name].splitlines(), start=1):
            if _MARKER.match(line):
                found.append(Conflict(name, number))
    return tuple(found)
