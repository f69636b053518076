"""Find the installed transformers modeling file and config class for a model type.

The model type is the `model_type` of the config (`llama`, `qwen3`, ...). transformers' auto mappings
name the causal-LM class and the base-model class; the lazy-import table says which module defines the
causal-LM class, and that module's file is read as text (it is never imported here). `--source FILE`
replaces the file, e.g. to analyse a patched copy; the config class still comes from the model type.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ScaffoldError
from .facts import ConfigFacts, ModelFacts
from .facts_cache import model_facts


@dataclass(frozen=True)
class ModelSource:
    """Where a model's source lives and which classes and config to read from it."""

    model_type: str
    modeling_file: Path
    display_path: str  # stable, machine-independent: "transformers/models/llama/modeling_llama.py"
    package: str  # dotted package the file's relative imports resolve against
    config: ConfigFacts
    base_model_class: str
    causal_lm_class: str
    transformers_version: str
    facts: ModelFacts

    @property
    def config_class(self) -> type[Any]:
        """The live config class (imports transformers; the analysis reads `config` instead)."""
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING

        return CONFIG_MAPPING[self.model_type]

    def read_text(self) -> str:
        """The modeling source; a missing or unreadable file is a ScaffoldError."""
        try:
            return self.modeling_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise ScaffoldError(f"cannot read {self.modeling_file}: {error}") from error


def locate(model_type: str, source: Path | None = None) -> ModelSource:
    """Resolve `model_type` to its modeling file, classes and config facts (see `scaffold.facts`).

    Raises ScaffoldError for an unknown type (listing the closest known types), a type without a
    causal-LM class, or a `source` path that does not exist.
    """
    facts = model_facts(model_type)
    package = facts.modeling_module.rpartition(".")[0]
    if source is None:
        modeling_file = Path(facts.modeling_file)
        display_path = facts.modeling_module.replace(".", "/") + ".py"
    else:
        modeling_file = source.resolve()
        if not modeling_file.is_file():
            raise ScaffoldError(f"--source {source}: no such file")
        display_path = str(source)
    return ModelSource(
        model_type=model_type,
        modeling_file=modeling_file,
        display_path=display_path,
        package=package,
        config=facts.config,
        base_model_class=facts.base_model_class,
        causal_lm_class=facts.causal_lm_class,
        transformers_version=facts.transformers_version,
        facts=facts,
    )
