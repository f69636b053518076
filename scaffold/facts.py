"""What scaffolding needs from the installed transformers, as plain data (`ModelFacts`).

The auto-mapping tables, the config class (its `__init__` parameters, tensor-parallel plan and the
values of a default instance), the modeling module and the activations with learnable parameters.
Reading them means importing transformers' config and auto modules, which costs a second or more;
`scaffold.facts_cache` keeps them as JSON so that a command line run does not. None of it needs torch:
the auto modules are imported by name (transformers' package namespace hides them without torch) and
the activation table is read from the sources of transformers' activations and `torch.nn`
(`scaffold.activation_sources`).
`python -m scaffold.facts <model_type>` prints the facts (or the error) as JSON: the cache runs it in a
subprocess with transformers' torch support switched off (`USE_TORCH=0`).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import importlib
import importlib.util
import inspect
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .activation_sources import activation_facts, quiet
from .errors import ScaffoldError

SCHEMA = 3  # bump when the facts or their JSON change (2: torch sources among the inputs; 3: display_name)


@dataclass(frozen=True)
class ConfigFacts:
    """The config class of a model type, and its default instance's attribute values.

    `values` holds the defaults JSON keeps exactly; `opaque` the repr of the others (their value is not
    available); `methods` the callable attributes.
    """

    class_name: str
    init_parameters: tuple[str, ...]
    tp_plan: tuple[tuple[str, str], ...]
    values: tuple[tuple[str, Any], ...]
    opaque: tuple[tuple[str, str], ...] = ()
    methods: tuple[str, ...] = ()
    default_error: str | None = None  # why `ConfigClass()` failed, when it did

    def defaults(self) -> DefaultConfig:
        """A stand-in for `ConfigClass()` (ScaffoldError when the class cannot be built with defaults)."""
        if self.default_error is not None:
            raise ScaffoldError(
                f"cannot instantiate {self.class_name}() for its defaults: {self.default_error}"
            )
        return DefaultConfig(self)


class OpaqueValue:
    """A default value JSON could not hold: only its repr is known."""

    def __init__(self, text: str) -> None:
        self._text = text

    def __repr__(self) -> str:
        return self._text


def _method(*args: Any, **kwargs: Any) -> Any:
    raise TypeError("config methods are not available from the recorded facts")


class DefaultConfig:
    """Read-only attribute view of a default config instance, rebuilt from `ConfigFacts`."""

    def __init__(self, facts: ConfigFacts) -> None:
        self.__values = dict(facts.values)
        self.__opaque = dict(facts.opaque)
        self.__methods = frozenset(facts.methods)
        self.__name = facts.class_name

    def __getattr__(self, name: str) -> Any:
        if name in self.__values:
            return self.__values[name]
        aliases = self.__values.get("attribute_map")
        if isinstance(aliases, dict) and name in aliases:  # `config.hidden_size` for GPT-2's `n_embd`
            return getattr(self, aliases[name])
        if name in self.__opaque:
            return OpaqueValue(self.__opaque[name])
        if name in self.__methods:
            return _method
        raise AttributeError(f"{self.__name} has no attribute {name!r}")

    def __repr__(self) -> str:
        return f"<default {self.__name}>"


@dataclass(frozen=True)
class ModelFacts:
    """Everything `scaffold.source.locate` and the analysis read from transformers for one model type."""

    model_type: str
    display_name: str  # transformers' name for the architecture in its docs ("Mistral", "Qwen2")
    transformers_version: str
    causal_lm_class: str
    base_model_class: str
    modeling_module: str  # dotted module defining the causal-LM class
    modeling_file: str
    config: ConfigFacts
    learnable_activations: tuple[tuple[str, str], ...]  # ACT2FN key -> class, for those with parameters
    inputs: tuple[tuple[str, str], ...]  # file -> sha256 of the transformers files the facts come from

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str) -> ModelFacts:
        data = json.loads(text)
        config = data.pop("config")
        return cls(
            **{key: _tuples(value) if isinstance(value, list) else value for key, value in data.items()},
            config=ConfigFacts(
                **{
                    key: _tuples(value) if isinstance(value, list) and key != "values" else value
                    for key, value in config.items()
                    if key != "values"
                },
                values=tuple((name, value) for name, value in config["values"]),
            ),
        )


def _tuples(value: list[Any]) -> tuple[Any, ...]:
    return tuple(tuple(item) if isinstance(item, list) else item for item in value)


def file_digest(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# --- collection from the live transformers ------------------------------------------------------------


@functools.cache
def collect(model_type: str) -> ModelFacts:
    """Read the facts of `model_type` from the installed transformers (imports its config modules).

    Cached for the life of the process (the installed transformers does not change under it).

    Raises ScaffoldError for an unknown type (listing the closest known types) or a type without a
    causal-LM or base-model class.
    """
    import transformers

    # by name: without torch, `from transformers.models.auto import modeling_auto` gives a stand-in
    configuration_auto = importlib.import_module("transformers.models.auto.configuration_auto")
    modeling_auto = importlib.import_module("transformers.models.auto.modeling_auto")

    causal_types = sorted(modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
    if model_type not in configuration_auto.CONFIG_MAPPING_NAMES:
        raise ScaffoldError(
            f"unknown model type {model_type!r} in transformers {transformers.__version__}",
            hint=_closest(model_type, causal_types),
        )
    if model_type not in modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ScaffoldError(
            f"model type {model_type!r} has no causal-LM class in transformers {transformers.__version__}; "
            "only decoder-only causal LMs can be scaffolded",
            hint=_closest(model_type, causal_types),
        )
    causal_lm_class = modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type]
    base_model_class = modeling_auto.MODEL_MAPPING_NAMES.get(model_type)
    if base_model_class is None:
        raise ScaffoldError(
            f"model type {model_type!r} has no base-model class in transformers' auto mapping"
        )
    config_class = configuration_auto.CONFIG_MAPPING[model_type]
    with quiet():
        config = config_facts(config_class)
    activations = activation_facts()
    module_name = _defining_module(transformers, causal_lm_class)
    spec = importlib.util.find_spec(module_name)
    if spec is None or spec.origin is None:
        raise ScaffoldError(f"cannot find the module {module_name} that defines {causal_lm_class}")
    inputs = sorted(
        {
            *(
                str(Path(module.__file__))
                for module in (configuration_auto, modeling_auto, sys.modules[config_class.__module__])
                if module.__file__
            ),
            *activations.sources,
        }
    )
    return ModelFacts(
        model_type=model_type,
        display_name=configuration_auto.MODEL_NAMES_MAPPING.get(model_type, model_type),
        transformers_version=transformers.__version__,
        causal_lm_class=causal_lm_class,
        base_model_class=base_model_class,
        modeling_module=module_name,
        modeling_file=spec.origin,
        config=config,
        learnable_activations=activations.learnable,
        inputs=tuple((path, file_digest(path)) for path in inputs),
    )


def config_facts(config_class: type[Any]) -> ConfigFacts:
    """The facts of a config class: parameters, tp plan and every attribute of a default instance."""
    try:
        parameters = tuple(inspect.signature(config_class.__init__).parameters)
    except (TypeError, ValueError):
        parameters = ()
    tp_plan = tuple(
        (str(key), str(value))
        for key, value in (getattr(config_class, "base_model_tp_plan", None) or {}).items()
    )
    try:
        instance = config_class()
    except Exception as error:  # reported when the analysis asks for the defaults
        return ConfigFacts(config_class.__name__, parameters, tp_plan, (), default_error=str(error))
    values: list[tuple[str, Any]] = []
    opaque: list[tuple[str, str]] = []
    methods: list[str] = []
    for name in sorted(set(dir(instance))):
        if name.startswith("__"):
            continue
        try:
            value = getattr(instance, name)
        except Exception:  # a property that fails on defaults: absent, as `hasattr` would say
            continue
        if callable(value):
            methods.append(name)
        elif _json_exact(value):
            values.append((name, value))
        else:
            opaque.append((name, repr(value)))
    return ConfigFacts(
        config_class.__name__, parameters, tp_plan, tuple(values), tuple(opaque), tuple(methods)
    )


def _json_exact(value: Any) -> bool:
    """Whether the value comes back from JSON with the same type structure and repr."""
    try:
        again = json.loads(json.dumps(value))
    except (TypeError, ValueError):
        return False
    return repr(again) == repr(value) and _same_types(again, value)


def _same_types(first: Any, second: Any) -> bool:
    if type(first) is not type(second):
        return False
    if isinstance(first, list):
        return all(_same_types(a, b) for a, b in zip(first, second, strict=True))
    if isinstance(first, dict):
        return all(_same_types(first[key], second[key]) for key in first)
    return True


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


def main(argv: list[str]) -> int:
    """Print the facts of `argv[0]` as JSON, or `{"error": ..., "hint": ...}` (status 0 either way)."""
    try:
        sys.stdout.write(collect(argv[0]).to_json())
    except ScaffoldError as error:
        sys.stdout.write(json.dumps({"error": error.message, "hint": error.hint}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
