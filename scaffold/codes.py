"""Every code the scaffolder prints, documented from the code itself: the rules (NXS) and the refusals (R).

`scaffold rules [CODE]` prints it on the terminal; docs/codes.md is `render_markdown()` (regenerate it
with `python -m scaffold.codes > docs/codes.md`; tests/scaffold/test_codes_doc.py keeps it in sync).
"""

from __future__ import annotations

import sys

from .refusal_codes import ALL_CODES, RefusalCode, refusal_code
from .rules import RULES, Rule, dependents, rule_by_key
from .ruleset import RULESET_VERSION

DOC_PATH = "docs/codes.md"


def lookup(key: str) -> type[Rule] | RefusalCode:
    """The rule (code or name) or refusal code (code or name) `key` names (KeyError listing the known)."""
    for entry in ALL_CODES:
        if key.upper() == entry.code or key == entry.name:
            return entry
    try:
        return rule_by_key(key.upper() if key.upper().startswith("NXS") else key)
    except KeyError:
        known = ", ".join([*(rule.CODE for rule in RULES), *(entry.code for entry in ALL_CODES)])
        raise KeyError(f"unknown code {key!r}; known codes: {known}") from None


def rule_lines(rule: type[Rule]) -> list[str]:
    """A rule's description: what it does, what it builds on, what builds on it, what to do about it."""
    needed_by = ", ".join(other.CODE for other in dependents(rule.CODE)) or "none (it can be disabled)"
    return [
        f"{rule.CODE} {rule.NAME}: {rule.SUMMARY}",
        f"Builds on: {', '.join(rule.REQUIRES) or 'nothing'}. Built on by: {needed_by}.",
        f"What to do: {rule.ADVICE}",
    ]


def refusal_lines(entry: RefusalCode) -> list[str]:
    """A refusal code's description: why the construct cannot be converted and what to do about it."""
    return [
        f"{entry.code} {entry.name}: {entry.why}.",
        f"What to do: {entry.remedy}.",
        f"Decided in analysis, before any rule runs; --allow-unsupported writes TODO({entry.code}) markers "
        "instead of stopping.",
    ]


def render_markdown() -> str:
    """docs/codes.md: every rule in pipeline order with its examples' scopes, then every refusal code."""
    out = [
        "# Rule and refusal codes",
        "",
        f"Generated from the code by `python -m scaffold.codes > {DOC_PATH}` (rule set {RULESET_VERSION}); "
        "`scaffold rules <code>` prints the same on the terminal, with each rule's before/after examples.",
        "",
        "## Rules (NXS), in pipeline order",
        "",
        "Each rule is one libcst codemod pass. `--disable CODE` skips one, unless an enabled rule builds on it.",
        "",
    ]
    for rule in RULES:
        summary, builds, advice = rule_lines(rule)
        out += [f"### {rule.CODE} {rule.NAME}", "", summary.split(": ", 1)[1], "", builds, "", advice, ""]
        if rule.EXAMPLES:
            scopes = ", ".join(f"`{example.scope}` of {example.model_type}" for example in rule.EXAMPLES)
            out += [f"Examples: {scopes} (`scaffold rules {rule.CODE}`).", ""]
    out += [
        "## Refusals (R)",
        "",
        "A construct the rules cannot convert safely stops `scaffold new-model` with its code and file:line, "
        "before anything is written.",
        "",
    ]
    for entry in ALL_CODES:
        why, remedy, _ = refusal_lines(entry)
        out += [f"### {entry.code} {entry.name}", "", why.split(": ", 1)[1], "", remedy, ""]
    return "\n".join(out).rstrip("\n") + "\n"


def main() -> int:
    sys.stdout.write(render_markdown())
    return 0


__all__ = ["lookup", "refusal_code", "refusal_lines", "render_markdown", "rule_lines"]


if __name__ == "__main__":
    sys.exit(main())
