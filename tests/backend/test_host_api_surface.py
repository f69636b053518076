"""Signatures of the reference training host against the released optimum-neuron 0.4.5.

The oracle is the installed release's source (`optimum/neuron/models/training/*.py` and the model registry
in `optimum/neuron/models/auto_model.py`), parsed with `ast`, never imported. For every top-level name of a
released module: ours must have it (or it is listed in `NOT_PROVIDED` with a reason, and then ours must not
have it); functions, class `__init__`s and public methods must agree on parameter names, order, kinds and
defaults; dataclass fields on names, order and defaults; constants and class attributes on their values.
Ours is imported through the backend loader (`activate("reference").host_module(name)`).

A difference is a failure unless `DEVIATING` allows exactly it, under its deviation id
(docs/backend-deviations.md), or `DISCREPANCIES` lists it as a known difference to fix (strict xfail).
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
import types
from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path
from typing import Any

import pytest

from conformance.backends import activate

from .api_surface import REQUIRED, Ours, default_from_node, differences, params_from_node, params_of
from .oracle_optimum_neuron import oracle_source

GOLDEN_MODEL = Path(__file__).resolve().parents[1] / "golden" / "llama" / "modeling_llama.py"
SEED_GUIDE = (
    Path(__file__).resolve().parents[3] / "shared" / "seed" / "contributing-custom-models-for-training.md"
)

# Our host module -> the released file (relative to optimum/neuron/models/) that defines the same names.
RELEASED_FILES = {
    "auto_models": "training/auto_models.py",
    "checkpointing": "training/checkpointing.py",
    "config": "training/config.py",
    "loss_utils": "training/loss_utils.py",
    "masking_utils": "training/masking_utils.py",
    "model_registry": "auto_model.py",
    "modeling_auto": "training/modeling_auto.py",
    "modeling_utils": "training/modeling_utils.py",
    "pipeline_utils": "training/pipeline_utils.py",
    "training_utils": "training/training_utils.py",
    "transformations_utils": "training/transformations_utils.py",
}
# Released base classes outside the training package whose public methods a host class inherits:
# `module:Class` -> (file relative to optimum/neuron/, base class name).
RELEASED_BASES = {"config:TrainingNeuronConfig": ("configuration_utils.py", "NeuronConfig")}
RELEASED_MODELS = ("training/llama/modeling_llama.py", "training/qwen3/modeling_qwen3.py",
                   "training/granite/modeling_granite.py")  # fmt: skip


@dataclass(frozen=True)
class Deviating:
    """An intended difference: the deviation that explains it, why, and exactly the differences it allows."""

    deviation: str
    reason: str
    allowed: frozenset[str]


DEVIATING: dict[str, Deviating] = {
    "checkpointing:consolidate_model_parallel_checkpoints_to_unified_checkpoint": Deviating(
        "ON-04",
        "consolidation writes numbered shards with an index above `max_shard_size` (tests pass a small size)",
        frozenset({"extra parameter max_shard_size"}),
    ),
    "loss_utils:fixed_cross_entropy": Deviating(
        "ON-07",
        "num_items_in_batch is honoured as in transformers",
        frozenset({"extra parameter num_items_in_batch"}),
    ),
    "loss_utils:ForCausalLMLoss": Deviating(
        "ON-07",
        "num_items_in_batch is honoured as in transformers",
        frozenset({"extra parameter num_items_in_batch"}),
    ),
}

# Known differences with no deviation id, to fix in the reference host (strict xfail until fixed).
DISCREPANCIES: dict[str, str] = {}

# Released names the reference host does not implement; generated models and the issue never use them.
NOT_PROVIDED: dict[str, str] = {
    "modeling_utils:_wait_previous_async_save": "async_save saves synchronously here (ON-11)",
    "modeling_utils:_load_state_dict_into_model": "private loading helper; ours loads through its own private modules",
    "masking_utils:_LOGGED_WARNING_FLASH_ATTENTION_2": "private once-only warning flag",
    **{
        f"config:TrainingNeuronConfig.{method}": (
            "inherited from optimum-neuron's NeuronConfig (neuron_config.json persistence and hub push); the "
            "release's host writes trn_config.json itself and never calls it, nor do models"
        )
        for method in (
            "save_pretrained",
            "from_pretrained",
            "from_dict",
            "to_dict",
            "to_json_string",
            "to_json_file",
        )
    },
    "pipeline_utils:OptimumNeuronFXTracer": "pipeline parallelism (PP > 1) is not implemented by the reference",
    "pipeline_utils:NxDPPModelWithPeftSupport": "pipeline parallelism (PP > 1) is not implemented by the reference",
    "pipeline_utils:trace_model": "pipeline parallelism (PP > 1) is not implemented by the reference",
    "pipeline_utils:MetaParametersOnly": "pipeline parallelism (PP > 1) is not implemented by the reference",
    "pipeline_utils:create_nxdpp_model": "pipeline parallelism (PP > 1) is not implemented by the reference",
    "pipeline_utils:suppress_logging": "pipeline parallelism (PP > 1) is not implemented by the reference",
    "pipeline_utils:move_params_to_cpu": "pipeline parallelism (PP > 1) is not implemented by the reference",
    "pipeline_utils:dynamic_torch_fx_wrap": "pipeline parallelism (PP > 1) is not implemented by the reference",
    "training_utils:is_topology_supported": "Trainium topology check (trainer side)",
    "training_utils:patch_generation_mixin_to_neuron_generation_mixin": "generation on Neuron (inference side)",
    "training_utils:patch_generation_mixin_to_general_neuron_generation_mixin": "generation on Neuron (inference side)",
    "training_utils:set_verbosity": "patches transformers' logging; the reference host leaves it alone",
    "training_utils:patch_transformers_for_neuron_sdk": "patches transformers at import; the reference host does not",
    "training_utils:skip_first_batches": "trainer data-loader helper",
    "training_utils:_get_model_param_count": "trainer statistics helper",
    "training_utils:get_model_param_count": "trainer statistics helper",
    "training_utils:is_logging_process_method": "trainer decorator",
}

# Names with no interface to compare: module loggers (ours may name theirs differently or have none).
NOT_COMPARED = frozenset({"logger"})

# Package-level exports of the released `optimum.neuron.models.training` that ours leaves out.
PACKAGE_NOT_PROVIDED: dict[str, str] = {
    "auto_models": "the real package imports it to register its shipped models; ours ships none",
    "GraniteForCausalLM": "a shipped model of the release; the reference host ships no model",
    "LlamaForCausalLM": "a shipped model of the release; the reference host ships no model",
    "Qwen3ForCausalLM": "a shipped model of the release; the reference host ships no model",
    "patch_transformers_for_neuron_sdk": "the reference host does not patch transformers",
    "os": "an import of the release's __init__, not an export",
}


@dataclass(frozen=True)
class Item:
    """One released name to compare: `module:qualified name`, its kind, its `ast` node and file:line."""

    key: str
    kind: str  # function, method, property, class, fields, value
    node: ast.AST
    where: str


@cache
def _released_tree(module: str) -> ast.Module:
    return ast.parse(_released_path(module).read_text())


def _released_path(module: str) -> Path:
    models = oracle_source().parents[1]  # .../optimum/neuron/models
    return models / RELEASED_FILES[module]


def _is_dataclass(node: ast.ClassDef) -> bool:
    return any(
        ast.unparse(d).split("(")[0] in ("dataclass", "dataclasses.dataclass") for d in node.decorator_list
    )


def _decorators(node: ast.FunctionDef) -> set[str]:
    return {ast.unparse(d).split("(")[0] for d in node.decorator_list}


def _assigned_name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
        return node.targets[0].id
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return node.target.id
    return None


@cache
def released_items() -> tuple[Item, ...]:
    """Every top-level name of the released modules, with the methods and fields of its classes."""
    items: list[Item] = []
    for module in RELEASED_FILES:
        where = f"optimum/neuron/models/{RELEASED_FILES[module]}"
        for node in _released_tree(module).body:
            if isinstance(node, ast.FunctionDef):
                items.append(Item(f"{module}:{node.name}", "function", node, f"{where}:{node.lineno}"))
            elif isinstance(node, ast.ClassDef):
                items.append(Item(f"{module}:{node.name}", "class", node, f"{where}:{node.lineno}"))
                items.extend(_class_items(module, node, where))
                items.extend(_inherited_items(module, node))
            elif (name := _assigned_name(node)) is not None and name not in NOT_COMPARED:
                items.append(Item(f"{module}:{name}", "value", node, f"{where}:{node.lineno}"))
    return tuple(items)


def _class_items(module: str, cls: ast.ClassDef, where: str) -> list[Item]:
    items: list[Item] = []
    if _is_dataclass(cls):
        items.append(Item(f"{module}:{cls.name}.<fields>", "fields", cls, f"{where}:{cls.lineno}"))
    for node in cls.body:
        if isinstance(node, ast.FunctionDef) and (node.name == "__init__" or not node.name.startswith("_")):
            kind = "property" if _decorators(node) & {"property", "cached_property"} else "method"
            if any(d.endswith((".setter", ".deleter")) for d in _decorators(node)):
                continue
            items.append(Item(f"{module}:{cls.name}.{node.name}", kind, node, f"{where}:{node.lineno}"))
        elif not _is_dataclass(cls) and (name := _assigned_name(node)) is not None and node.value is not None:
            items.append(Item(f"{module}:{cls.name}.{name}", "value", node, f"{where}:{node.lineno}"))
    return items


def _inherited_items(module: str, cls: ast.ClassDef) -> list[Item]:
    """Public methods `cls` inherits from its released base outside the training package, if any."""
    if f"{module}:{cls.name}" not in RELEASED_BASES:
        return []
    relative, base_name = RELEASED_BASES[f"{module}:{cls.name}"]
    path = oracle_source().parents[2] / relative  # .../optimum/neuron/<relative>
    base = next(
        n for n in ast.parse(path.read_text()).body if isinstance(n, ast.ClassDef) and n.name == base_name
    )
    own = {n.name for n in cls.body if isinstance(n, ast.FunctionDef)}
    inherited = [
        i
        for i in _class_items(module, base, f"optimum/neuron/{relative}")
        if i.kind in ("method", "property")
    ]
    return [
        dataclasses.replace(i, key=i.key.replace(f":{base_name}.", f":{cls.name}."))
        for i in inherited
        if i.key.rsplit(".", 1)[1] not in own
    ]


def _ours(key: str) -> Any:
    """Our object for a key (`module:name` or `module:Class.attribute`); AttributeError when absent."""
    module_name, qualified = key.replace(".<fields>", "").split(":")
    owner: Any = activate("reference").host_module(module_name)
    *classes, name = qualified.split(".")
    for class_name in classes:
        owner = getattr(owner, class_name)
    if classes:
        return inspect.getattr_static(owner, name)
    return getattr(owner, name)


def _has_ours(key: str) -> bool:
    try:
        _ours(key)
    except AttributeError:
        return False
    return True


def _case(item: Item) -> Any:
    marks = (
        [pytest.mark.xfail(strict=True, reason=DISCREPANCIES[item.key])] if item.key in DISCREPANCIES else []
    )
    return pytest.param(item, marks=marks, id=item.key)


def _provided(key: str) -> bool:
    """Not listed in NOT_PROVIDED, nor a member of a class that is."""
    return key not in NOT_PROVIDED and key.split(".")[0] not in NOT_PROVIDED


def _compared(kind: str) -> list[Any]:
    return [_case(i) for i in released_items() if i.kind == kind and _provided(i.key)]


def _check(key: str, where: str, found: set[str]) -> None:
    allowed = DEVIATING[key].allowed if key in DEVIATING else frozenset()
    if key in DEVIATING:
        assert allowed <= found, (
            f"{key}: the differences {DEVIATING[key].deviation} allows are gone: update DEVIATING"
        )
    unexplained = sorted(found - allowed)
    assert not unexplained, f"{key} differs from the release ({where}): {unexplained}"


@pytest.mark.parametrize("item", _compared("function") + _compared("method"))
def test_signature_matches_release(item: Item) -> None:
    assert isinstance(item.node, ast.FunctionDef)
    static = item.kind == "method" and "staticmethod" in _decorators(item.node)
    drop_first = item.kind == "method" and not static
    ours = _ours(item.key)
    if item.kind == "method":
        kind = (
            "staticmethod"
            if static
            else "classmethod"
            if "classmethod" in _decorators(item.node)
            else "method"
        )
        our_kind = type(ours).__name__ if isinstance(ours, staticmethod | classmethod) else "method"
        assert our_kind == kind, f"{item.key}: ours is a {our_kind}, the release's a {kind}"
        ours = ours.__func__ if isinstance(ours, staticmethod | classmethod) else ours
    found = differences(
        params_from_node(item.node, drop_first=drop_first), params_of(ours, drop_first=drop_first)
    )
    _check(item.key, item.where, set(found))


@pytest.mark.parametrize("item", _compared("property"))
def test_property_is_a_property(item: Item) -> None:
    assert isinstance(_ours(item.key), property | cached_property), f"{item.key} is not a property"


@pytest.mark.parametrize("item", _compared("class"))
def test_class_is_a_class(item: Item) -> None:
    assert inspect.isclass(_ours(item.key)), item.key


@pytest.mark.parametrize("item", _compared("fields"))
def test_dataclass_fields_match_release(item: Item) -> None:
    """Field names in order, and their defaults (a `field(default_factory=...)` compares as its source)."""
    assert isinstance(item.node, ast.ClassDef)
    expected = [
        (node.target.id, "field", REQUIRED if node.value is None else default_from_node(node.value))
        for node in item.node.body
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
    ]
    ours = _ours(item.key)
    assert dataclasses.is_dataclass(ours), f"{item.key}: ours is not a dataclass"
    actual = [(f.name, "field", _field_default(f)) for f in dataclasses.fields(ours)]
    _check(item.key, item.where, set(differences(expected, actual)))


def _field_default(field: dataclasses.Field[Any]) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        factory = field.default_factory
        return Ours(factory, f"field(default_factory={factory.__name__})", {})
    return REQUIRED


@pytest.mark.parametrize("item", _compared("value"))
def test_value_matches_release(item: Item) -> None:
    node = item.node
    assert isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None
    ours = _ours(item.key)
    ours = ours.__get__(None, object) if isinstance(ours, staticmethod | classmethod) else ours
    expected = node.value
    if isinstance(expected, ast.Dict | ast.List) and not (
        expected.keys if isinstance(expected, ast.Dict) else expected.elts
    ):
        # An empty container is a registry filled at run time (e.g. `_REGISTERED_NEURON_MODELS = {}`): models
        # registered by earlier tests are in it, so only its type is compared.
        assert type(ours) is type(ast.literal_eval(expected)), item.key
    elif isinstance(expected, ast.Call) and ast.unparse(expected.func) == "re.compile":
        assert isinstance(ours, re.Pattern) and ours.pattern == ast.literal_eval(expected.args[0]), item.key
    elif isinstance(expected, ast.Dict) and all(isinstance(v, ast.Name) for v in expected.values):
        # e.g. ALL_ATTENTION_FUNCTIONS = {"flash_attention_2": nki_flash_attn_func}: same keys, same functions.
        names = {ast.literal_eval(k): v.id for k, v in zip(expected.keys, expected.values, strict=True) if k}
        assert {k: getattr(v, "__name__", None) for k, v in ours.items()} == names, item.key
    else:
        value = ast.literal_eval(expected)
        assert type(ours) is type(value) and ours == value, f"{item.key}: {ours!r} instead of {value!r}"


def test_not_provided_names_are_absent_and_released() -> None:
    released = {item.key for item in released_items()}
    for key in NOT_PROVIDED:
        assert key in released, f"NOT_PROVIDED names {key}, which the release does not define"
        assert not _has_ours(key), f"{key} exists now: drop it from NOT_PROVIDED so that it is compared"


def test_every_released_name_exists_or_is_listed() -> None:
    absent = [i.key for i in released_items() if _provided(i.key) and not _has_ours(i.key)]
    assert not absent, (
        f"released names the reference host lacks (implement or list in NOT_PROVIDED): {absent}"
    )


def test_allow_lists_name_real_entries() -> None:
    released = {item.key for item in released_items()}
    for key in (*DEVIATING, *DISCREPANCIES):
        assert key in released and key not in NOT_PROVIDED, key
    for key, deviating in DEVIATING.items():
        assert re.fullmatch(r"ON-\d\d", deviating.deviation) and deviating.reason and deviating.allowed, key


def _host_imports(tree: ast.Module) -> set[tuple[str, str]]:
    """`(module, name)` a model file imports from the host (`from ..config import X`), host modules only."""
    return {
        (node.module, alias.name)
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.level == 2 and node.module in RELEASED_FILES
        for alias in node.names
    }


def _used_by_models() -> set[tuple[str, str]]:
    used = _host_imports(ast.parse(GOLDEN_MODEL.read_text()))
    models = oracle_source().parents[1]
    for relative in RELEASED_MODELS:
        used |= _host_imports(ast.parse((models / relative).read_text()))
    if SEED_GUIDE.is_file():
        blocks = re.findall(r"```python\n(.*?)```", SEED_GUIDE.read_text(), flags=re.S)
        for block in blocks:
            try:
                used |= _host_imports(ast.parse(block))
            except SyntaxError:
                continue
    return used


def test_names_models_import_are_provided() -> None:
    used = _used_by_models()
    assert ("modeling_utils", "NeuronModelMixin") in used and ("config", "TrainingNeuronConfig") in used
    for module, name in sorted(used):
        key = f"{module}:{name}"
        assert key not in NOT_PROVIDED, f"{key} is imported by models but listed as not provided"
        assert _has_ours(key), f"models import {name} from ..{module}; the reference host lacks it"


def test_package_exports_match_release() -> None:
    tree = ast.parse((oracle_source().parent / "__init__.py").read_text())
    released = {
        alias.asname or alias.name
        for node in tree.body
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    package = activate("reference").host()
    ours = set(getattr(package, "__all__", ()))
    assert set(PACKAGE_NOT_PROVIDED) <= released, set(PACKAGE_NOT_PROVIDED) - released
    missing = sorted(released - set(PACKAGE_NOT_PROVIDED) - ours)
    assert not missing, f"the reference host package does not export {missing}"
    for name in sorted(ours):
        assert getattr(package, name) is not None, name
    for name in PACKAGE_NOT_PROVIDED:
        assert name not in ours, f"{name} is exported now: drop it from PACKAGE_NOT_PROVIDED"


def test_package_exports_nothing_more_than_release() -> None:
    tree = ast.parse((oracle_source().parent / "__init__.py").read_text())
    released = {
        alias.asname or alias.name
        for node in tree.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    extra = sorted(set(activate("reference").host().__all__) - released)
    assert not extra, f"exported by ours only: {extra}"


def test_released_modules_are_parsed() -> None:
    """The oracle is really read: each file defines names, and the registry lives in auto_model.py."""
    keys = {item.key for item in released_items()}
    assert {"model_registry:register_neuron_model", "config:TrainingNeuronConfig.<fields>"} <= keys
    assert all(any(k.startswith(f"{m}:") for k in keys) for m in RELEASED_FILES)
    assert not isinstance(_ours("config:TrainingNeuronConfig"), types.ModuleType)
