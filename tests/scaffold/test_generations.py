"""The store of pristine generations in the user cache: digest, round trip, damage."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from scaffold import generations


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("NXD_SCAFFOLD_CACHE", str(tmp_path))
    return tmp_path


def test_digest_is_the_documented_sha256():
    files = {"b.py": b"x\n", "__init__.py": b""}
    expected = hashlib.sha256(b"11:0:__init__.py" + b"4:2:b.pyx\n").hexdigest()  # name order, length-prefixed
    assert generations.digest(files) == expected
    assert generations.digest({"a": b"bc"}) != generations.digest({"ab": b"c"})


def test_store_and_load_round_trip_outside_any_package(cache: Path):
    files = {"__init__.py": b"", "modeling_x.py": b"import torch\n"}
    entry = generations.store(files)
    key = generations.digest(files)
    assert entry == cache / "generations" / key
    assert generations.load(key) == files
    assert generations.store(files) == entry  # immutable: stored once


def test_a_damaged_entry_is_not_trusted(cache: Path):
    files = {"modeling_x.py": b"import torch\n"}
    entry = generations.store(files)
    assert entry is not None
    (entry / "modeling_x.py").write_bytes(b"import torch  # edited in the cache\n")
    assert generations.load(generations.digest(files)) is None
    assert generations.store(files) == entry and generations.load(generations.digest(files)) == files
