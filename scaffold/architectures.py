"""Which architectures of the installed transformers scaffold: the survey behind `scaffold list`.

The candidates are transformers' decoder-only causal LMs: the model types of its causal-LM auto mapping,
less the encoders (types with a masked-LM class: bert, roberta, ...) and the encoder-decoders (types with
a text or speech seq2seq class: bart, whisper, ...). Each is analysed
(scaffold.analysis, no rule runs): no refusal means `scaffold new-model` converts it; otherwise the
refusal codes say why not.

Analysis takes a fraction of a second to a few seconds per file, so the survey runs the types in a pool of
processes (one per core) and keeps each verdict in the user cache (`$NXD_SCAFFOLD_CACHE/scaffold-list/`),
under a folder named after the transformers installation and the scaffolder's own code, re-validated by
the hash of the modeling file: a second `scaffold list` reads them back in well under a second per
hundred types.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import json
import os
import sys
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import ScaffoldError
from .facts import file_digest
from .facts_cache import WITHOUT_FRAMEWORKS, cache_dir, cache_root

FOLDER = "scaffold-list"
SCHEMA = 1
POOL_THRESHOLD = 4  # fewer uncached types per core than this: not worth starting processes


@dataclass(frozen=True)
class Verdict:
    """Whether a model type scaffolds: refusal codes (empty: it does), or the error that stopped analysis."""

    model_type: str
    display_name: str
    codes: tuple[str, ...] = ()
    first_reason: str = ""
    error: str | None = None
    modeling_file: str = ""  # where the verdict's source was read (in the cache only, never in a package)
    source_sha256: str = ""

    @property
    def scaffolds(self) -> bool:
        return self.error is None and not self.codes


def decoder_only_types() -> list[str]:
    """The decoder-only causal-LM model types of the installed transformers, sorted.

    In a process that has not imported transformers yet, it is imported without its torch support (as
    `scaffold.facts_cache` does in its subprocess): listing and analysis read configs and sources only.
    """
    if "transformers" not in sys.modules:
        for variable, value in WITHOUT_FRAMEWORKS.items():
            os.environ.setdefault(variable, value)
    modeling_auto = importlib.import_module("transformers.models.auto.modeling_auto")
    others = {
        *modeling_auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES,  # encoders with an LM head (bert, roberta, ...)
        *modeling_auto.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES,  # encoder-decoders (bart, t5, ...)
        *modeling_auto.MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES,  # speech encoder-decoders (whisper, ...)
    }
    return sorted(set(modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES) - others)


def assess(model_type: str) -> Verdict:
    """Analyse `model_type` (no rule runs) into a Verdict; analysis errors become the verdict's error."""
    from .analysis import analyze
    from .source import locate

    try:
        source = locate(model_type)
    except ScaffoldError as error:
        return Verdict(model_type, model_type, error=error.message)
    name = source.facts.display_name
    where = str(source.modeling_file)
    digest = file_digest(where)
    try:
        blueprint = analyze(source)
    except ScaffoldError as error:
        return Verdict(model_type, name, error=error.message, modeling_file=where, source_sha256=digest)
    except Exception as error:  # a bug in the analysis must not hide the other types' verdicts
        problem = f"internal error ({type(error).__name__}: {error})"
        return Verdict(model_type, name, error=problem, modeling_file=where, source_sha256=digest)
    codes = tuple(sorted({refusal.code for refusal in blueprint.refusals}))
    first = str(blueprint.refusals[0]) if blueprint.refusals else ""
    return Verdict(model_type, name, codes, first, modeling_file=where, source_sha256=digest)


def survey(model_types: Iterable[str], progress: Callable[[Verdict], None] | None = None) -> list[Verdict]:
    """The verdict of every type, in the given order: cached ones read back, the others analysed in a pool."""
    model_types = list(model_types)
    folder = _cache_folder()
    verdicts = {model_type: _load(folder / f"{model_type}.json") for model_type in model_types}
    missing = [model_type for model_type, verdict in verdicts.items() if verdict is None]
    for verdict in verdicts.values():
        if verdict is not None and progress is not None:
            progress(verdict)
    workers = min(len(missing) // POOL_THRESHOLD, os.cpu_count() or 1)
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for verdict in pool.map(assess, missing):
                verdicts[verdict.model_type] = _store(folder, verdict, progress)
    else:
        for model_type in missing:
            verdicts[model_type] = _store(folder, assess(model_type), progress)
    return [verdict for model_type in model_types if (verdict := verdicts[model_type]) is not None]


def _store(folder: Path, verdict: Verdict, progress: Callable[[Verdict], None] | None) -> Verdict:
    if progress is not None:
        progress(verdict)
    if verdict.source_sha256:  # a verdict that could not hash its source is not kept
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{verdict.model_type}.json"
            staging = path.with_suffix(f".{os.getpid()}.tmp")
            staging.write_text(json.dumps(asdict(verdict)), encoding="utf-8")
            os.replace(staging, path)
        except OSError:
            pass  # a cache that cannot be written is only slower
    return verdict


def _load(path: Path) -> Verdict | None:
    """A cached verdict, while the modeling file it was made from is unchanged."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        verdict = Verdict(**{**data, "codes": tuple(data["codes"])})
        if file_digest(verdict.modeling_file) == verdict.source_sha256:
            return verdict
    except (OSError, ValueError, TypeError, KeyError):
        pass
    return None


def _cache_folder() -> Path:
    """Named after the transformers installation and the code that makes a verdict (this module, the
    analysis and what they import): changing either starts afresh."""
    code = hashlib.sha256(str(SCHEMA).encode())
    package = Path(__file__).parent
    for path in _import_closure([Path(__file__), package / "analysis" / "__init__.py"]):
        code.update(path.relative_to(package).as_posix().encode())
        code.update(path.read_bytes())
    return cache_root() / FOLDER / f"{cache_dir().name}-{code.hexdigest()[:12]}"


def _import_closure(starts: list[Path]) -> list[Path]:
    """The scaffold modules reachable from `starts` through relative imports, sorted."""
    package = Path(__file__).parent
    seen: set[Path] = set()
    pending = list(starts)
    while pending:
        path = pending.pop()
        if path in seen or not path.is_file():
            continue
        seen.add(path)
        folder = path.parent
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom) or node.level == 0:
                continue
            base = folder.parents[node.level - 2] if node.level > 1 else folder
            if not base.is_relative_to(package):
                continue
            parts = node.module.split(".") if node.module else []
            target = base.joinpath(*parts)
            candidates = [target.with_suffix(".py"), target / "__init__.py"]
            if not parts:  # `from . import name`: modules named like the imported names
                candidates = [base / f"{alias.name}.py" for alias in node.names]
            pending += [candidate for candidate in candidates if candidate.is_file()]
    return sorted(seen)
