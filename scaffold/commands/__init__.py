"""Subcommands of `scaffold`. Each module exposes `COMMAND`; add new ones to `COMMANDS`.

A command configures its own argparse subparser and runs with the parsed arguments and a console,
returning the exit status. Failures a user can fix are raised as `ScaffoldError`; the CLI prints them.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

from rich.console import Console


@dataclass(frozen=True)
class Command:
    """A subcommand: its name, one-line help, parser setup and entry point."""

    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, Console], int]


def all_commands() -> tuple[Command, ...]:
    """The registered subcommands, in the order `--help` lists them."""
    from .check import COMMAND as CHECK
    from .inspect import COMMAND as INSPECT
    from .list_types import COMMAND as LIST
    from .new_model import COMMAND as NEW_MODEL
    from .rules import COMMAND as RULES
    from .update import COMMAND as UPDATE

    return (NEW_MODEL, INSPECT, LIST, RULES, CHECK, UPDATE)
