"""A generated model package as bytes: the modeling file, the copier-rendered files, the answers file.

The copier template (templates/model_package, reached through the scaffold/templates link so that it
ships as package data) renders everything beside the modeling file.
`new-model` renders it here with Jinja, as copier would (same environment options, same exclusions):
importing copier costs more than the whole rendering, and only `scaffold update` needs copier's
machinery (its three-way merge). The answers file is written here, deterministic and self-sufficient:

- `_src_path` / `_commit` are fixed labels (copier records the temporary or install path otherwise);
  `scaffold update` points them at the temporary template repository it builds (scaffold.update);
- `_scaffold_pristine` holds the pristine generation (every generated file, zlib + base64). It is the
  merge base of the next `scaffold update`: the previous generation cannot be reproduced once
  transformers or the rule set has moved on, so it is stored rather than recomputed. Copier ignores
  `_`-prefixed keys other than its own two.
"""

from __future__ import annotations

import base64
import fnmatch
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .emit import EmittedModel, Request
from .errors import ScaffoldError
from .ruleset import RULESET_VERSION

TEMPLATE_DIR = Path(__file__).parent / "templates" / "model_package"
ANSWERS_FILE = ".copier-answers.yml"
PRISTINE_KEY = "_scaffold_pristine"
SRC_PATH_LABEL = "nxd-scaffold:templates/model_package"
ANSWERS_COMMENT = "# Copier answers written by nxd-scaffold: `scaffold update` and `scaffold check` read them. Do not edit.\n"
_REQUIRED = ("model_type", "transformers_version", "ruleset_version", "disabled_rules", "allow_unsupported")


def default_test_model(model_type: str) -> str:
    """Placeholder checkpoint for the optimum-neuron test lists, to be replaced by a real tiny model."""
    return f"<org>/{model_type}-tiny-random"


@dataclass(frozen=True)
class Generation:
    """Every file of a generated package, by path relative to the package folder, as exact bytes."""

    emitted: EmittedModel
    answers: dict[str, Any]
    files: dict[str, bytes] = field(repr=False)

    @property
    def content_files(self) -> dict[str, bytes]:
        """The generated files without the answers file."""
        return {name: data for name, data in self.files.items() if name != ANSWERS_FILE}


@dataclass(frozen=True)
class Recorded:
    """What an answers file says about an earlier generation."""

    answers: dict[str, Any]
    pristine: dict[str, bytes] | None  # None when the answers file has no pristine copy

    def request(
        self, source: Path | None = None, disabled: tuple[str, ...] = (), allow: bool = False
    ) -> Request:
        """The recorded request, with `source` replacing and `disabled` / `allow` adding to it."""
        recorded_source = self.answers.get("source_override") or None
        return Request(
            model_type=self.answers["model_type"],
            source=source if source is not None else (Path(recorded_source) if recorded_source else None),
            disabled=tuple(self.answers.get("disabled_rules") or ()) + tuple(disabled),
            allow_unsupported=bool(self.answers.get("allow_unsupported")) or allow,
        )

    @property
    def test_model(self) -> str:
        return self.answers.get("test_model") or default_test_model(self.answers["model_type"])


def answers_for(emitted: EmittedModel, test_model: str) -> dict[str, Any]:
    """The copier answers of a generation (what the template renders and what `update` replays)."""
    request = emitted.request
    return {
        "model_type": request.model_type,
        "package_name": request.package_name,
        "modeling_module": request.modeling_filename.removesuffix(".py"),
        "base_model_class": emitted.source.base_model_class,
        "causal_lm_class": emitted.source.causal_lm_class,
        "source_file": emitted.source.display_path,
        "source_override": "" if request.source is None else str(request.source),
        "transformers_version": emitted.source.transformers_version,
        "ruleset_version": RULESET_VERSION,
        "disabled_rules": list(request.disabled),
        "allow_unsupported": request.allow_unsupported,
        "test_model": test_model,
    }


def render_package(emitted: EmittedModel, test_model: str | None = None) -> Generation:
    """Render the template with the generation's answers and add the modeling file (in memory)."""
    answers = answers_for(emitted, test_model or default_test_model(emitted.request.model_type))
    files = render_template(answers)
    files[emitted.filename] = emitted.text.encode("utf-8")
    files = dict(sorted(files.items()))
    files[ANSWERS_FILE] = answers_text(answers, pristine=files).encode("utf-8")
    return Generation(emitted=emitted, answers=answers, files=files)


