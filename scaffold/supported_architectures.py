"""The row of a new model in the training table of optimum-neuron's supported-architectures page.

`docs/source/supported_architectures.mdx` lists, under `## Training`, the architectures with a custom
training implementation in a Markdown table (architecture, task, tensor parallelism, pipeline
parallelism). A registered model gets a row there, after the last one, padded to the column widths of
the separator line. The edit is idempotent (a row that names the architecture already counts) and, as the
other registration edits, refuses with the file and line when the table is not where it is expected.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import ScaffoldError

DOCS_PAGE = Path("docs/source/supported_architectures.mdx")
SECTION = "## Training"
TASK = "text-generation"


@dataclass(frozen=True)
class TrainingRow:
    """What the table says about one architecture."""

    architecture: str  # transformers' display name, e.g. "Mistral"
    pipeline_parallelism: bool

    def cells(self) -> dict[str, str]:
        """Cell text by lower-cased column title."""
        return {
            "architecture": self.architecture,
            "task": TASK,
            "tensor parallelism": "✓",
            "pipeline parallelism": "✓" if self.pipeline_parallelism else "✗",
        }


def add_row(text: str, row: TrainingRow) -> tuple[str, str | None]:
    """`text` with `row` in the training table, and a note of the change (None: the row was there)."""
    lines = text.splitlines(keepends=True)
    header = _table_header(lines)
    titles = _cells(lines[header])
    separator = lines[header + 1]
    widths = [len(part) - 2 for part in separator.strip().strip("|").split("|")]
    last = header + 1
    while last + 1 < len(lines) and lines[last + 1].lstrip().startswith("|"):
        last += 1
    for line in lines[header + 2 : last + 1]:
        names = [name.strip().lower() for name in _cells(line)[0].split(",")]
        if row.architecture.lower() in names:
            return text, None
    wanted = row.cells()
    unknown = [title for title in titles if title.lower() not in wanted]
    if unknown or len(widths) != len(titles):
        raise _refuse(f"unexpected columns {', '.join(unknown) or titles} in the training table", header)
    cells = [f" {wanted[title.lower()].ljust(width)} " for title, width in zip(titles, widths, strict=True)]
    ending = "\r\n" if separator.endswith("\r\n") else "\n"
    new_line = "|" + "|".join(cells) + "|" + ending
    lines.insert(last + 1, new_line)
    return "".join(lines), f"added {row.architecture} to the training table"


def _table_header(lines: list[str]) -> int:
    """Index of the header line of the first table after the training heading."""
    start = next((index for index, line in enumerate(lines) if line.strip() == SECTION), None)
    if start is None:
        raise _refuse(f"no `{SECTION}` section")
    for index in range(start + 1, len(lines) - 1):
        if lines[index].startswith("## "):
            break
        is_table = lines[index].lstrip().startswith("|") and "architecture" in lines[index].lower()
        if is_table and set(lines[index + 1].strip()) <= set("|-: "):
            return index
    raise _refuse(f"no `| Architecture | ... |` table in the `{SECTION}` section", start)


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _refuse(message: str, index: int | None = None) -> ScaffoldError:
    where = f"{DOCS_PAGE}:{index + 1}" if index is not None else str(DOCS_PAGE)
    return ScaffoldError(f"{where}: {message}", hint="add the row by hand, or fix the page and rerun")
