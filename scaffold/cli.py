"""Command line entry point: `scaffold <command> ...` (also `python -m scaffold`).

Subcommands are registered in `scaffold.commands`; this module only builds the parser, dispatches, and
turns a `ScaffoldError` into one error message on stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from rich.console import Console

from .commands import all_commands
from .errors import ScaffoldError

EXIT_ERROR = 2
DISTRIBUTION = "nxd-scaffold"
CAPTURE_WIDTH = 180


def build_parser() -> argparse.ArgumentParser:
    """The `scaffold` parser with one subparser per registered command."""
    parser = argparse.ArgumentParser(
        prog="scaffold",
        description="Scaffold optimum-neuron training models from installed transformers models.",
    )
    parser.add_argument("--version", action="version", version=version_line())
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in all_commands():
        subparser = subparsers.add_parser(command.name, help=command.help, description=command.help)
        command.configure(subparser)
        subparser.set_defaults(_command=command)
    return parser


def version_line() -> str:
    """`scaffold <version> (rule set N)`: the distribution's version and the rule set it generates with."""
    from importlib.metadata import PackageNotFoundError, version

    from .ruleset import RULESET_VERSION

    try:
        installed = version(DISTRIBUTION)
    except PackageNotFoundError:  # run from a source tree that was never installed
        installed = "unknown"
    return f"scaffold ({DISTRIBUTION}) {installed}, rule set {RULESET_VERSION}"


def _console() -> Console:
    """Rich console at the terminal's width (`COLUMNS` when set); when piped without `COLUMNS`, a fixed width
    keeps the tables readable and the output deterministic."""
    console = Console()
    if console.is_terminal or os.environ.get("COLUMNS", "").isdigit():
        return console
    return Console(width=CAPTURE_WIDTH)


def main(argv: Sequence[str] | None = None, console: Console | None = None) -> int:
    """Run the CLI; returns the exit status (argparse usage errors exit with status 2 themselves)."""
    args = build_parser().parse_args(argv)
    out = console or _console()
    try:
        return args._command.run(args, out)
    except ScaffoldError as error:
        print(f"scaffold {args.command}: error: {error}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
