"""Pristine generations, kept outside the target tree: the merge bases of `scaffold update`.

Every generation the kit writes is also stored, unchanged, in the user cache
(`$NXD_SCAFFOLD_CACHE/generations/<sha256>/`, default `~/.cache/nxd-scaffold/...`), keyed by the digest
of its files, which the package's record names (scaffold.record). `scaffold update` takes its merge base
from there; when it is not there (another machine, a cleared cache) the base is regenerated instead, which
is possible while transformers, the rule set and the source are the recorded ones (scaffold.update).
Entries are immutable (same digest, same bytes) and verified when read, so a damaged entry is ignored
rather than trusted.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
from collections.abc import Mapping
from pathlib import Path

from .facts_cache import cache_root

FOLDER = "generations"


def digest(files: Mapping[str, bytes]) -> str:
    """SHA-256 of a set of files: names and contents, in name order, each length-prefixed."""
    hasher = hashlib.sha256()
    for name in sorted(files):
        data = files[name]
        encoded = name.encode("utf-8")
        hasher.update(f"{len(encoded)}:{len(data)}:".encode())
        hasher.update(encoded)
        hasher.update(data)
    return hasher.hexdigest()


def store_dir() -> Path:
    """The folder of stored generations."""
    return cache_root() / FOLDER


def store(files: Mapping[str, bytes]) -> Path | None:
    """Keep `files` under their digest; the entry's folder, or None when the cache cannot be written."""
    key = digest(files)
    entry = store_dir() / key
    if load(key) is not None:
        return entry
    staging = store_dir() / f".{key}.new-{secrets.token_hex(4)}"
    try:
        for name, data in files.items():
            path = staging / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        if entry.exists():  # damaged: replace it
            shutil.rmtree(entry, ignore_errors=True)
        os.replace(staging, entry)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        return None
    return entry


def load(key: str) -> dict[str, bytes] | None:
    """The stored generation with digest `key`, or None when absent, unreadable or not matching it."""
    entry = store_dir() / key
    if not entry.is_dir():
        return None
    try:
        files = {
            path.relative_to(entry).as_posix(): path.read_bytes()
            for path in sorted(entry.rglob("*"))
            if path.is_file()
        }
    except OSError:
        return None
    return files if digest(files) == key else None
