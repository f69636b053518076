"""A head transform before the vocabulary projection (a replicated linear, marked for sequence parallelism)
and norms built by a conditional expression (an optional norm beside `nn.Identity()`, anything else
refused as R030), on the hand-written synthetic model: the expected roles and refusals are read off the
hand-written source."""

from __future__ import annotations

from pathlib import Path

import libcst as cst

from scaffold.analysis import analyze
from scaffold.blueprint import Blueprint, NormScope, Role
from scaffold.source import locate
from scaffold.syntax import rewrite_assigned_call

from .synthetic import model_source

HEAD = """

class Head(tnn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense = Dense(config.hidden_size, config.hidden_size, bias=False)
        self.norm = tnn.LayerNorm(config.hidden_size)

    def forward(self, x):
        return self.norm(F.gelu(self.dense(x)))
"""
CAUSAL_LM = """        self.out = Dense(config.hidden_size, config.vocab_size, bias=False)

    def forward(self, input_ids):
        return self.out(self.body(input_ids))"""
PLAIN_NORM = "self.n1 = Norm(config.hidden_size)"


def analyse(tmp_path: Path, text: str) -> Blueprint:
    path = tmp_path / "modeling_synthetic.py"
    path.write_text(text)
    return analyze(locate("llama", path))


def with_head(applied: str) -> str:
    text = model_source()
    assert CAUSAL_LM in text
    head_lm = CAUSAL_LM.replace(
        "        self.out =", "        self.head = Head(config)\n        self.out ="
    ).replace("return self.out(self.body(input_ids))", applied)
    return text.replace(CAUSAL_LM, head_lm) + HEAD


def codes(blueprint: Blueprint) -> set[str]:
    return {refusal.code for refusal in blueprint.refusals}


def test_a_head_transform_before_the_vocabulary_projection_is_replicated(tmp_path: Path) -> None:
    plain = analyse(tmp_path, model_source())
    blueprint = analyse(tmp_path, with_head("return self.out(self.head(self.body(input_ids)))"))
    assert codes(blueprint) == codes(plain)  # no R008 for head.dense
    dense = blueprint.site("head.dense")
    assert dense.role is Role.REPLICATED and "head transform" in dense.evidence
    assert blueprint.backbone.head_transforms == ("head",)
    assert blueprint.site("out").role is Role.LM_HEAD
    norm = next(norm for norm in blueprint.norms if norm.path == "head.norm")
    assert norm.scope is NormScope.HIDDEN


def test_a_module_not_chained_into_the_vocabulary_projection_is_no_head_transform(tmp_path: Path) -> None:
    blueprint = analyse(tmp_path, with_head("return self.out(self.body(input_ids))"))
    assert "R008" in codes(blueprint)
    assert blueprint.backbone.head_transforms == ()


def test_an_optional_torch_norm_beside_identity_is_a_hidden_norm(tmp_path: Path) -> None:
    text = model_source().replace(
        PLAIN_NORM, "self.n1 = tnn.LayerNorm(config.hidden_size) if index != 0 else tnn.Identity()"
    )
    blueprint = analyse(tmp_path, text)
    norm = next(norm for norm in blueprint.norms if norm.path.endswith(".n1"))
    assert (norm.norm_class, norm.scope) == ("torch.nn.LayerNorm", NormScope.HIDDEN)
    assert "R030" not in codes(blueprint)


def test_other_conditional_constructions_are_refused(tmp_path: Path) -> None:
    line = "self.n1 = tnn.LayerNorm(config.hidden_size) if index != 0 else Dense(4, 4)"
    text = model_source().replace(PLAIN_NORM, line)
    blueprint = analyse(tmp_path, text)
    (refusal,) = [refusal for refusal in blueprint.refusals if refusal.code == "R030"]
    expected = next(number for number, content in enumerate(text.splitlines(), 1) if line in content)
    assert refusal.location.line == expected and refusal.subject == "Block"


def test_an_optional_local_class_beside_none_is_no_conditional_module(tmp_path: Path) -> None:
    # granitemoe's `rotary_emb = RotaryEmbedding(config) if rope else None`: the child is the class it builds
    text = model_source().replace(PLAIN_NORM, "self.n1 = Norm(config.hidden_size) if index != 0 else None")
    blueprint = analyse(tmp_path, text)
    assert "R030" not in codes(blueprint)


def test_the_arm_that_builds_the_norm_is_rewritten() -> None:
    init = cst.parse_statement("def __init__(self):\n    self.n = nn.LayerNorm(4) if i else nn.Identity()\n")
    assert isinstance(init, cst.FunctionDef)

    def flagged(call: cst.Call) -> cst.Call:
        return call.with_changes(func=cst.Name("LayerNorm"))

    def is_norm(call: cst.Call) -> bool:
        return isinstance(call.func, cst.Attribute) and call.func.attr.value == "LayerNorm"

    result, found = rewrite_assigned_call(init, "n", flagged, arm=is_norm)
    assert found == 1
    assert cst.Module([result]).code == (
        "def __init__(self):\n    self.n = LayerNorm(4) if i else nn.Identity()\n"
    )
    unchanged, found = rewrite_assigned_call(init, "n", flagged)
    assert found == 0 and unchanged.deep_equals(init)
