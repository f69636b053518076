"""`scaffold new-model <type>`: generate the training model package (and register it with --repo)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from ..destination import Destination, plan_changes, resolve_destination
from ..emit import Request, emit_model
from ..package import Generation, default_test_model, render_package
from ..registration import Registration
from ..writing import Changes, apply_changes, diff_changes, refuse_existing
from . import Command
from .options import add_destination, add_generation, disabled_codes


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_type", help="transformers model type, e.g. llama, mistral, qwen3")
    add_destination(parser)
    add_generation(parser)
    parser.add_argument(
        "--diff", action="store_true", help="print a unified diff against what is on disk; write nothing"
    )
    parser.add_argument("--dry-run", action="store_true", help="list what would be written; write nothing")
    parser.add_argument(
        "--force", action="store_true", help="replace an existing package (edits there are lost)"
    )
    parser.add_argument(
        "--test-model",
        metavar="REPO_ID",
        help="checkpoint added to optimum-neuron's test lists with --repo (default: a placeholder to replace)",
    )


def _run(args: argparse.Namespace, console: Console) -> int:
    request = Request(
        model_type=args.model_type,
        source=args.source,
        disabled=disabled_codes(args),
        allow_unsupported=args.allow_unsupported,
    )
    destination = resolve_destination(request.package_name, args.repo, args.out)
    writing = not (args.diff or args.dry_run)
    if writing:
        refuse_existing(destination.package_dir, args.force)  # before the (slow) generation
    generation = render_package(emit_model(request), args.test_model)
    changes, registration = plan_changes(generation, destination)
    if args.diff:
        console.out(diff_changes(changes, destination.root), end="", highlight=False)
        return 0
    if args.dry_run:
        _print_plan(console, changes, destination)
        return 0
    changed = bool(changes.pending() or changes.removed())
    if changed:  # identical content: leave the files (and their mtimes) alone
        apply_changes(changes)
    _print_summary(console, generation, destination, registration, changed)
    return 0


def _print_plan(console: Console, changes: Changes, destination: Destination) -> None:
    pending = {path for path, _, _ in changes.pending()}
    console.out("Dry run: nothing written.", highlight=False)
    for folder, contents in changes.folders.items():
        for name in contents:
            path = folder / name
            state = "unchanged" if path not in pending else "new" if not path.exists() else "changed"
            console.out(f"  {state:9} {_shown(path, destination)}", highlight=False)
    for path in changes.files:
        state = "changed" if path in pending else "unchanged"
        console.out(f"  {state:9} {_shown(path, destination)}", highlight=False)


def _print_summary(
    console: Console,
    generation: Generation,
    destination: Destination,
    registration: Registration | None,
    changed: bool,
) -> None:
    emitted = generation.emitted
    out = console.out
    out(
        f"Generated {emitted.request.model_type} from {emitted.source.display_path} "
        f"(transformers {emitted.source.transformers_version}, rule set {generation.answers['ruleset_version']})",
        highlight=False,
    )
    verb = "wrote" if changed else "unchanged"
    out(f"  {verb} {destination.package_dir}/: {', '.join(generation.files)}", highlight=False)
    if registration is not None:
        for note in registration.notes:
            out(f"  {note}", highlight=False)
    todos = emitted.todo_lines()
    refusals = emitted.blueprint.refusals if emitted.request.allow_unsupported else ()
    if todos or refusals:
        out(f"Needs a human ({len(todos) + len(refusals)}):", highlight=False)
        for refusal in refusals:
            out(f"  TODO({refusal.code}) {refusal.location}: {refusal.message}", highlight=False)
        for line, text in todos:
            out(f"  {emitted.filename}:{line}: {text}", highlight=False)
    if registration is not None and generation.answers["test_model"] == default_test_model(
        emitted.request.model_type
    ):
        out(
            f"  replace the placeholder checkpoint {generation.answers['test_model']!r} in tests/training/ "
            "with a tiny checkpoint of this model (or pass --test-model)",
            highlight=False,
        )
    out(f"Next: nox -s conformance -- {emitted.request.model_type}", highlight=False)


def _shown(path: Path, destination: Destination) -> str:
    root = destination.root
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)


COMMAND = Command(
    name="new-model",
    help="generate the optimum-neuron training implementation of a transformers model type",
    configure=_configure,
    run=_run,
)
