"""Command line entry point: `scaffold <command> ...` (also `python -m scaffold`).

Subcommands are registered in `scaffold.commands`; this module only builds the parser, dispatches, and
turns a `ScaffoldError` into one error message on stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from rich.console import Console

from .commands import all_commands
from .errors import ScaffoldError

EXIT_ERROR = 2
CAPTURE_WIDTH = 180


def build_parser() -> argparse.ArgumentParser:
    """The `scaffold` parser with one subparser per registered command."""
    parser = argparse.ArgumentParser(
        prog="scaffold",
        description="Scaffold optimum-neuron training models from installed transformers models.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in all_commands():
        subparser = subparsers.add_parser(command.name, help=command.help, description=command.help)
        command.configure(subparser)
        subparser.set_defaults(_command=command)
    return parser


def _console() -> Console:
    """Rich console; when piped, a fixed width keeps the tables readable and the output deterministic."""
    console = Console()
    return console if console.is_terminal else Console(width=CAPTURE_WIDTH)


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
