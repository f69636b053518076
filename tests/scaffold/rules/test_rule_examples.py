"""Every rule's examples are exactly what the full pipeline does to the real model file.

For each `RuleExample` of each rule in `RULES`: the installed transformers file is analysed and parsed,
every rule before this one runs (in pipeline order), the definition `scope` must read as `before`; the
rule then runs and it must read as `after`. Examples are documentation (`scaffold rules`), so they must
also show a change and name one of the target models. Their texts live in scaffold/rules/examples/: every
folder there must belong to exactly one declared example, so none is left behind when an example goes.
"""

from __future__ import annotations

from importlib import resources

import pytest

from scaffold.rules import RULES, Rule, RuleExample
from scaffold.rules.base import AFTER_FILE, BEFORE_FILE, EXAMPLES_FOLDER, example_folder

from ..conftest import MOE_TARGETS, TARGETS
from .pipeline_states import example_source, module_after, module_before

CASES = [
    pytest.param(rule, example, id=f"{rule.CODE}-{example.model_type}-{example.scope}")
    for rule in RULES
    for example in rule.EXAMPLES
]


def test_every_rule_has_examples():
    missing = [f"{rule.CODE} {rule.NAME}" for rule in RULES if not 1 <= len(rule.EXAMPLES) <= 3]
    assert not missing, f"rules need 1-3 examples: {missing}"


def test_every_stored_example_is_declared_once():
    declared = [
        example_folder(rule.CODE, example.model_type, example.scope)
        for rule in RULES
        for example in rule.EXAMPLES
    ]
    stored = resources.files("scaffold.rules").joinpath(EXAMPLES_FOLDER)
    on_disk = {folder.name: sorted(item.name for item in folder.iterdir()) for folder in stored.iterdir()}
    assert sorted(declared) == sorted(set(declared)), "two examples share a folder"
    assert sorted(on_disk) == sorted(declared), "example folders and declared examples differ"
    assert all(names == sorted([AFTER_FILE, BEFORE_FILE]) for names in on_disk.values()), on_disk


@pytest.mark.parametrize(("rule", "example"), CASES)
def test_example_matches_the_pipeline(rule: type[Rule], example: RuleExample):
    assert example.model_type in TARGETS + MOE_TARGETS
    assert example.before != example.after, "an example must show the rule changing something"
    before = example_source(module_before(example.model_type, rule.CODE), example.scope)
    assert before == example.before, f"{rule.CODE}: the code before the rule differs from the example"
    after = example_source(module_after(example.model_type, rule.CODE), example.scope)
    assert after == example.after, f"{rule.CODE}: the rule's output differs from the example"
