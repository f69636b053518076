"""All-or-nothing writes: staging, refusal to overwrite, unwritable destinations, rollback, diffs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from scaffold import writing
from scaffold.errors import ScaffoldError
from scaffold.writing import Changes, apply_changes, diff_changes, refuse_existing, unified_diff

from .mini_checkout import snapshot


def test_folder_and_files_are_written_with_usual_modes(tmp_path: Path):
    edited = tmp_path / "edited.py"
    edited.write_text("old\n")
    edited.chmod(0o640)
    changes = Changes(
        folders={tmp_path / "out" / "pkg": {"a.py": b"A\n", "sub/b.txt": b"B"}}, files={edited: b"new\n"}
    )
    apply_changes(changes)
    assert snapshot(tmp_path) == {"edited.py": b"new\n", "out/pkg/a.py": b"A\n", "out/pkg/sub/b.txt": b"B"}
    assert edited.stat().st_mode & 0o777 == 0o640
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "out" / "pkg").stat().st_mode & 0o777 == 0o777 & ~umask


def test_replacing_a_folder_drops_what_is_no_longer_generated(tmp_path: Path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "stale.py").write_text("x")
    changes = Changes(folders={package: {"a.py": b"A"}})
    assert changes.removed() == [package / "stale.py"]
    assert "--- a/pkg/stale.py\n+++ /dev/null\n" in diff_changes(changes, tmp_path)
    apply_changes(changes)
    assert snapshot(tmp_path) == {"pkg/a.py": b"A"}


def test_existing_output_is_refused_without_force(tmp_path: Path):
    refuse_existing(tmp_path / "absent", force=False)
    refuse_existing(tmp_path, force=True)
    with pytest.raises(ScaffoldError, match=f"{tmp_path} already exists; not overwriting it") as caught:
        refuse_existing(tmp_path, force=False)
    assert "--force" in str(caught.value)


def test_destination_under_a_file_is_one_clear_error(tmp_path: Path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    with pytest.raises(ScaffoldError, match=r"cannot create .*blocker"):
        apply_changes(Changes(folders={blocker / "pkg": {"a.py": b"A"}}))
    assert snapshot(tmp_path) == {"blocker": b"a file, not a folder"}


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permission bits")
def test_read_only_destination_is_one_clear_error(tmp_path: Path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(ScaffoldError, match=r"cannot write .*locked"):
            apply_changes(Changes(folders={locked / "pkg": {"a.py": b"A"}}))
    finally:
        locked.chmod(0o700)
    assert list(locked.iterdir()) == []


def test_a_failure_while_moving_into_place_leaves_everything_as_it_was(tmp_path: Path, monkeypatch):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "old.py").write_text("previous generation")
    first, second = tmp_path / "first.py", tmp_path / "second.py"
    first.write_text("first\n")
    second.write_text("second\n")
    before = snapshot(tmp_path)
    real_replace = os.replace

    def failing_replace(source, target):
        if Path(target) == second:
            raise PermissionError(13, "Permission denied", str(target))
        return real_replace(source, target)

    monkeypatch.setattr(writing.os, "replace", failing_replace)
    changes = Changes(folders={package: {"new.py": b"N"}}, files={first: b"FIRST\n", second: b"SECOND\n"})
    with pytest.raises(ScaffoldError, match=r"cannot write .*second\.py: Permission denied"):
        apply_changes(changes)
    assert snapshot(tmp_path) == before  # folder restored, first file restored, no staging left behind


def test_unified_diff_shapes():
    path = Path("/r/pkg/m.py")
    assert (
        unified_diff(path, None, b"x\n", Path("/r")) == "--- /dev/null\n+++ b/pkg/m.py\n@@ -0,0 +1 @@\n+x\n"
    )
    assert unified_diff(path, b"x\ny\n", b"x\nz\n", Path("/r")) == (
        "--- a/pkg/m.py\n+++ b/pkg/m.py\n@@ -1,2 +1,2 @@\n x\n-y\n+z\n"
    )
    assert unified_diff(path, b"same\n", b"same\n") == ""
