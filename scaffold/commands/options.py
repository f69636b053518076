"""Arguments shared by the commands that generate: where the package goes and what to generate."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..pipeline import resolve_disabled


def add_destination(parser: argparse.ArgumentParser) -> None:
    """--repo PATH | --out DIR (default: workspace/<type>/ under the current directory)."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--repo",
        type=Path,
        metavar="PATH",
        help="an optimum-neuron checkout: write optimum/neuron/models/training/<type>/ and register the model",
    )
    where.add_argument(
        "--out", type=Path, metavar="DIR", help="write DIR/<type>/ (default: workspace/<type>/ here)"
    )


def add_generation(parser: argparse.ArgumentParser) -> None:
    """--source, --disable, --allow-unsupported."""
    parser.add_argument(
        "--source",
        type=Path,
        metavar="FILE",
        help="convert this modeling file instead of the installed one (config class still from the type)",
    )
    parser.add_argument(
        "--disable",
        action="append",
        default=[],
        metavar="CODE",
        help="skip a rule, by code or name (repeatable; see `scaffold rules`)",
    )
    parser.add_argument(
        "--allow-unsupported",
        action="store_true",
        help="write TODO(<code>) markers for refused constructs instead of stopping",
    )


def disabled_codes(args: argparse.Namespace) -> tuple[str, ...]:
    """The rule codes of --disable (ScaffoldError for unknown ones)."""
    return tuple(sorted(resolve_disabled(args.disable)))
