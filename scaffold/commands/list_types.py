"""`scaffold list [TYPE ...]`: which decoder-only causal LMs of the installed transformers scaffold.

One row per model type: the verdict of the analysis (no rule runs, nothing is written) and, for a refused
type, the refusal codes (`scaffold rules CODE` explains each) and the first refusal with its file:line.
"""

from __future__ import annotations

import argparse
from importlib.metadata import version

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table
from rich.text import Text

from ..architectures import Verdict, decoder_only_types, survey
from ..errors import ScaffoldError
from ..ruleset import RULESET_VERSION
from . import Command


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model_types",
        nargs="*",
        metavar="TYPE",
        help="only these model types (default: all decoder-only ones)",
    )
    parser.add_argument("--refused", action="store_true", help="show only the types that do not scaffold")


def _run(args: argparse.Namespace, console: Console) -> int:
    transformers_version = version("transformers")
    candidates = decoder_only_types()
    unknown = [name for name in args.model_types if name not in candidates]
    if unknown:
        raise ScaffoldError(
            f"not a decoder-only causal-LM type of transformers {transformers_version}: {', '.join(unknown)}",
            hint="`scaffold list` without arguments lists them all",
        )
    wanted = args.model_types or candidates
    with Progress(
        TextColumn("analysing"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
        console=Console(stderr=True), transient=True,
    ) as progress:  # fmt: skip
        task = progress.add_task("", total=len(wanted))
        verdicts = survey(
            wanted, lambda verdict: progress.update(task, advance=1, description=verdict.model_type)
        )
    scaffolding = sum(verdict.scaffolds for verdict in verdicts)
    shown = [verdict for verdict in verdicts if not (args.refused and verdict.scaffolds)]
    console.print(
        _table(shown, f"transformers {transformers_version}, rule set {RULESET_VERSION}", console.width)
    )
    console.out(
        f"{scaffolding} of {len(verdicts)} scaffold; `scaffold inspect TYPE` shows a plan, "
        "`scaffold rules CODE` what a refusal means",
        highlight=False,
    )
    return 0


WIDE = 140  # below this, the architecture column gives its room to the reasons


def _table(verdicts: list[Verdict], versions: str, width: int) -> Table:
    wide = width >= WIDE
    table = Table(title=f"Decoder-only causal LMs ({versions})", title_justify="left")
    table.add_column("type", no_wrap=True)
    if wide:
        table.add_column("architecture")
    table.add_column("verdict", no_wrap=True)
    table.add_column("codes", max_width=14)
    table.add_column("first reason", overflow="fold", ratio=1)
    for verdict in verdicts:
        if verdict.error is not None:
            cells = ("error", "", verdict.error)
            style = "yellow"
        elif verdict.codes:
            cells = ("refused", " ".join(verdict.codes), verdict.first_reason)
            style = "red"
        else:
            cells = ("scaffolds", "", "")
            style = "green"
        row = (verdict.model_type, *([verdict.display_name] if wide else []), *cells)
        table.add_row(*(Text(cell) for cell in row), style=style)
    return table


COMMAND = Command(
    name="list",
    help="list the decoder-only causal LMs of the installed transformers: which scaffold, which refusals stop the rest",
    configure=_configure,
    run=_run,
)
