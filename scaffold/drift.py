"""`scaffold check`: regenerate every generated package in a tree and compare.

A package is found by its answers file (or, when that is missing, by a modeling file carrying the
generated-file header, which is then reported as uncheckable). Each is regenerated from its recorded
request (model type, --source, disabled rules, --allow-unsupported) against the installed transformers
and the current rule set, then compared file by file:

- drift: the regeneration differs from the recorded pristine generation (from the files on disk when
  the answers hold no pristine copy): transformers or the rules moved on; `scaffold update` merges it;
- edited: the files on disk differ from the pristine generation while the regeneration does not:
  hand edits, which are expected (contributors finish TODOs) and fail the check only with `strict`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .emit import HEADER_MARK, emit_model
from .errors import ScaffoldError
from .package import ANSWERS_FILE, read_answers, read_tree, render_package

_SKIPPED_DIRS = {"__pycache__", "node_modules", "site-packages"}

FileDiff = tuple[bytes | None, bytes | None]  # (before, after); None = absent


@dataclass(frozen=True)
class PackageCheck:
    """The outcome for one package: `status` is "ok", "edited", "drift" or "error"."""

    package_dir: Path
    model_type: str
    status: str
    drift: dict[str, FileDiff] = field(default_factory=dict)  # base -> regenerated
    edits: dict[str, FileDiff] = field(default_factory=dict)  # on disk -> regenerated
    error: str | None = None


def find_packages(root: Path) -> tuple[list[Path], list[Path]]:
    """Package folders with an nxd-scaffold answers file under `root`, and orphan generated files.

    Hidden folders (.git, .venv, ...) and caches are not searched.
    """
    packages: list[Path] = []
    orphans: list[Path] = []
    for folder, subfolders, names in _walk(root):
        if ANSWERS_FILE in names and _is_ours(folder / ANSWERS_FILE):
            packages.append(folder)
            subfolders.clear()
            continue
        orphans += [
            folder / name
            for name in sorted(names)
            if name.startswith("modeling_") and _generated(folder / name)
        ]
    return sorted(packages), sorted(orphans)


def _walk(root: Path) -> Iterator[tuple[Path, list[str], list[str]]]:
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith(".") and d not in _SKIPPED_DIRS)
        yield Path(folder), subfolders, names


def _is_ours(path: Path) -> bool:
    try:
        return "ruleset_version:" in path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False


def _generated(path: Path) -> bool:
    try:
        with path.open(encoding="utf-8", errors="replace") as handle:
            return handle.readline().startswith(HEADER_MARK)
    except OSError:
        return False


def check_package(package_dir: Path) -> PackageCheck:
    """Regenerate the package at `package_dir` and compare (regeneration failures become status "error")."""
    try:
        recorded = read_answers(package_dir)
        model_type = recorded.answers["model_type"]
        generation = render_package(emit_model(recorded.request()), recorded.test_model)
    except ScaffoldError as error:
        return PackageCheck(
            package_dir, model_type=_model_type_hint(package_dir), status="error", error=str(error)
        )
    regenerated = generation.content_files
    on_disk = {name: data for name, data in read_tree(package_dir).items() if name != ANSWERS_FILE}
    base = recorded.pristine if recorded.pristine is not None else on_disk
    names = sorted(set(regenerated) | set(base))
    drift = {
        name: (base.get(name), regenerated.get(name))
        for name in names
        if base.get(name) != regenerated.get(name)
    }
    edits = {
        name: (on_disk.get(name), regenerated.get(name))
        for name in names
        if on_disk.get(name) != regenerated.get(name)
    }
    status = "drift" if drift else "edited" if edits else "ok"
    return PackageCheck(package_dir, model_type, status, drift=drift, edits=edits)


def _model_type_hint(package_dir: Path) -> str:
    return package_dir.name
