"""A class named only as the type of an `if isinstance(...)` branch is not a dependency (type_tests.py).

Oracles: hand-written snippets and the names/code a reader expects of them; the installed gemma3n file
for the closure (its shared `_init_weights` type-tests audio classes that the text model never builds).
"""

from __future__ import annotations

from pathlib import Path
from textwrap import dedent

import libcst as cst
import transformers

from scaffold.analysis.classes import map_module
from scaffold.type_tests import branch_only_type_tests, isinstance_class, without_type_tests

INIT = """
def _init_weights(self, module):
    super()._init_weights(module)
    if isinstance(module, Audio):
        module.weight.data.fill_(1.0)
    # the scale starts at zero
    elif isinstance(module, Text):
        module.scale.data.zero_()
    elif isinstance(module, (Norm, Audio2)):
        module.weight.data.zero_()
"""


def _function(text: str) -> cst.FunctionDef:
    statement = cst.parse_module(dedent(text)).body[0]
    assert isinstance(statement, cst.FunctionDef)
    return statement


def test_the_type_tested_class_is_a_plain_name_in_second_position():
    assert isinstance_class(cst.parse_expression("isinstance(module, Audio)")) == "Audio"
    assert isinstance_class(cst.parse_expression("isinstance(module, nn.Linear)")) is None
    assert isinstance_class(cst.parse_expression("isinstance(module, (A, B))")) is None
    assert isinstance_class(cst.parse_expression("issubclass(module, A)")) is None


def test_only_names_used_nowhere_but_in_branch_tests_are_type_tests():
    # Norm and Audio2 sit in a tuple (not a single-class branch): they stay dependencies.
    assert branch_only_type_tests(_function(INIT)) == {"Audio", "Text"}
    built_too = INIT + "    self.extra = Text(config)\n"
    assert branch_only_type_tests(_function(built_too)) == {"Audio"}
    in_expression = "def f(m):\n    return isinstance(m, Audio) and m.on\n"
    assert branch_only_type_tests(_function(in_expression)) == set()


def test_a_dropped_class_takes_its_branch_along():
    dropped = without_type_tests(_function(INIT), frozenset({"Audio", "Audio2"}))
    expected = """
def _init_weights(self, module):
    super()._init_weights(module)
    # the scale starts at zero
    if isinstance(module, Text):
        module.scale.data.zero_()
    elif isinstance(module, (Norm, Audio2)):
        module.weight.data.zero_()
"""
    assert cst.Module(body=[dropped]).code == dedent(expected).lstrip()


def test_an_elif_goes_from_the_chain_and_an_else_or_nothing_replaces_a_lone_branch():
    chain = without_type_tests(_function(INIT), frozenset({"Text"}))
    assert "Text" not in cst.Module(body=[chain]).code
    assert "elif isinstance(module, (Norm, Audio2)):" in cst.Module(body=[chain]).code
    with_else = "def f(m):\n    if isinstance(m, A):\n        a()\n    else:\n        b()\n"
    assert cst.Module(body=[without_type_tests(_function(with_else), frozenset({"A"}))]).code == (
        "def f(m):\n    b()\n"
    )
    alone = "def f(m):\n    if isinstance(m, A):\n        a()\n"
    assert cst.Module(body=[without_type_tests(_function(alone), frozenset({"A"}))]).code == (
        "def f(m):\n    pass\n"
    )
    assert without_type_tests(_function(alone), frozenset({"B"})).deep_equals(_function(alone))


def test_the_closure_does_not_follow_a_type_test():
    module = cst.parse_module(
        dedent(
            """
            class Audio:
                pass

            class Text:
                pass

            class PreTrained:
                def _init_weights(self, module):
                    if isinstance(module, Audio):
                        pass

            class Model(PreTrained):
                def __init__(self):
                    self.text = Text()
            """
        )
    )
    assert map_module(module).closure(["Model"]) == ["Text", "PreTrained", "Model"]


def test_the_gemma3n_text_closure_holds_no_audio_class():
    path = Path(transformers.__file__).parent / "models" / "gemma3n" / "modeling_gemma3n.py"
    module = cst.parse_module(path.read_text(encoding="utf-8"))
    closure = map_module(module).closure(["Gemma3nTextModel", "Gemma3nForCausalLM"])
    assert "Gemma3nTextAttention" in closure
    assert not [name for name in closure if name.startswith("Gemma3nAudio")]
