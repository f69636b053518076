"""`scaffold rules [CODE]`: the rules (pipeline order) and refusal codes, or one code with what to do."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from ..codes import lookup, refusal_lines, rule_lines
from ..errors import ScaffoldError
from ..refusal_codes import ALL_CODES, RefusalCode
from ..rules import RULES
from ..ruleset import RULESET_VERSION
from . import Command


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "code",
        nargs="?",
        metavar="CODE",
        help="show this rule (NXS code or name, with its examples) or refusal code (R code or name)",
    )


def _run(args: argparse.Namespace, console: Console) -> int:
    out = console.out
    if args.code is None:
        table = Table(title=f"Rules (rule set {RULESET_VERSION}), in pipeline order", title_justify="left")
        for column in ("code", "name", "builds on", "summary"):
            table.add_column(column, overflow="fold")
        for rule in RULES:
            table.add_row(rule.CODE, rule.NAME, ", ".join(rule.REQUIRES), rule.SUMMARY)
        console.print(table)
        refusals = Table(title="Refusal codes", title_justify="left")
        for column in ("code", "name", "why"):
            refusals.add_column(column, overflow="fold")
        for entry in ALL_CODES:
            refusals.add_row(entry.code, entry.name, entry.why)
        console.print(refusals)
        out(
            "`scaffold rules CODE` says what to do about one; `--disable CODE` skips a rule.", highlight=False
        )
        return 0
    try:
        found = lookup(args.code)
    except KeyError as error:
        raise ScaffoldError(str(error.args[0]), hint="`scaffold rules` lists every code") from None
    if isinstance(found, RefusalCode):
        for line in refusal_lines(found):
            out(line, highlight=False)
        return 0
    for line in rule_lines(found):
        out(line, highlight=False)
    if not found.EXAMPLES:
        out("(no examples)", highlight=False)
    for example in found.EXAMPLES:
        out(f"\n--- {example.model_type}: {example.scope}, before", highlight=False)
        out(example.before, end="", highlight=False)
        out(f"+++ {example.model_type}: {example.scope}, after", highlight=False)
        out(example.after, end="", highlight=False)
    return 0


COMMAND = Command(
    name="rules",
    help="list the rewrite rules and refusal codes, or show one code with what to do about it",
    configure=_configure,
    run=_run,
)
