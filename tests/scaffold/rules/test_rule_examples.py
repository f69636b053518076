"""Every rule's examples are exactly what the full pipeline does to the real model file.

For each `RuleExample` of each rule in `RULES`: the installed transformers file is analysed and parsed,
every rule before this one runs (in pipeline order), the definition `scope` must read as `before`; the
rule then runs and it must read as `after`. Examples are documentation (`scaffold rules`), so they must
also show a change and name one of the target models.
"""

from __future__ import annotations

import pytest

from scaffold.rules import RULES, Rule, RuleExample

from ..conftest import TARGETS
from .pipeline_states import example_source, module_after, module_before

CASES = [
    pytest.param(rule, example, id=f"{rule.CODE}-{example.model_type}-{example.scope}")
    for rule in RULES
    for example in rule.EXAMPLES
]


def test_every_rule_has_examples():
    missing = [f"{rule.CODE} {rule.NAME}" for rule in RULES if not 1 <= len(rule.EXAMPLES) <= 3]
    assert not missing, f"rules need 1-3 examples: {missing}"


@pytest.mark.parametrize(("rule", "example"), CASES)
def test_example_matches_the_pipeline(rule: type[Rule], example: RuleExample):
    assert example.model_type in TARGETS
    assert example.before != example.after, "an example must show the rule changing something"
    before = example_source(module_before(example.model_type, rule.CODE), example.scope)
    assert before == example.before, f"{rule.CODE}: the code before the rule differs from the example"
    after = example_source(module_after(example.model_type, rule.CODE), example.scope)
    assert after == example.after, f"{rule.CODE}: the rule's output differs from the example"
