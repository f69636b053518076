"""`python -m conformance <type ...>` (and `nox -s conformance -- <type ...>`): check generated models.

For each model type: find the package (scaffolding `workspace/<type>/` when it does not exist yet), run the
profile's checks on the chosen backend with a progress display, write the reports to
`<out>/<type>/` and print where they are. Exit status 0 when nothing failed, 1 when a check failed, 2 for
bad arguments or a package that cannot be found.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from .backends import BACKEND_NAMES
from .checks import RunSettings
from .harness.registry import check_names
from .model_location import PackageNotFound, locate_package
from .profiles import PROFILES, plan
from .progress import Progress, summary_line
from .runner import run_model

DEFAULT_MODELS = ("llama",)
DEFAULT_OUT = Path("conformance-report")
EXIT_FAILED, EXIT_ERROR = 1, 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m conformance",
        description="Check generated optimum-neuron training models against transformers (DESIGN §5).",
    )
    parser.add_argument(
        "model_types", nargs="*", default=list(DEFAULT_MODELS), help="model types to check (default: llama)"
    )
    parser.add_argument("--profile", choices=PROFILES, default="quick", help="quick (default) or full")
    parser.add_argument("--backend", choices=BACKEND_NAMES, default="reference", help="default: reference")
    parser.add_argument("--repo", type=Path, help="an optimum-neuron checkout holding the model packages")
    parser.add_argument("--package", type=Path, help="check this package folder (one model type only)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="report folder (default: %(default)s)")
    parser.add_argument(
        "--checks",
        help=f"comma-separated subset of: {', '.join(check_names())} (default: all of the profile)",
    )
    parser.add_argument("--timeout", type=float, default=RunSettings.timeout, help="seconds per check call")
    parser.add_argument("--cache-dir", type=Path, help="reference-model checkpoint cache")
    return parser


def main(argv: Sequence[str] | None = None, console: Console | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = console or Console()
    checks = [name.strip() for name in args.checks.split(",")] if args.checks else None
    if args.package is not None and len(args.model_types) != 1:
        console.print("error: --package checks one model type; name exactly one", style="red")
        return EXIT_ERROR
    if args.backend == "neuron":
        from .backends.neuron_launch import require_neuron_host

        problem = require_neuron_host(args.repo)
        if problem:
            console.print(f"error: {problem}", style="red", markup=False)
            return EXIT_ERROR
    settings = RunSettings(
        backend=args.backend, cache_dir=args.cache_dir, timeout=args.timeout, repo=args.repo
    )
    status = 0
    for model_type in args.model_types:
        try:
            planned = plan(model_type, args.profile, checks)
            located = locate_package(model_type, package=args.package, repo=args.repo)
        except (PackageNotFound, ValueError, KeyError) as error:
            console.print(f"error: {error}", style="red", markup=False)
            return EXIT_ERROR
        if located.scaffolded:
            console.print(
                f"scaffolded {located.path} with `scaffold new-model {model_type}`", highlight=False
            )
        console.print(
            f"checking {located.path} ({args.profile} profile, {args.backend} backend)", highlight=False
        )
        progress = Progress(console, len(planned))
        run = run_model(
            model_type,
            located.path,
            profile=args.profile,
            settings=settings,
            checks=checks,
            on_start=progress.started,
            on_finish=progress.finished,
        )
        from .reports import write_reports

        written = write_reports(run, args.out / model_type)
        console.print(summary_line(run), highlight=False)
        for kind, path in written.items():
            console.print(f"  {kind}: {path}", highlight=False)
        if run.failed:
            status = EXIT_FAILED
    report_dir = args.out.resolve()
    console.print(f"reports: {report_dir}", highlight=False)
    return status


if __name__ == "__main__":
    sys.exit(main())
