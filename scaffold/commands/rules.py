"""`scaffold rules [CODE]`: the rule table (pipeline order), or one rule with its examples."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from ..errors import ScaffoldError
from ..rules import RULES, rule_by_key
from ..ruleset import RULESET_VERSION
from . import Command


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "rule", nargs="?", metavar="CODE", help="show this rule (code or name) with its examples"
    )


def _run(args: argparse.Namespace, console: Console) -> int:
    if args.rule is None:
        table = Table(title=f"Rules (rule set {RULESET_VERSION}), in pipeline order", title_justify="left")
        for column in ("code", "name", "summary"):
            table.add_column(column, overflow="fold")
        for rule in RULES:
            table.add_row(rule.CODE, rule.NAME, rule.SUMMARY)
        console.print(table)
        console.out("Disable one with `--disable CODE` (or its name).", highlight=False)
        return 0
    try:
        rule = rule_by_key(args.rule)
    except KeyError as error:
        raise ScaffoldError(str(error.args[0])) from None
    console.out(f"{rule.CODE} {rule.NAME}: {rule.SUMMARY}", highlight=False)
    if not rule.EXAMPLES:
        console.out("(no examples)", highlight=False)
    for example in rule.EXAMPLES:
        console.out(f"\n--- {example.model_type}: {example.scope}, before", highlight=False)
        console.out(example.before, end="", highlight=False)
        console.out(f"+++ {example.model_type}: {example.scope}, after", highlight=False)
        console.out(example.after, end="", highlight=False)
    return 0


COMMAND = Command(
    name="rules",
    help="list the rewrite rules (code, name, summary), or show one rule with its examples",
    configure=_configure,
    run=_run,
)
