"""`scaffold check`: regenerate every generated package in a tree and compare.

A package is found by its generation record (scaffold.record); a modeling file carrying the
generated-file header without one is reported as uncheckable. Each package is first searched for
unresolved conflict markers (a conflicting `scaffold update` leaves them, and the package fails the check
until they are gone) and, inside an optimum-neuron checkout, the test lists for the placeholder checkpoint
`--test-model` replaces. Then it is regenerated from its record against the installed transformers and
the current rule set, and compared:

- drift: the regeneration's digest differs from the recorded one: transformers or the rules moved on;
  `scaffold update` merges it. The diff is shown against the last generation when the cache has it
  (scaffold.generations), else against the files on disk;
- edited: the files on disk differ from the regeneration while the regeneration equals the last
  generation: hand edits, which are expected (contributors finish TODOs) and fail only with `strict`.

A regeneration equal to the recorded one is stored in the cache: a `check` with the recorded versions
installed restores the merge base of the next update on any machine.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from . import generations
from .emit import emit_model, is_generated
from .errors import ScaffoldError
from .merge import conflict_markers
from .package import read_tree, render_package
from .record import LEGACY_ANSWERS_FILE, RECORD_FILE, read_record
from .registration import placeholder_uses

_SKIPPED_DIRS = {"__pycache__", "node_modules", "site-packages"}

FileDiff = tuple[bytes | None, bytes | None]  # (before, after); None = absent


@dataclass(frozen=True)
class PackageCheck:
    """The outcome for one package: `status` is "ok", "edited", "drift", "conflict" or "error".

    `problems` ("where: what") fail the check whatever the status: conflict markers, placeholders.
    """

    package_dir: Path
    model_type: str
    status: str
    drift: dict[str, FileDiff] = field(default_factory=dict)  # drift_base -> regenerated
    drift_base: str = "the last generation"
    edits: dict[str, FileDiff] = field(default_factory=dict)  # on disk -> regenerated
    problems: tuple[str, ...] = ()
    error: str | None = None


def find_packages(root: Path) -> tuple[list[Path], list[Path]]:
    """Package folders with a generation record under `root`, and orphan generated modeling files.

    Hidden folders (.git, .venv, ...) and caches are not searched.
    """
    packages: list[Path] = []
    orphans: list[Path] = []
    for folder, subfolders, names in _walk(root):
        if RECORD_FILE in names or (LEGACY_ANSWERS_FILE in names and _legacy_record(folder)):
            packages.append(folder)
            subfolders.clear()
            continue
        orphans += [
            folder / name
            for name in sorted(names)
            if name.startswith("modeling_") and name.endswith(".py") and _generated(folder / name)
        ]
    return sorted(packages), sorted(orphans)


def _walk(root: Path) -> Iterator[tuple[Path, list[str], list[str]]]:
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith(".") and d not in _SKIPPED_DIRS)
        yield Path(folder), subfolders, names


def _legacy_record(folder: Path) -> bool:
    """Whether a copier answers file there is one that an earlier nxd-scaffold wrote."""
    try:
        return "ruleset_version:" in (folder / LEGACY_ANSWERS_FILE).read_text(
            encoding="utf-8", errors="replace"
        )
    except OSError:
        return False


def _generated(path: Path) -> bool:
    try:
        return is_generated(path.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return False


def check_package(package_dir: Path, sources: Mapping[str, Path] | None = None) -> PackageCheck:
    """Check the package at `package_dir`; `sources` maps a `--source` file name to its path."""
    try:
        record = read_record(package_dir)
    except ScaffoldError as error:
        return PackageCheck(package_dir, package_dir.name, status="error", error=str(error))
    on_disk = read_tree(package_dir)
    conflicts = conflict_markers(on_disk)
    if conflicts:
        problems = tuple(
            f"{package_dir / str(conflict)}: unresolved conflict marker" for conflict in conflicts
        )
        return PackageCheck(package_dir, record.model_type, status="conflict", problems=problems)
    problems = tuple(
        f"{path}:{line}: placeholder checkpoint {record.test_model!r}; rerun `scaffold new-model "
        f"{record.model_type} --repo ... --force --test-model REPO_ID` or replace it by hand"
        for path, line in placeholder_uses(package_dir, record.model_type)
    )
    source = (sources or {}).get(record.source_file) if record.source_given else None
    try:
        generation = render_package(emit_model(record.request(source=source)), record.test_model)
    except ScaffoldError as error:
        return PackageCheck(package_dir, record.model_type, "error", problems=problems, error=str(error))
    regenerated = generation.content_files
    files = {name: data for name, data in on_disk.items() if name != RECORD_FILE}
    if generation.record.generation_sha256 == record.generation_sha256:
        generations.store(regenerated)
        edits = _differences(files, regenerated)
        return PackageCheck(
            package_dir, record.model_type, "edited" if edits else "ok", edits=edits, problems=problems
        )
    base = generations.load(record.generation_sha256)
    drift = _differences(base if base is not None else files, regenerated)
    return PackageCheck(
        package_dir,
        record.model_type,
        "drift",
        drift=drift,
        drift_base="the last generation"
        if base is not None
        else "the files on disk (the last generation is not cached)",
        problems=problems,
    )


def _differences(before: Mapping[str, bytes], after: Mapping[str, bytes]) -> dict[str, FileDiff]:
    names = sorted(set(before) | set(after))
    return {
        name: (before.get(name), after.get(name)) for name in names if before.get(name) != after.get(name)
    }
