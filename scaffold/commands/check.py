"""`scaffold check [PATH]`: regenerate every generated model under PATH and report drift (exit 1)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from ..drift import FileDiff, PackageCheck, check_package, find_packages
from ..errors import ScaffoldError
from ..writing import unified_diff
from . import Command

EXIT_DRIFT = 1


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "path", nargs="?", type=Path, default=Path("."), help="tree to search (default: here)"
    )
    parser.add_argument(
        "--strict", action="store_true", help="also fail on hand edits (files on disk != their regeneration)"
    )


def _run(args: argparse.Namespace, console: Console) -> int:
    root: Path = args.path
    if not root.is_dir():
        raise ScaffoldError(f"{root}: no such folder")
    packages, orphans = find_packages(root)
    if not packages and not orphans:
        raise ScaffoldError(
            f"no generated model package under {root} (none has an nxd-scaffold .copier-answers.yml)"
        )
    failed = False
    for orphan in orphans:
        console.out(
            f"error  {orphan}: generated file without an answers file; cannot regenerate it", highlight=False
        )
        failed = True
    for package_dir in packages:
        result = check_package(package_dir)
        failed |= _report(console, result, args.strict, root)
    return EXIT_DRIFT if failed else 0


def _report(console: Console, result: PackageCheck, strict: bool, root: Path) -> bool:
    """Print one package's outcome; True when it fails the check."""
    out = console.out
    shown = result.package_dir
    if result.status == "error":
        out(f"error  {shown}: {result.error}", highlight=False)
        return True
    if result.status == "ok":
        out(f"ok     {shown} ({result.model_type})", highlight=False)
        return False
    if result.status == "edited":
        out(f"edited {shown} ({result.model_type}): hand edits only, no drift", highlight=False)
        if strict:
            _print_diffs(console, result.package_dir, result.edits, root)
        return strict
    out(
        f"drift  {shown} ({result.model_type}): regeneration differs from the last generation in "
        f"{', '.join(result.drift)}; `scaffold update {result.model_type}` merges it",
        highlight=False,
    )
    _print_diffs(console, result.package_dir, result.drift, root)
    return True


def _print_diffs(console: Console, package_dir: Path, diffs: dict[str, FileDiff], root: Path) -> None:
    for name, (before, after) in diffs.items():
        console.out(unified_diff(package_dir / name, before, after, root), end="", highlight=False)


COMMAND = Command(
    name="check",
    help="regenerate every generated model under a folder and show the diff; exit 1 on drift",
    configure=_configure,
    run=_run,
)
