"""Branches taken for one named non-eager attention implementation, read as the eager path
(`scaffold.analysis.implementation_branches`).

Oracle: hand-written expected code (the lines of what stays keep their numbers).
"""

from __future__ import annotations

from textwrap import dedent

import libcst as cst

from scaffold.analysis.implementation_branches import eager_branches

SOURCE = """
class ToyAttention(nn.Module):
    def forward(self, query, key, value, mask, output_attentions=False):
        if self.config._attn_implementation == "sdpa" and query.device.type == "cuda":
            query = query.contiguous()
        if mask is not None:
            if self.config._attn_implementation == "sdpa" and not output_attentions:
                out = sdpa(query, key, value, mask)
                weights = None
            else:
                weights = (query @ key.transpose(-1, -2) + mask).softmax(-1)
                out = weights @ value
        return out, weights
"""

EXPECTED = """
class ToyAttention(nn.Module):
    def forward(self, query, key, value, mask, output_attentions=False):


        if mask is not None:




            weights = (query @ key.transpose(-1, -2) + mask).softmax(-1)
            out = weights @ value
        return out, weights
"""


def _text(source: str) -> str:
    return dedent(source).strip("\n") + "\n"


def test_a_branch_for_another_implementation_gives_way_to_its_else_or_goes() -> None:
    result = eager_branches(cst.parse_module(_text(SOURCE))).code
    assert result == _text(EXPECTED)


def test_other_tests_are_left_as_they_are() -> None:
    """No-op cases: a test for eager itself, a disjunction (it may hold under eager), another attribute."""
    cases = [
        SOURCE.replace('"sdpa"', '"eager"'),
        SOURCE.replace('"sdpa" and', '"sdpa" or'),
        SOURCE.replace("self.config._attn_implementation", "self.config.implementation"),
    ]
    for source in cases:
        assert eager_branches(cst.parse_module(_text(source))).code == _text(source)