def render_template(answers: dict[str, Any]) -> dict[str, bytes]:
    """The template's files rendered with `answers` as `copier.run_copy` renders them, less the answers file.

    Files are taken as copier takes them: the ones `_exclude` in copier.yml leaves, `*<suffix>` files
    rendered by Jinja with copier's environment options (`keep_trailing_newline`), others copied as they
    are. Templated file names (only the answers file, which `answers_text` writes) are skipped.
    """
    from jinja2 import StrictUndefined
    from jinja2.sandbox import SandboxedEnvironment

    config = yaml.safe_load((TEMPLATE_DIR / "copier.yml").read_text(encoding="utf-8"))
    suffix = config.get("_templates_suffix", ".jinja")
    excluded = tuple(config.get("_exclude", ()))
    environment = SandboxedEnvironment(keep_trailing_newline=True, undefined=StrictUndefined)
    files: dict[str, bytes] = {}
    for path in sorted(TEMPLATE_DIR.rglob("*")):
        relative = path.relative_to(TEMPLATE_DIR)
        if not path.is_file() or "{{" in relative.as_posix() or _excluded(relative.parts, excluded):
            continue
        if suffix and path.name.endswith(suffix):
            template = environment.from_string(path.read_text(encoding="utf-8"))
            name = relative.as_posix().removesuffix(suffix)
            files[name] = template.render(**answers).encode("utf-8")
        else:
            files[relative.as_posix()] = path.read_bytes()
    return files


def _excluded(parts: tuple[str, ...], patterns: tuple[str, ...]) -> bool:
    """Whether a template path matches an `_exclude` pattern (a name or glob matching one of its parts)."""
    return any(fnmatch.fnmatchcase(part, pattern) for part in parts for pattern in patterns)


def answers_text(
    answers: dict[str, Any],
    pristine: dict[str, bytes],
    src_path: str = SRC_PATH_LABEL,
    commit: str | None = None,
) -> str:
    """Deterministic answers-file text: copier's keys, the answers (sorted), then the pristine copies."""
    head = {"_commit": commit or f"ruleset-{answers['ruleset_version']}", "_src_path": src_path}
    blobs = {
        name: base64.b64encode(zlib.compress(data, 9)).decode("ascii")
        for name, data in sorted(pristine.items())
    }
    return ANSWERS_COMMENT + _dump(head) + _dump(dict(sorted(answers.items()))) + _dump({PRISTINE_KEY: blobs})


def _dump(data: dict[str, Any]) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=2**31, allow_unicode=True)


def read_answers(package_dir: Path) -> Recorded:
    """The answers and pristine copies recorded in `package_dir` (ScaffoldError when absent or invalid)."""
    path = package_dir / ANSWERS_FILE
    if not path.is_file():
        raise ScaffoldError(
            f"{path}: no answers file, so {package_dir} was not generated by nxd-scaffold",
            hint="generate it with `scaffold new-model <type>` first",
        )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise ScaffoldError(f"{path}: cannot read the answers file: {error}") from error
    if not isinstance(data, dict) or any(key not in data for key in _REQUIRED):
        missing = [key for key in _REQUIRED if not isinstance(data, dict) or key not in data]
        raise ScaffoldError(f"{path}: not an nxd-scaffold answers file (missing {', '.join(missing)})")
    blobs = data.pop(PRISTINE_KEY, None)
    pristine = None
    if blobs is not None:
        try:
            pristine = {name: zlib.decompress(base64.b64decode(blob)) for name, blob in blobs.items()}
        except (AttributeError, TypeError, ValueError, zlib.error) as error:
            raise ScaffoldError(f"{path}: the {PRISTINE_KEY} entry is damaged: {error}") from error
    answers = {key: value for key, value in data.items() if not key.startswith("_")}
    return Recorded(answers=answers, pristine=pristine)


def read_tree(folder: Path) -> dict[str, bytes]:
    """Every regular file under `folder` (POSIX relative path -> bytes), skipping .git and caches."""
    files: dict[str, bytes] = {}
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if any(part in (".git", "__pycache__") for part in relative.parts) or not path.is_file():
            continue
        files[relative.as_posix()] = path.read_bytes()
    return files
