"""The code the rules insert follows the target file's own style: no `Optional[X]` next to `X | None`, no
`torch.nn.` next to `nn.`, and one init method per constructor (as optimum-neuron's hand-written models)."""

from __future__ import annotations

import ast

import pytest

from ..conftest import TARGETS
from .pipeline_states import module_after

FINAL = "NXS030"


def _annotations(tree: ast.Module) -> list[ast.expr]:
    found: list[ast.expr] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.arg) and node.annotation is not None:
            found.append(node.annotation)
        elif isinstance(node, ast.FunctionDef) and node.returns is not None:
            found.append(node.returns)
        elif isinstance(node, ast.AnnAssign):
            found.append(node.annotation)
    return found


@pytest.mark.parametrize("model_type", TARGETS)
def test_one_optional_style_and_one_spelling_of_torch_nn(model_type: str) -> None:
    tree = ast.parse(module_after(model_type, FINAL).code)
    annotations = _annotations(tree)
    optional = any("Optional[" in ast.unparse(a) for a in annotations)
    union_none = any(
        isinstance(n, ast.BinOp) and isinstance(n.op, ast.BitOr) and ast.unparse(n.right) == "None"
        for a in annotations
        for n in ast.walk(a)
    )
    assert optional != union_none, "mixed Optional[X] and X | None"
    binds_nn = any(
        isinstance(n, ast.ImportFrom) and n.module == "torch" and any(a.name == "nn" for a in n.names)
        for n in tree.body
    )
    spelled_torch_nn = [
        ast.unparse(n)
        for n in ast.walk(tree)
        if isinstance(n, ast.Attribute) and ast.unparse(n).startswith("torch.nn.")
    ]
    assert not (binds_nn and spelled_torch_nn), f"nn. and torch.nn. mixed: {spelled_torch_nn[:3]}"


@pytest.mark.parametrize("model_type", TARGETS)
def test_each_constructor_computes_its_init_method_once(model_type: str) -> None:
    tree = ast.parse(module_after(model_type, FINAL).code)
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
        for init in (n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"):
            text = ast.unparse(init)
            bindings = text.count("init_method = partial(_init_normal,")
            uses = text.count("init_method=init_method")
            assert bindings == (1 if uses else 0), cls.name
            assert "init_method=partial(" not in text, cls.name
            if uses:  # bound before its first use
                assert text.index("init_method = partial(") < text.index("init_method=init_method")
