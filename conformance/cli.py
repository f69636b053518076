"""`python -m conformance <type ...>` (and `nox -s conformance -- <type ...>`): check generated models.

For each model type: find the package (scaffolding `workspace/<type>/` when it does not exist yet), run the
profile's checks on the chosen backend with a progress display, write the reports to `<out>/<type>/` and
print where they are.

Every argument is validated before anything runs or is written: a usage error (an unknown model type,
profile or check, `--timeout 0`, `--package` with several types, a backend whose prerequisites are
missing) prints one line on stderr and exits 2. Progress and report paths go to stdout, errors to stderr.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

from rich.console import Console

from .backends import BACKEND_NAMES
from .backends.checkout_host import HOSTS, checkout_host_problem
from .backends.reference.deviations import DEFAULT_PLATFORM, PLATFORMS
from .checks import RunSettings
from .harness.registry import check_names
from .model_location import PackageNotFound, locate_package
from .profiles import PROFILES, ModelCatalogue, plan
from .progress import Progress, summary_line
from .runner import run_model

PROG = "python -m conformance"
DEFAULT_MODELS = ("llama",)
DEFAULT_OUT = Path("conformance-report")
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_CODES = f"""exit status:
  {EXIT_OK}  no check failed (PASS, WARN, UNSUPPORTED and SKIP rows do not fail a run)
  {EXIT_FAILED}  at least one check FAILed (a defect, a crash or a hang)
  {EXIT_USAGE}  usage error: bad arguments, an unknown model type, profile or check, or a package that
     cannot be found (one line on stderr; nothing is run or written)"""


class UsageError(Exception):
    """Bad arguments: one line for stderr, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes seconds, not {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, not {text}")
    return value


def version() -> str:
    try:
        return metadata.version("nxd-scaffold")
    except metadata.PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Check generated optimum-neuron training models against transformers (DESIGN §5).",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
    parser.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=RunSettings.timeout,
        help="seconds one launcher call may take before its checks FAIL (default: %(default)s)",
    )
    parser.add_argument(
        "--platform",
        choices=PLATFORMS,
        default=DEFAULT_PLATFORM,
        help="the Trainium generation verdicts are for: a pass that relies on a deviation which does not carry "
        "over to it is a WARN (default: %(default)s, what optimum-neuron's training targets)",
    )
    parser.add_argument(
        "--host",
        choices=HOSTS,
        help="reference backend: run the models over the kit's training host (reference, the default) or over "
        "the --repo checkout's own host modules (checkout); the neuron backend always runs the checkout's",
    )
    parser.add_argument("--cache-dir", type=Path, help="reference-model checkpoint cache")
    parser.add_argument("--version", action="version", version=f"%(prog)s (nxd-scaffold) {version()}")
    return parser


def main(argv: Sequence[str] | None = None, console: Console | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        checks = _validated(args)
    except UsageError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except SystemExit as done:  # --help and --version print and exit 0
        return int(done.code or 0)
    console = console or Console()
    host = _host(args)
    settings = RunSettings(
        backend=args.backend,
        cache_dir=args.cache_dir,
        timeout=args.timeout,
        repo=args.repo,
        platform=args.platform,
        host=host,
    )
    status = EXIT_OK
    for model_type in args.model_types:
        try:
            located = locate_package(model_type, package=args.package, repo=args.repo)
        except PackageNotFound as error:
            print(f"{PROG}: error: {error}", file=sys.stderr)
            return EXIT_USAGE
        if located.scaffolded:
            console.print(
                f"scaffolded {located.path} with `scaffold new-model {model_type}`", highlight=False
            )
        console.print(
            f"checking {located.path} ({args.profile} profile, {args.backend} backend)", highlight=False
        )
        progress = Progress(console, len(plan(model_type, args.profile, checks)))
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
    console.print(f"reports: {args.out.resolve()}", highlight=False)
    return status


def _validated(args: argparse.Namespace) -> list[str] | None:
    """The `--checks` list; UsageError for anything that cannot run (before anything is written)."""
    checks = [name.strip() for name in args.checks.split(",") if name.strip()] if args.checks else None
    if args.checks is not None and not checks:
        raise UsageError("--checks names no check")
    if args.package is not None and len(args.model_types) != 1:
        raise UsageError("--package checks one model type; name exactly one")
    for model_type in args.model_types:
        try:
            ModelCatalogue.of(model_type)
            plan(model_type, args.profile, checks)
        except KeyError as error:
            raise UsageError(str(error.args[0]) if error.args else str(error)) from None
        except ValueError as error:
            raise UsageError(str(error)) from None
    if args.backend == "neuron":
        from .backends.neuron_launch import require_neuron_host

        problem = require_neuron_host(args.repo)
        if problem:
            raise UsageError(problem)
    problem = _host_problem(args.backend, _host(args), args.repo)
    if problem:
        raise UsageError(problem)
    return checks


def _host(args: argparse.Namespace) -> str:
    """The training host asked for, or the backend's default (the kit's host; the checkout's on neuron)."""
    return args.host or ("checkout" if args.backend == "neuron" else "reference")


def _host_problem(backend: str, host: str, repo: Path | None) -> str | None:
    if backend == "neuron":
        return (
            None
            if host == "checkout"
            else "--host reference: the neuron backend runs the checkout's own host"
        )
    return checkout_host_problem(repo) if host == "checkout" else None


if __name__ == "__main__":
    sys.exit(main())
