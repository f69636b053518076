"""Find the installed transformers modeling file and config class for a model type.

The model type is the `model_type` of the config (`llama`, `qwen3`, ...). transformers' auto mappings
name the causal-LM class and the base-model class; the lazy-import table says which module defines the
causal-LM class, and that module's file is read as text (it is never imported here). `--source FILE`
replaces the file, e.g. to analyse a patched copy; the config class still comes from the model type.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ScaffoldError


@dataclass(frozen=True)
class ModelSource:
    """Where a model's source lives and which classes and config to read from it."""

    model_type: str
    modeling_file: Path
    display_path: str  # stable, machine-independent: "transformers/models/llama/modeling_llama.py"
    package: str  # dotted package the file's relative imports resolve against
    config_class: type[Any]
    base_model_class: str
    causal_lm_class: str
    transformers_version: str

    def read_text(self) -> str:
        """The modeling source; a missing or unreadable file is a ScaffoldError."""
        try:
            return self.modeling_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise ScaffoldError(f"cannot read {self.modeling_file}: {error}") from error


def locate(model_type: str, source: Path | None = None) -> ModelSource:
    """Resolve `model_type` to its modeling file, classes and config class.

    Raises ScaffoldError for an unknown type (listing the closest known types), a type without a
    causal-LM class, or a `source` path that does not exist.
    """
    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING, CONFIG_MAPPING_NAMES
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_MAPPING_NAMES

    causal_types = sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
    if model_type not in CONFIG_MAPPING_NAMES:
        raise ScaffoldError(
            f"unknown model type {model_type!r} in transformers {transformers.__version__}",
            hint=_closest(model_type, causal_types),
        )
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ScaffoldError(
            f"model type {model_type!r} has no causal-LM class in transformers {transformers.__version__}; "
            "only decoder-only causal LMs can be scaffolded",
            hint=_closest(model_type, causal_types),
        )
    causal_lm_class = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type]
    base_model_class = MODEL_MAPPING_NAMES.get(model_type)
    if base_model_class is None:
        raise ScaffoldError(
            f"model type {model_type!r} has no base-model class in transformers' auto mapping"
        )
    config_class = CONFIG_MAPPING[model_type]

    module_name = _defining_module(transformers, causal_lm_class)
    package = module_name.rpartition(".")[0]
    if source is None:
        spec = importlib.util.find_spec(module_name)
        if spec is None or spec.origin is None:
            raise ScaffoldError(f"cannot find the module {module_name} that defines {causal_lm_class}")
        modeling_file = Path(spec.origin)
        display_path = module_name.replace(".", "/") + ".py"
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
        config_class=config_class,
        base_model_class=base_model_class,
        causal_lm_class=causal_lm_class,
        transformers_version=transformers.__version__,
    )


def _defining_module(transformers: Any, class_name: str) -> str:
    """Dotted module that defines `class_name`, read from transformers' lazy-import tables."""
    top = getattr(transformers, "_class_to_module", {}).get(class_name)
    if top is None:
        raise ScaffoldError(f"transformers does not export {class_name}")
    dotted = f"transformers.{top}"
    if dotted.rsplit(".", 1)[-1].startswith("modeling_"):
        return dotted
    package = importlib.import_module(dotted)
    inner = getattr(package, "_class_to_module", {}).get(class_name)
    if inner is None:
        raise ScaffoldError(f"cannot tell which module of {dotted} defines {class_name}")
    return f"{dotted}.{inner}"


def _closest(word: str, choices: list[str]) -> str:
    matches = difflib.get_close_matches(word, choices, n=5, cutoff=0.6)
    if matches:
        return "did you mean " + ", ".join(matches) + "?"
    return "see `transformers.models.auto.modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES` for known types"
