"""`scaffold update`: merge a regeneration with the contributor's edits, three ways, file by file.

The three versions of each file (scaffold.merge) are:

- base: the pristine generation the package was made from, named by the digest in its record. It comes
  from the user cache (scaffold.generations), or, when the cache does not have it, is regenerated from the
  record: possible only while the installed transformers, the rule set and the source text are the
  recorded ones (their versions and the source's SHA-256 are in the record), and accepted only when the
  regenerated files have the recorded digest. Otherwise the update stops and says why and what to do:
  merging against a guessed base could drop an edit;
- yours: the package as it is on disk;
- new: the regeneration with the installed transformers and rule set.

Nothing is written here (scaffold.writing does that, all or nothing). A package that still holds
conflict markers from an earlier update is refused before anything else.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from . import generations, ruleset
from .emit import emit_model
from .errors import ScaffoldError
from .merge import Conflict, conflict_markers, merge_trees
from .package import Generation, read_tree, render_package
from .record import RECORD_FILE, GenerationRecord
from .source import locate


@dataclass(frozen=True)
class UpdateResult:
    """The package contents after the merge (record included), and the conflicts they hold."""

    files: dict[str, bytes]
    conflicts: tuple[Conflict, ...]
    up_to_date: bool  # the regeneration equals the previous one: at most the record changed


class UnresolvedConflicts(ScaffoldError):
    """The package holds conflict markers: nothing is regenerated or merged until they are resolved."""

    def __init__(self, package_dir: Path, conflicts: tuple[Conflict, ...]) -> None:
        places = ", ".join(str(package_dir / str(conflict)) for conflict in conflicts)
        super().__init__(
            f"{len(conflicts)} unresolved conflict marker(s) in {package_dir}: {places}",
            hint="resolve them (keep what you want between <<<<<<< and >>>>>>>, remove the markers), then rerun",
        )
        self.conflicts = conflicts


def refuse_unresolved(package_dir: Path, files: dict[str, bytes]) -> None:
    """UnresolvedConflicts when any file of the package holds a conflict marker."""
    conflicts = conflict_markers(files)
    if conflicts:
        raise UnresolvedConflicts(package_dir, conflicts)


def merge_update(
    package_dir: Path, record: GenerationRecord, generation: Generation, source: Path | None = None
) -> UpdateResult:
    """Merge `generation` into the package at `package_dir` (nothing is written to it here).

    `source` is the `--source` file of this update, if any: it can serve to regenerate the base when its
    text is the recorded one.
    """
    on_disk = read_tree(package_dir)
    refuse_unresolved(package_dir, on_disk)
    new_record = generation.files[RECORD_FILE]
    if generation.record.generation_sha256 == record.generation_sha256:
        return UpdateResult(files={**on_disk, RECORD_FILE: new_record}, conflicts=(), up_to_date=True)
    base = merge_base(record, package_dir, source)
    ours = {name: data for name, data in on_disk.items() if name != RECORD_FILE}
    label = f"regenerated (transformers {generation.record.transformers_version}, rule set {generation.record.ruleset_version})"
    result = merge_trees(base, ours, generation.content_files, label)
    files = {name: data for name, data in result.files.items() if data is not None}
    files[RECORD_FILE] = new_record
    return UpdateResult(files=dict(sorted(files.items())), conflicts=result.conflicts, up_to_date=False)


def merge_base(record: GenerationRecord, package_dir: Path, source: Path | None = None) -> dict[str, bytes]:
    """The pristine files of the recorded generation: from the cache, else regenerated (see the module doc).

    `source` is the `--source` file the package was generated from, when it was.
    """
    stored = generations.load(record.generation_sha256)
    if stored is not None:
        return stored
    obstacle = why_not_reproducible(record, source)
    if obstacle is None:
        base_request = record.request(source=source if record.source_given else None)
        regenerated = render_package(emit_model(base_request), record.test_model).content_files
        if generations.digest(regenerated) == record.generation_sha256:
            generations.store(regenerated)
            return regenerated
        obstacle = "regenerating it with the recorded versions gives different files (the digest differs)"
    raise ScaffoldError(
        f"{package_dir}: no merge base. The generation it was made from (transformers "
        f"{record.transformers_version}, rule set {record.ruleset_version}, {RECORD_FILE} "
        f"generation_sha256 {record.generation_sha256[:12]}...) is not in the cache "
        f"({generations.store_dir()}) and cannot be regenerated here: {obstacle}",
        hint=(
            f"run `scaffold check {package_dir}` once where transformers {record.transformers_version} and "
            f"rule set {record.ruleset_version} are installed (it restores the base into the cache), or "
            "update on the machine that generated the package"
        ),
    )


def why_not_reproducible(record: GenerationRecord, source: Path | None = None) -> str | None:
    """Why the recorded generation cannot be regenerated with what is installed (None: it can)."""
    installed = locate(record.model_type, source if record.source_given else None)
    reasons = []
    if installed.transformers_version != record.transformers_version:
        reasons.append(f"transformers {installed.transformers_version} is installed")
    if ruleset.RULESET_VERSION != record.ruleset_version:
        reasons.append(f"this nxd-scaffold has rule set {ruleset.RULESET_VERSION}")
    if record.source_given and source is None:
        reasons.append(f"the --source file {record.source_file} is not given")
    elif hashlib.sha256(installed.read_text().encode("utf-8")).hexdigest() != record.source_sha256:
        reasons.append(f"the source text of {installed.display_path} differs from the recorded one")
    return "; ".join(reasons) or None
