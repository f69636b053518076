"""`model_facts(model_type)`: the transformers facts of a model type, without importing transformers
when they are cached.

A process that already imported transformers (tests, notebooks) reads the facts from it directly. A
command line run looks in the cache, `$NXD_SCAFFOLD_CACHE/scaffold-facts` (default
`~/.cache/nxd-scaffold/scaffold-facts`): one JSON file per model type, under a folder named after the
transformers version, its install location and the facts schema. An entry is used only while the
transformers (and torch) files it was read from have the same hashes; otherwise (or when absent) the
facts are read in a subprocess (`python -m scaffold.facts`, with transformers' torch support switched
off so that it imports only transformers' config modules) and the entry is rewritten.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from .errors import ScaffoldError
from .facts import SCHEMA, ModelFacts, collect, file_digest

CACHE_ENV = "NXD_SCAFFOLD_CACHE"  # shared with reference_models (checkpoints)
FOLDER = "scaffold-facts"


def cache_root() -> Path:
    """The kit's user cache: `$NXD_SCAFFOLD_CACHE`, default `~/.cache/nxd-scaffold`."""
    base = os.environ.get(CACHE_ENV)
    return Path(base) if base else Path.home() / ".cache" / "nxd-scaffold"


def cache_dir() -> Path:
    """Folder of the facts cache for the installed transformers."""
    return cache_root() / FOLDER / _installation_key()


def _installation_key() -> str:
    spec = importlib.util.find_spec("transformers")  # finds the package without importing it
    if spec is None or spec.origin is None:
        raise ScaffoldError("transformers is not installed", hint="pip install transformers")
    version = importlib.metadata.version("transformers")
    identity = f"{version}\n{Path(spec.origin).parent}\n{SCHEMA}"
    return f"transformers-{version}-{hashlib.sha256(identity.encode()).hexdigest()[:12]}"


def model_facts(model_type: str) -> ModelFacts:
    """The facts of `model_type` (ScaffoldError for types transformers does not know or cannot scaffold)."""
    if "transformers" in sys.modules:
        return collect(model_type)
    path = cache_dir() / f"{model_type}.json"
    facts = _load(path)
    if facts is None:
        facts = _collect_in_subprocess(model_type)
        _store(path, facts)
    return facts


def _load(path: Path) -> ModelFacts | None:
    """The cached facts at `path`, or None when absent, unreadable or stale."""
    try:
        facts = ModelFacts.from_json(path.read_text(encoding="utf-8"))
        if all(file_digest(file) == digest for file, digest in facts.inputs):
            return facts
    except (OSError, ValueError, TypeError, KeyError):
        pass
    return None


# transformers reads these when imported: no torch (nor TensorFlow, Flax) and no advice about it
WITHOUT_FRAMEWORKS = {
    "USE_TORCH": "0",
    "USE_TF": "0",
    "USE_FLAX": "0",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
}


def _collect_in_subprocess(model_type: str) -> ModelFacts:
    result = subprocess.run(
        [sys.executable, "-m", "scaffold.facts", model_type],
        capture_output=True,
        text=True,
        check=False,
        env={
            **os.environ,
            **WITHOUT_FRAMEWORKS,
            "PYTHONPATH": os.pathsep.join(filter(None, [_root(), os.environ.get("PYTHONPATH")])),
        },
    )
    if result.returncode != 0:
        raise ScaffoldError(
            f"cannot read the facts of {model_type!r} from transformers: {result.stderr.strip()}"
        )
    data = json.loads(result.stdout)
    if "error" in data:
        raise ScaffoldError(data["error"], hint=data["hint"])
    return ModelFacts.from_json(result.stdout)


def _root() -> str:
    """Folder holding the `scaffold` package (the subprocess imports the same copy)."""
    return str(Path(__file__).resolve().parents[1])


def _store(path: Path, facts: ModelFacts) -> None:
    """Write atomically; a cache that cannot be written is only slower, never an error."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(
            "w", dir=path.parent, suffix=".tmp", delete=False, encoding="utf-8"
        ) as file:
            file.write(facts.to_json())
        os.replace(file.name, path)
    except OSError:
        pass
