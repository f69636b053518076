"""Which activations of transformers' `ACT2FN` hold learnable parameters, read from source.

The scaffolder refuses a model whose MLP activation has parameters (they would need their own sharding).
The table is read without importing anything: `ACT2CLS` in transformers' `activations.py` names each
entry's class (defined there, or a `torch.nn` class found in torch's `nn/modules` sources); a class is
learnable when its body, or a base class's, calls `Parameter(...)`. Sources laid out in a way the reading
does not know fall back to building every `ACT2FN` entry, which imports torch.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import importlib.util
import io
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence what building transformers objects prints (deprecations, fallbacks)."""
    from transformers.utils import logging

    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.set_verbosity(verbosity)


@dataclass(frozen=True)
class ActivationFacts:
    """The ACT2FN entries whose modules hold parameters, and the source files that tell."""

    learnable: tuple[tuple[str, str], ...]  # (ACT2FN key, class name), sorted by key
    sources: tuple[str, ...]  # the files read, sorted


@functools.cache
def activation_facts() -> ActivationFacts:
    """The learnable activations, read from the sources of `transformers.activations` and `torch.nn`.

    Nothing is imported. Sources laid out in a way the reading does not know (ACT2CLS not a literal
    dict, a class from elsewhere) fall back to building every ACT2FN entry, which imports torch.
    """
    try:
        return _ActivationSources(_package_folder("transformers"), _package_folder("torch")).read()
    except _Unreadable:
        return _built_activation_facts()


_TORCH_ROOT = "Module"


class _Unreadable(Exception):
    """The sources are not laid out as the static reading expects."""


