"""The tree helpers the analysis and the rules share, on hand-written expressions."""

from __future__ import annotations

import libcst as cst
import pytest

from scaffold.syntax import absolute_name, code, laid_out, names_in, walk, with_arguments


def _call(text: str) -> cst.Call:
    node = cst.parse_expression(text)
    assert isinstance(node, cst.Call)
    return node


def test_a_short_call_stays_on_one_line_a_long_one_gets_a_trailing_comma() -> None:
    assert code(laid_out(_call("f(\n    a,\n    b\n)"))) == "f(a, b)"
    long = _call("f(" + ", ".join(f"argument_{n}" for n in range(9)) + ")")
    assert code(laid_out(long)).endswith("argument_8,)")  # ruff writes it one argument per line


def test_a_lone_generator_argument_never_gets_a_comma() -> None:
    text = "tuple(value for value in [hidden_states, None, all_hidden_states, all_self_attentions] if value is not None)"
    assert code(laid_out(_call(text))) == text
    compile(code(laid_out(_call(text))), "<test>", "eval")


def test_keywords_are_added_after_a_named_one_and_dropped() -> None:
    call = _call("build(config=config, cache=cache, x=x)")
    result = with_arguments(call, add=[("trn_config", cst.Name("trn"))], after="config", drop=["cache"])
    assert code(result) == "build(config=config, trn_config=trn, x=x)"
    spread = with_arguments(_call("build(x, **kwargs)"), add=[("flag", cst.Name("True"))])
    assert code(spread) == "build(x, flag=True, **kwargs)"


def test_names_in_reads_variables_not_attribute_or_keyword_names() -> None:
    assert names_in(cst.parse_expression("f(a.b, key=c)[d]")) == {"f", "a", "c", "d"}


def test_walk_is_source_order_parents_first() -> None:
    names = [node.value for node in walk(cst.parse_expression("a + b * c")) if isinstance(node, cst.Name)]
    assert names == ["a", "b", "c"]


def test_relative_names_resolve_against_the_package() -> None:
    assert absolute_name("...utils.x", "transformers.models.llama") == "transformers.utils.x"
    assert absolute_name("torch.nn", "anything") == "torch.nn"
    with pytest.raises(ValueError, match="leaves the package"):
        absolute_name("....x", "transformers.models.llama")
