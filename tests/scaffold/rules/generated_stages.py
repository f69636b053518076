"""Parsed views of a target model's file at a stage of the rule pipeline.

Tests of one rule look at the module just after that rule, as the full pipeline produces it; the
pipeline runs once per model per session (the cache of `pipeline_states`, shared with the examples test).
"""

from __future__ import annotations

import ast

from scaffold.rules.base import definition_source

from .pipeline_states import module_after

__all__ = ["definition_after", "keyword", "method", "module_after", "normalized", "self_assignments"]


def definition_after(model_type: str, code: str, scope: str) -> ast.AST:
    """The parsed top-level definition `scope` after rule `code`."""
    return ast.parse(definition_source(module_after(model_type, code), scope)).body[0]


def method(cls: ast.ClassDef, name: str) -> ast.FunctionDef:
    (found,) = [node for node in cls.body if isinstance(node, ast.FunctionDef) and node.name == name]
    return found


def self_assignments(node: ast.AST, attribute: str) -> list[ast.Assign]:
    """Every `self.<attribute> = ...` under `node`."""
    return [
        n
        for n in ast.walk(node)
        if isinstance(n, ast.Assign)
        and len(n.targets) == 1
        and isinstance(n.targets[0], ast.Attribute)
        and isinstance(n.targets[0].value, ast.Name)
        and n.targets[0].value.id == "self"
        and n.targets[0].attr == attribute
    ]


def keyword(call: ast.Call, name: str) -> str:
    """The source of keyword argument `name` of `call` (KeyError when absent)."""
    for kw in call.keywords:
        if kw.arg == name:
            return ast.unparse(kw.value)
    raise KeyError(name)


def normalized(expression: str) -> str:
    """An expression's text as `ast.unparse` writes it (for comparisons with Blueprint sources)."""
    return ast.unparse(ast.parse(expression, mode="eval").body)
