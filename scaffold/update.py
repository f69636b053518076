"""`scaffold update`: merge a regeneration with the contributor's edits, through copier's three-way update.

copier updates a project by rendering the old template version (the merge base), diffing it against the
project (the user's edits), rendering the new version and re-applying the edits, resolving rejected hunks
with `git merge-file` (inline conflict markers) or leaving `.rej` files. It needs a git-tagged template
and a clean git project. A generated package has neither, and its "template" includes the modeling file,
which is not a template at all but the output of the rules. So each update builds, in a temporary folder:

- a template repository with two tagged versions: `1` = the pristine previous generation (stored in the
  answers file's `_scaffold_pristine`, see scaffold.package) and `2` = the new generation, both as plain
  files plus the bundled `copier.yml` and answers-file template;
- a git project holding a copy of the package as it is on disk (edits included), its answers pointing at
  that repository at version `1`;

then runs `copier.run_update` there and reads the merged files back. The real package is replaced
only after that, in one atomic step (scaffold.writing), so a failure never leaves it half-merged, and the
contributor's tree needs neither to be a git repository nor to be clean. Conflicts stay in the files
(markers) or beside them (`.rej`), never dropped; the new pristine generation is recorded as the base of
the next update.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .errors import ScaffoldError
from .package import ANSWERS_FILE, TEMPLATE_DIR, Generation, Recorded, answers_text, read_tree

BASE_TAG = "1"
TARGET_TAG = "2"
CONFLICT_MARKERS = (b"<<<<<<< before updating", b">>>>>>> after updating")
_GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "nxd-scaffold",
    "GIT_AUTHOR_EMAIL": "nxd-scaffold@localhost",
    "GIT_COMMITTER_NAME": "nxd-scaffold",
    "GIT_COMMITTER_EMAIL": "nxd-scaffold@localhost",
    # The sandbox must not depend on the user's git configuration (hooks, signing, default branch).
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
}


@dataclass(frozen=True)
class UpdateResult:
    """The package contents after the merge, and the files that hold conflicts."""

    files: dict[str, bytes]
    conflicts: tuple[str, ...]
    up_to_date: bool  # the regeneration equals the previous one: only the answers were refreshed


def merge_update(
    package_dir: Path,
    recorded: Recorded,
    generation: Generation,
    conflict: Literal["inline", "rej"] = "inline",
) -> UpdateResult:
    """Merge `generation` into the package at `package_dir` (nothing is written to it here)."""
    if recorded.pristine is None:
        raise ScaffoldError(
            f"{package_dir / ANSWERS_FILE}: no pristine copy of the last generation, so there is no merge base",
            hint="regenerate with `scaffold new-model --force` (your edits there are lost) and re-apply them",
        )
    current = read_tree(package_dir)
    new_answers = answers_text(generation.answers, pristine=generation.content_files).encode("utf-8")
    if recorded.pristine == generation.content_files:
        files = {**current, ANSWERS_FILE: new_answers}
        return UpdateResult(files=files, conflicts=(), up_to_date=True)
    with tempfile.TemporaryDirectory(prefix="nxd-scaffold-update-") as folder, _isolated_git():
        template = Path(folder) / "template"
        project = Path(folder) / "project"
        _template_repository(template, recorded.pristine, generation.content_files)
        _project_repository(project, current, recorded, template)
        _run_copier_update(project, generation, conflict)
        merged = read_tree(project)
    merged[ANSWERS_FILE] = new_answers
    conflicts = tuple(sorted(name for name, data in merged.items() if _has_conflict(name, data)))
    return UpdateResult(files=dict(sorted(merged.items())), conflicts=conflicts, up_to_date=False)


def _has_conflict(name: str, data: bytes) -> bool:
    return name.endswith(".rej") or any(line.rstrip() in CONFLICT_MARKERS for line in data.splitlines())


def _template_repository(folder: Path, base: dict[str, bytes], target: dict[str, bytes]) -> None:
    """A git repository whose tag `1` renders `base` and tag `2` renders `target`, verbatim."""
    folder.mkdir()
    _git(folder, "init", "--quiet")
    scaffolding = [TEMPLATE_DIR / "copier.yml", *TEMPLATE_DIR.glob("{{*}}.jinja")]
    for path in scaffolding:
        shutil.copyfile(path, folder / path.name)
    for tag, files in ((BASE_TAG, base), (TARGET_TAG, target)):
        for stale in _plain_files(folder):
            stale.unlink()
        _write_tree(folder, files)
        _git(folder, "add", "--all")
        _git(folder, "commit", "--quiet", "--allow-empty", "--no-verify", "-m", f"generation {tag}")
        _git(folder, "tag", tag)


def _plain_files(folder: Path) -> list[Path]:
    """Snapshot files of the template repository (everything but .git and the copier scaffolding)."""
    keep = {"copier.yml"}
    return [
        path
        for path in folder.rglob("*")
        if path.is_file()
        and ".git" not in path.relative_to(folder).parts
        and path.name not in keep
        and not path.name.startswith("{{")
    ]


def _project_repository(folder: Path, current: dict[str, bytes], recorded: Recorded, template: Path) -> None:
    """A committed git copy of the package whose answers point at `template` version 1."""
    folder.mkdir()
    files = {name: data for name, data in current.items() if name != ANSWERS_FILE}
    _write_tree(folder, files)
    base_answers = answers_text(recorded.answers, pristine={}, src_path=str(template), commit=BASE_TAG)
    (folder / ANSWERS_FILE).write_text(base_answers, encoding="utf-8")
    _git(folder, "init", "--quiet")
    _git(folder, "add", "--all", "--force")
    _git(folder, "commit", "--quiet", "--no-verify", "-m", "package as on disk")


def _run_copier_update(project: Path, generation: Generation, conflict: Literal["inline", "rej"]) -> None:
    from copier import run_update
    from copier.errors import CopierError

    try:
        run_update(
            str(project),
            data=generation.answers,
            defaults=True,
            overwrite=True,
            quiet=True,
            conflict=conflict,
            vcs_ref=TARGET_TAG,
            skip_answered=False,
        )
    except (CopierError, subprocess.CalledProcessError, OSError) as error:
        raise ScaffoldError(f"copier could not merge the regeneration: {error}") from error


def _write_tree(folder: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def _git(folder: Path, *args: str) -> None:
    try:
        result = subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True, check=False)
    except FileNotFoundError as error:
        raise ScaffoldError("`scaffold update` needs git on PATH (copier merges with it)") from error
    if result.returncode != 0:
        raise ScaffoldError(f"git {' '.join(args)} failed in {folder}: {result.stderr.strip()}")


@contextmanager
def _isolated_git() -> Iterator[None]:
    """Identity and config isolation for every git call in the sandbox (ours and copier's).

    copier runs git through plumbum, whose environment is a copy taken at import, so both are set.
    """
    from plumbum import local

    saved = {key: os.environ.get(key) for key in _GIT_IDENTITY}
    os.environ.update(_GIT_IDENTITY)
    try:
        with local.env(**_GIT_IDENTITY):
            yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
