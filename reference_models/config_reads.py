"""Which config fields a transformers causal LM reads, found in its source rather than listed by hand.

The catalogue gives every scalar field the model reads a non-default value; this module says which fields
those are. It parses (with `ast`, nothing is executed) the modeling file of the installed transformers that
defines the architecture's causal LM class, and collects `config.<name>`, `self.config.<name>` and
`getattr(config, "<name>")` / `hasattr(...)`. Fields are also read by the transformers helpers that the
modeling file imports (`rope_theta` by `modeling_rope_utils`' RoPE functions, `initializer_range` by
`PreTrainedModel._init_weights`), so for every `from ...<module> import <names>` inside transformers the
definitions of those names, and the module-level definitions they refer to in turn, are read too — one
module deep: what a helper module imports from a third one is not followed.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import inspect
import sys
from pathlib import Path

import transformers
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

_CONFIG_NAMES = frozenset({"config"})


def fields_read(model_type: str) -> dict[str, str]:
    """`{field: module}` for every config attribute the causal LM of `model_type` reads, with the first
    module (dotted, inside transformers) where a read was found: the modeling file itself first, then the
    helpers it imports in import order. KeyError when transformers has no causal LM for the type."""
    return dict(_fields_read(model_type))


@functools.cache
def _fields_read(model_type: str) -> tuple[tuple[str, str], ...]:
    module_name = modeling_module(model_type)
    path = _source_path(module_name)
    tree = _parse(path)
    found = dict.fromkeys(sorted(_reads(tree)), module_name)
    for node in tree.body:
        if not isinstance(node, ast.ImportFrom) or not node.level:
            continue
        helper = importlib.util.resolve_name("." * node.level + (node.module or ""), _package(module_name))
        if not helper.startswith("transformers."):
            continue
        helper_path = _source_path(helper)
        if helper_path is None:
            continue
        definitions = _definitions(helper_path)
        used = _closure(definitions, [alias.name for alias in node.names])
        for name in sorted(_reads(*used)):
            found.setdefault(name, helper)
    return tuple(found.items())


def reads_in(source: str) -> set[str]:
    """The config attributes a piece of Python source reads (public names only)."""
    return _reads(ast.parse(source))


def modeling_module(model_type: str) -> str:
    """The dotted name of the module that defines the causal LM class of `model_type` (imported)."""
    class_name = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type]
    return getattr(transformers, class_name).__module__


def _package(module_name: str) -> str:
    return module_name.rpartition(".")[0]


def _source_path(module_name: str) -> Path | None:
    """The `.py` file of a module (a package's `__init__.py`), without importing it when not yet loaded."""
    module = sys.modules.get(module_name)
    if module is not None and getattr(module, "__file__", None):
        return Path(inspect.getfile(module))
    try:
        spec = importlib.util.find_spec(module_name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    return Path(spec.origin)


@functools.cache
def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


@functools.cache
def _definitions(path: Path) -> dict[str, ast.AST]:
    """Module-level functions, classes and assigned names of a module, by name."""
    found: dict[str, ast.AST] = {}
    for node in _parse(path).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            found[node.name] = node
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name):
                    found[target.id] = node
    return found


def _closure(definitions: dict[str, ast.AST], names: list[str]) -> list[ast.AST]:
    """The definitions of `names` and of every module-level name they mention, transitively."""
    seen: set[str] = set()
    pending = list(names)
    nodes = []
    while pending:
        name = pending.pop()
        if name in seen or name not in definitions:
            continue
        seen.add(name)
        node = definitions[name]
        nodes.append(node)
        pending.extend(child.id for child in ast.walk(node) if isinstance(child, ast.Name))
    return nodes


def _reads(*roots: ast.AST) -> set[str]:
    names: set[str] = set()
    for root in roots:
        for node in ast.walk(root):
            if isinstance(node, ast.Attribute) and _is_config(node.value):
                names.add(node.attr)
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in {"getattr", "hasattr"}
                and len(node.args) >= 2
                and _is_config(node.args[0])
                and isinstance(node.args[1], ast.Constant)
                and isinstance(node.args[1].value, str)
            ):
                names.add(node.args[1].value)
    return {name for name in names if not name.startswith("_")}


def _is_config(node: ast.AST) -> bool:
    """`config` or `self.config`."""
    if isinstance(node, ast.Name):
        return node.id in _CONFIG_NAMES
    return (
        isinstance(node, ast.Attribute)
        and node.attr == "config"
        and isinstance(node.value, ast.Name)
        and node.value.id == "self"
    )