def _package_folder(name: str) -> Path | None:
    """Folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


class _ActivationSources:
    """Reads ACT2CLS in transformers/activations.py and the classes it names, down to torch.nn.Module.

    A class is learnable when its body, or the body of a base class other than `torch.nn.Module`,
    calls `Parameter(...)` (`nn.Parameter`, `torch.nn.Parameter`, ...). Classes of `torch.nn` are
    looked up in torch/nn/modules/*.py; `torch.nn.Module` itself is not read.
    """

    def __init__(self, transformers_folder: Path | None, torch_folder: Path | None) -> None:
        if transformers_folder is None:
            raise _Unreadable("transformers is not installed")
        self._activations = transformers_folder / "activations.py"
        self._torch_modules = torch_folder / "nn" / "modules" if torch_folder is not None else None
        self._read: set[Path] = set()

    def read(self) -> ActivationFacts:
        table = _literal_dict(self._tree(self._activations), "ACT2CLS")
        learnable = []
        for key, value in table:
            if isinstance(value, ast.Tuple) and value.elts:  # (class, constructor kwargs)
                value = value.elts[0]
            resolved = self._resolve(value, self._activations)
            if resolved is not None and self._learnable(*resolved):
                learnable.append((key, resolved[1].name))
        return ActivationFacts(tuple(sorted(learnable)), tuple(sorted(str(path) for path in self._read)))

    def _learnable(self, path: Path, node: ast.ClassDef) -> bool:
        if any(_calls_parameter(child) for child in ast.walk(node)):
            return True
        bases = (self._resolve(base, path) for base in node.bases)
        return any(self._learnable(*base) for base in bases if base is not None)

    def _resolve(self, expression: ast.expr, path: Path) -> tuple[Path, ast.ClassDef] | None:
        """The class `expression` names in the file at `path` (None for `torch.nn.Module`)."""
        if isinstance(expression, ast.Name):
            definition = _top_level(self._tree(path)).get(expression.id)
            if isinstance(definition, ast.ClassDef):
                return path, definition
            if isinstance(definition, ast.expr):  # an alias: `Name = other`
                return self._resolve(definition, path)
            if path.parent == self._torch_modules:  # imported from a sibling module
                return self._torch_class(expression.id)
        elif isinstance(expression, ast.Attribute):
            owner = ast.unparse(expression.value)
            if owner in _torch_nn_names(self._tree(path)):
                return self._torch_class(expression.attr)
        raise _Unreadable(f"cannot tell which class {ast.unparse(expression)} is in {path}")

    def _torch_class(self, name: str) -> tuple[Path, ast.ClassDef] | None:
        if self._torch_modules is None:
            raise _Unreadable("torch is not installed")
        if name == _TORCH_ROOT:  # holds no parameters (its methods re-wrap those of subclasses)
            return None
        for path in sorted(self._torch_modules.glob("*.py")):
            text = path.read_text(encoding="utf-8")
            if f"class {name}(" not in text and f"class {name}:" not in text:
                continue
            definition = _top_level(self._tree(path)).get(name)
            if isinstance(definition, ast.ClassDef):
                return path, definition
        raise _Unreadable(f"no class {name} in {self._torch_modules}")

    def _tree(self, path: Path) -> ast.Module:
        self._read.add(path)
        return _parsed(path)


@functools.cache
def _parsed(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), str(path))


def _top_level(tree: ast.Module) -> dict[str, ast.ClassDef | ast.expr]:
    """Top-level classes, and the values of single-name assignments, by name (the last one wins)."""
    found: dict[str, ast.ClassDef | ast.expr] = {}
    for statement in tree.body:
        if isinstance(statement, ast.ClassDef):
            found[statement.name] = statement
        elif isinstance(statement, ast.Assign | ast.AnnAssign) and statement.value is not None:
            targets = statement.targets if isinstance(statement, ast.Assign) else [statement.target]
            if len(targets) == 1 and isinstance(targets[0], ast.Name):
                found[targets[0].id] = statement.value
    return found


def _literal_dict(tree: ast.Module, name: str) -> list[tuple[str, ast.expr]]:
    """(key, value expression) of the top-level `name = {"key": value, ...}`."""
    value = _top_level(tree).get(name)
    if not isinstance(value, ast.Dict):
        raise _Unreadable(f"{name} is not a dict literal")
    entries = []
    for key, item in zip(value.keys, value.values, strict=True):
        if not (isinstance(key, ast.Constant) and isinstance(key.value, str)):
            raise _Unreadable(f"{name} has a key that is not a string literal")
        entries.append((key.value, item))
    return entries


def _torch_nn_names(tree: ast.Module) -> set[str]:
    """The dotted names a module binds to `torch.nn` (`nn` after `from torch import nn`, ...)."""
    names: set[str] = set()
    for statement in tree.body:
        if isinstance(statement, ast.ImportFrom) and statement.module == "torch" and statement.level == 0:
            names.update(alias.asname or alias.name for alias in statement.names if alias.name == "nn")
        elif isinstance(statement, ast.Import):
            for alias in statement.names:
                if alias.name == "torch.nn" and alias.asname:
                    names.add(alias.asname)
                elif alias.name in ("torch", "torch.nn") and not alias.asname:
                    names.add("torch.nn")
    return names


def _calls_parameter(node: ast.AST) -> bool:
    if not isinstance(node, ast.Call):
        return False
    callee = node.func
    return (isinstance(callee, ast.Name) and callee.id == "Parameter") or (
        isinstance(callee, ast.Attribute) and callee.attr == "Parameter"
    )


def _built_activation_facts() -> ActivationFacts:
    """The learnable activations found by building every ACT2FN entry (imports torch)."""
    from torch import nn
    from transformers import activations

    found: list[tuple[str, str]] = []
    with quiet():
        for name in sorted(activations.ACT2FN):
            try:
                activation = activations.ACT2FN[name]
            except Exception:  # not buildable here: cannot hold parameters either
                continue
            if isinstance(activation, nn.Module) and any(True for _ in activation.parameters()):
                found.append((name, type(activation).__name__))
    return ActivationFacts(tuple(found), (str(Path(activations.__file__)),))
