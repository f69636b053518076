"""The version of the rule set: the one number that says "the same rules produce the same code".

Bump `RULESET_VERSION` whenever a change to any rule (or to emission) changes generated output. It is
written into every generated file's header and answers file, so a committed model says which rule set
made it, and `scaffold check` / `scaffold update` can tell a regeneration apart from a hand edit.
The golden-file test (tests/scaffold/test_golden.py) fails on any output change as a reminder.
"""

from __future__ import annotations

RULESET_VERSION = 2
