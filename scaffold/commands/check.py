"""`scaffold check [PATH]`: regenerate every generated model under PATH; exit 1 on drift, conflicts, placeholders."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from ..drift import FileDiff, PackageCheck, check_package, find_packages
from ..errors import ScaffoldError
from ..record import RECORD_FILE
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
    parser.add_argument(
        "--source",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="the --source file of packages generated from one (matched by file name; repeatable)",
    )


def _run(args: argparse.Namespace, console: Console) -> int:
    root: Path = args.path
    if not root.is_dir():
        raise ScaffoldError(f"{root}: no such folder")
    packages, orphans = find_packages(root)
    if not packages and not orphans:
        raise ScaffoldError(
            f"no generated model package under {root} (none has an nxd-scaffold {RECORD_FILE})"
        )
    failed = False
    for orphan in orphans:
        console.out(
            f"error  {orphan}: generated file without a {RECORD_FILE}; cannot regenerate it", highlight=False
        )
        failed = True
    sources = {path.name: path for path in args.source}
    for package_dir in packages:
        result = check_package(package_dir, sources)
        failed |= _report(console, result, args.strict, root)
    return EXIT_DRIFT if failed else 0


def _report(console: Console, result: PackageCheck, strict: bool, root: Path) -> bool:
    """Print one package's outcome; True when it fails the check."""
    out = console.out
    shown = result.package_dir
    for problem in result.problems:
        out(f"{'conflict' if result.status == 'conflict' else 'placeholder'} {problem}", highlight=False)
    failed = bool(result.problems)
    if result.status == "conflict":
        out(
            f"conflict {shown} ({result.model_type}): resolve the markers left by `scaffold update`, then rerun",
            highlight=False,
        )
        return True
    if result.status == "error":
        out(f"error  {shown}: {result.error}", highlight=False)
        return True
    if result.status == "ok" and failed:
        out(f"fail   {shown} ({result.model_type}): up to date, but see the line(s) above", highlight=False)
        return True
    if result.status == "ok":
        out(f"ok     {shown} ({result.model_type})", highlight=False)
        return False
    if result.status == "edited":
        out(f"edited {shown} ({result.model_type}): hand edits only, no drift", highlight=False)
        if strict:
            _print_diffs(console, result.package_dir, result.edits, root)
        return strict or failed
    out(
        f"drift  {shown} ({result.model_type}): regeneration differs from {result.drift_base} in "
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
    help="regenerate every generated model under a folder and show the diff; exit 1 on drift, "
    "unresolved conflict markers or a placeholder test checkpoint",
    configure=_configure,
    run=_run,
)
