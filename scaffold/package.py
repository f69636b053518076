"""A generated model package as bytes: the modeling file, its `__init__.py` and the generation record.

The package has the shape of optimum-neuron's own training model packages: `modeling_<type>.py` and an
empty `__init__.py` (optimum-neuron's qwen3 and granite packages export nothing; the training package's
`__init__.py` and `auto_models.py` import the classes from the modeling module, see
scaffold.registration). Beside them, the small generation record (scaffold.record) that `scaffold check`
and `scaffold update` read. Nothing here needs a template engine: there is nothing left to render.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from . import ruleset
from .emit import EmittedModel
from .generations import digest
from .record import RECORD_FILE, GenerationRecord, placeholder_test_model

INIT_FILE = "__init__.py"
MODULES_DIR = Path(__file__).resolve().parent / "templates" / "modules"
# Modules a package carries beside its modeling file when the modeling file imports them (`from .<name>
# import`): the specs a model on NxD's MoE imports (NXS040), the norms and specs of NXS026.
CARRIED_MODULES = ("attention_norm_weights.py", "moe_expert_weights.py", "tensor_parallel_norms.py")


@dataclass(frozen=True)
class Generation:
    """Every file of a generated package, by path relative to the package folder, as exact bytes."""

    emitted: EmittedModel
    record: GenerationRecord
    files: dict[str, bytes] = field(repr=False)

    @property
    def content_files(self) -> dict[str, bytes]:
        """The generated files without the record: what the record's digest covers."""
        return {name: data for name, data in self.files.items() if name != RECORD_FILE}


def render_package(emitted: EmittedModel, test_model: str | None = None) -> Generation:
    """The package files of a generation (in memory); `test_model` defaults to the placeholder."""
    request = emitted.request
    content = {INIT_FILE: b"", emitted.filename: emitted.text.encode("utf-8")}
    for module in CARRIED_MODULES:
        if f"from .{module.removesuffix('.py')} import" in emitted.text:
            content[module] = (MODULES_DIR / module).read_bytes()
    record = GenerationRecord(
        model_type=request.model_type,
        source_file=emitted.source.display_path if request.source is None else request.source.name,
        source_sha256=hashlib.sha256(emitted.source.read_text().encode("utf-8")).hexdigest(),
        source_given=request.source is not None,
        transformers_version=emitted.source.transformers_version,
        ruleset_version=ruleset.RULESET_VERSION,
        disabled_rules=request.disabled,
        allow_unsupported=request.allow_unsupported,
        test_model=test_model or placeholder_test_model(request.model_type),
        generation_sha256=digest(content),
    )
    files = dict(sorted({**content, RECORD_FILE: record.to_text().encode("utf-8")}.items()))
    return Generation(emitted=emitted, record=record, files=files)


def read_tree(folder: Path) -> dict[str, bytes]:
    """Every regular file under `folder` (POSIX relative path -> bytes), skipping .git and caches."""
    files: dict[str, bytes] = {}
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if any(part in (".git", "__pycache__") for part in relative.parts) or not path.is_file():
            continue
        files[relative.as_posix()] = path.read_bytes()
    return files
