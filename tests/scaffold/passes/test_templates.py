"""The code templates (templates/code/*.py): real Python, each template fills, and filled code follows the
target file's style."""

from __future__ import annotations

import re

import libcst as cst
import pytest

from scaffold.blueprint import CodeStyle
from scaffold.rules import templates
from scaffold.syntax import code

CASES = [(file, name) for file, names in templates.all_template_names().items() for name in names]


@pytest.mark.parametrize(("file", "name"), CASES, ids=[f"{file}.{name}" for file, name in CASES])
def test_every_template_fills_with_any_expression(file: str, name: str) -> None:
    found = templates.template(file, name)
    placeholders = {p: cst.Name(f"filled_{p}") for p in re.findall(r"\{(\w+)\}", found.text)}
    if found.parameters:
        params, _ = templates.fill_parameters(file, name, CodeStyle())
        assert params
    elif found.expression:
        expression, _ = templates.fill_expression(file, name, CodeStyle(), **placeholders)
        assert all(f"filled_{p}" in code(expression) for p in placeholders)
    else:
        statements, _ = templates.fill_statements(file, name, CodeStyle(), **placeholders)
        text = cst.Module(body=statements).code
        assert all(f"filled_{p}" in text for p in placeholders) and "{" not in text.replace("{}", "")


def test_every_template_module_is_valid_python_in_the_linted_tree() -> None:
    assert templates.TEMPLATE_DIR.name == "code" and templates.TEMPLATE_DIR.parent.name == "templates"
    for path in sorted(templates.TEMPLATE_DIR.glob("*.py")):
        compile(path.read_text(), str(path), "exec")  # placeholders read as one-element sets


def test_filled_code_follows_the_files_style_and_reports_its_imports() -> None:
    plain, needed = templates.fill_statements(
        "neuron_flash_attention", "flash_attention_function", CodeStyle()
    )
    text = cst.Module(body=plain).code
    assert "attention_mask: torch.Tensor | None," in text and "module: nn.Module," in text
    assert {(n.module, n.name) for n in needed} >= {
        ("neuronx_distributed.kernels.flash_attn", "nki_flash_attn_func"),
        ("torch", "nn"),
        ("torch", None),
    }
    old_style, needed = templates.fill_statements(
        "neuron_flash_attention", "flash_attention_function", CodeStyle(optional=True, nn_alias=False)
    )
    text = cst.Module(body=old_style).code
    assert (
        "attention_mask: Optional[torch.Tensor]," in text and "sliding_window: Optional[int] = None," in text
    )
    assert "module: torch.nn.Module," in text and "torch.nn.functional.dropout(" in text
    assert " nn." not in text.replace("torch.nn.", "") and "| None" not in text
    assert ("typing", "Optional") in {(n.module, n.name) for n in needed}
    assert ("torch", "nn") not in {(n.module, n.name) for n in needed}


def test_renames_reach_bound_names_and_attributes_only() -> None:
    (statement,), _ = templates.fill_statements(
        "attention_variants",
        "projections",
        CodeStyle(),
        renames={"query_states": "q", "key_states": "k", "value_states": "v"},
        attributes={"q_proj": "wq", "k_proj": "wk", "v_proj": "wv"},
        hidden_states=cst.Name("x"),
    )
    text = code(statement)
    assert "q, k, v = self.qkv_proj(x).split(self.split_size, dim=-1)" in text
    assert "q = self.wq(x)" in text and "self.num_key_value_heads" in text  # attribute names kept
