"""What a rule run shares with the rule: the Blueprint, the options, and the imports it schedules.

A plain stand-in for libcst's codemod context: the rules need only its `scratch` dictionary, and
importing `libcst.codemod` costs more than a whole rule pass (it pulls in `libcst.matchers`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class RuleContext:
    """A rule run's scratch space (Blueprint, options, scheduled imports)."""

    scratch: dict[str, Any] = field(default_factory=dict)
