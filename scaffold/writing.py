"""All-or-nothing writes of generated output, and diffs against what is on disk.

A `Changes` holds whole folders to (re)place and single files to rewrite, all as bytes computed before
anything is touched. `apply_changes` stages every folder in a temporary sibling of its destination and
every file in a temporary sibling of itself (so the final moves are same-filesystem renames), then moves
them into place; if any step fails, what was already moved is put back and the staging is removed, so a
failure never leaves a half-written package or a half-registered model. Errors a user can fix (existing
output without --force, unwritable destination) are one ScaffoldError naming the path.
"""

from __future__ import annotations

import difflib
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ScaffoldError


@dataclass
class Changes:
    """Folders to replace wholesale and files to rewrite (each path -> its complete new content)."""

    folders: dict[Path, dict[str, bytes]] = field(default_factory=dict)
    files: dict[Path, bytes] = field(default_factory=dict)

    def pending(self) -> list[tuple[Path, bytes | None, bytes]]:
        """(path, current bytes or None, new bytes) for every file that would change."""
        result = []
        for folder, contents in self.folders.items():
            for name, data in contents.items():
                path = folder / name
                current = _read(path)
                if current != data:
                    result.append((path, current, data))
        for path, data in self.files.items():
            current = _read(path)
            if current != data:
                result.append((path, current, data))
        return result

    def removed(self) -> list[Path]:
        """Files inside a replaced folder that the new content no longer has."""
        gone = []
        for folder, contents in self.folders.items():
            if folder.is_dir():
                for path in sorted(folder.rglob("*")):
                    relative = path.relative_to(folder)
                    if (
                        path.is_file()
                        and "__pycache__" not in relative.parts
                        and relative.as_posix() not in contents
                    ):
                        gone.append(path)
        return gone


def refuse_existing(folder: Path, force: bool) -> None:
    """ScaffoldError when `folder` exists and `force` is off."""
    if not force and (folder.exists() or folder.is_symlink()):
        raise ScaffoldError(
            f"{folder} already exists; not overwriting it",
            hint="pass --force to replace it (your edits there are lost), or `scaffold update` to merge them",
        )


def apply_changes(changes: Changes) -> None:
    """Write everything in `changes` or nothing (ScaffoldError naming the path that could not be written)."""
    staged: list[tuple[Callable[[], None], Callable[[], None]]] = []  # (commit, rollback)
    cleanups: list[Path] = []
    try:
        for folder, contents in changes.folders.items():
            staged.append(_stage_folder(folder, contents, cleanups))
        for path, data in changes.files.items():
            staged.append(_stage_file(path, data, cleanups))
        done: list[Callable[[], None]] = []
        try:
            for commit, rollback in staged:
                commit()
                done.append(rollback)
        except BaseException:
            for rollback in reversed(done):
                rollback()
            raise
    except OSError as error:
        raise ScaffoldError(_describe(error)) from error
    finally:
        for path in cleanups:
            _remove(path)


def _stage_folder(
    folder: Path, contents: dict[str, bytes], cleanups: list[Path]
) -> tuple[Callable[[], None], Callable[[], None]]:
    parent = folder.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ScaffoldError(f"cannot create {parent}: {error.strerror or error}") from error
    if parent.exists() and not parent.is_dir():
        raise ScaffoldError(f"cannot write {folder}: {parent} is not a folder")
    token = secrets.token_hex(4)
    staging = parent / f".{folder.name}.new-{token}"
    staging.mkdir()  # not mkdtemp: the package gets the usual umask-derived mode, not 0700
    cleanups.append(staging)
    for name, data in contents.items():
        target = staging / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    backup = parent / f".{folder.name}.old-{token}"

    def commit() -> None:
        moved = folder.exists() or folder.is_symlink()
        if moved:
            folder.rename(backup)
        try:
            staging.rename(folder)
        except BaseException:
            if moved:
                backup.rename(folder)
            raise
        if moved:
            cleanups.append(backup)

    def rollback() -> None:
        _remove(folder)
        if backup.exists() or backup.is_symlink():
            backup.rename(folder)

    return commit, rollback


def _stage_file(
    path: Path, data: bytes, cleanups: list[Path]
) -> tuple[Callable[[], None], Callable[[], None]]:
    original = _read(path)
    descriptor, name = tempfile.mkstemp(prefix=f".{path.name}.new-", dir=path.parent)
    staging = Path(name)
    cleanups.append(staging)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
    if original is not None:
        shutil.copymode(path, staging)
    else:
        staging.chmod(0o666 & ~_umask())

    def commit() -> None:
        os.replace(staging, path)

    def rollback() -> None:
        if original is None:
            path.unlink(missing_ok=True)
        else:
            path.write_bytes(original)

    return commit, rollback


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _describe(error: OSError) -> str:
    where = error.filename if error.filename is not None else "the destination"
    return f"cannot write {where}: {error.strerror or error}"


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None


def unified_diff(path: Path, current: bytes | None, new: bytes | None, root: Path | None = None) -> str:
    """A `git diff`-style unified diff of one file (`None` = absent), paths relative to `root`."""
    label = path.relative_to(root).as_posix() if root is not None and path.is_relative_to(root) else str(path)
    old_lines = (current or b"").decode("utf-8", "replace").splitlines(keepends=True)
    new_lines = (new or b"").decode("utf-8", "replace").splitlines(keepends=True)
    lines = difflib.unified_diff(
        old_lines,
        new_lines,
        fromfile="/dev/null" if current is None else f"a/{label}",
        tofile="/dev/null" if new is None else f"b/{label}",
    )
    return "".join(
        line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in lines
    )


def diff_changes(changes: Changes, root: Path | None = None) -> str:
    """The unified diff of everything `changes` would write or remove."""
    parts = [unified_diff(path, current, new, root) for path, current, new in changes.pending()]
    parts += [unified_diff(path, path.read_bytes(), None, root) for path in changes.removed()]
    return "".join(parts)
