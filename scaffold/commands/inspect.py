"""`scaffold inspect <model_type>`: print the conversion plan; nothing is written."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from ..analysis import analyze
from ..render import print_plan
from ..source import locate
from . import Command


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_type", help="transformers model type, e.g. llama, qwen3, granite")
    parser.add_argument(
        "--source",
        type=Path,
        metavar="FILE",
        help="analyse this modeling file instead of the installed one (config class still from model_type)",
    )
    parser.add_argument("--json", action="store_true", help="print the Blueprint as JSON instead of tables")


def _run(args: argparse.Namespace, console: Console) -> int:
    source = locate(args.model_type, args.source)
    blueprint = analyze(source)
    if args.json:
        console.print_json(blueprint.to_json()) if console.is_terminal else print(blueprint.to_json())
        return 0
    print_plan(blueprint, console, defaults=source.config.defaults())
    return 0


COMMAND = Command(
    name="inspect",
    help="show the conversion plan for a model type (modules, parallel layers, specs, features, refusals)",
    configure=_configure,
    run=_run,
)
