"""Every precondition of a rule is a refusal decided in analysis, with its code, file:line, subject and the
rules it stops; `--allow-unsupported` then runs every rule to the end, leaving `TODO(<code>)` markers."""

from __future__ import annotations

from pathlib import Path

import pytest

from scaffold.analysis import analyze, analyze_model_type
from scaffold.emit import Request, emit_model
from scaffold.errors import ScaffoldError
from scaffold.source import locate

from .synthetic import model_source


def _refusals(model_type: str, code: str):
    return [refusal for refusal in analyze_model_type(model_type).refusals if refusal.code == code]


def test_a_cache_use_the_rule_cannot_remove_is_refused_where_it_is(tmp_path: Path):
    # A read of the cache the rule does not fold away (nemotron's flash attention class was one, until
    # the attention-class table stopped reaching it: scaffold.analysis.current_forms).
    forward = "    def forward(self, input_ids):\n        h = self.tok(input_ids)\n"
    assert forward in model_source()
    reading = (
        "    def forward(self, input_ids, past_key_values=None):\n"
        "        self.seen = past_key_values.get_seq_length()\n"  # a use: passing it on would be None
        "        h = self.tok(input_ids)\n"
    )
    blueprint, lines = _analyse(tmp_path, model_source().replace(forward, reading))
    (refusal,) = [r for r in blueprint.refusals if r.code == "R019"]
    assert refusal.rules == ("NXS002",) and refusal.subject == "LlamaModel.forward"
    assert lines[refusal.location.line - 1].lstrip().startswith("def forward(")
    assert "still reads past_key_values" in refusal.message


LOOP = "        for block in self.blocks:\n            h = block(h)\n"
UNROLLED = "        h = self.blocks[1](self.blocks[0](h))\n"


def test_a_forward_without_a_layer_loop_is_refused_where_it_is(tmp_path: Path):
    # exaone4 stopped with "NXS012: no call of a decoder layer inside a loop" before (its loop enumerates
    # the layers, which NXS012 now checkpoints too); layers called one by one have no loop to wrap.
    assert LOOP in model_source()
    blueprint, lines = _analyse(tmp_path, model_source().replace(LOOP, UNROLLED))
    (refusal,) = [r for r in blueprint.refusals if r.code == "R022"]
    assert refusal.subject == "LlamaModel" and refusal.rules == ("NXS012",)
    assert lines[refusal.location.line - 1].strip().startswith("def forward(")


def test_unsupported_mask_builders_are_refused():
    (refusal,) = _refusals("llama4_text", "R021")
    assert "create_chunked_causal_mask" in refusal.message and refusal.subject == "Llama4TextModel"


def test_refused_architectures_stop_with_every_code_before_any_rule(tmp_path: Path):
    path = tmp_path / "modeling_synthetic.py"
    path.write_text(model_source().replace(LOOP, UNROLLED))
    with pytest.raises(ScaffoldError) as caught:
        emit_model(Request("llama", source=path))
    assert "R022" in caught.value.message and "modeling_synthetic.py:" in caught.value.message
    assert "scaffold rules <code>" in (caught.value.hint or "")


@pytest.mark.slow
@pytest.mark.parametrize("model_type", ["bert", "gpt_neo", "olmoe"])
def test_allow_unsupported_runs_every_rule_and_marks_each_refusal(model_type: str):
    """bert stopped mid-pipeline with NXS002 and no file:line even after --allow-unsupported."""
    emitted = emit_model(Request(model_type, allow_unsupported=True))
    header = emitted.text.split("\n\n", 1)[0]
    for refusal in emitted.blueprint.refusals:
        assert f"TODO({refusal.code}) {refusal.location}:" in header
    marked = {code for _, line in emitted.todo_lines() for code in [line.split("TODO(", 1)[1][:4]]}
    blocking = {refusal.code for refusal in emitted.blueprint.refusals if refusal.rules}
    assert blocking <= marked  # the rules that could not convert left their markers where they stopped


def _analyse(tmp_path: Path, text: str):
    path = tmp_path / "modeling_synthetic.py"
    path.write_text(text)
    return analyze(locate("llama", path)), text.splitlines()


def test_a_class_inheriting_the_constructor_a_rule_rewrites_is_refused(tmp_path: Path):
    text = (
        model_source()
        .replace("class Block(tnn.Module):", "class BaseBlock(tnn.Module):")
        .replace(
            "\nclass LlamaModel(PreTrainedModel):",
            "\nclass Block(BaseBlock):\n    pass\n\n\nclass LlamaModel(PreTrainedModel):",
        )
    )
    blueprint, lines = _analyse(tmp_path, text)
    inherited = [r for r in blueprint.refusals if r.code == "R017"]
    assert {r.subject for r in inherited} == {"Block"}
    (constructor,) = [r for r in inherited if r.rules == ("NXS004",)]
    assert lines[constructor.location.line - 1] == "class Block(BaseBlock):"
    # its norms are built in the base class's __init__, which the norm rule does not rewrite either
    assert sorted(lines[r.location.line - 1].strip()[:12] for r in inherited if r.rules == ("NXS011",)) == [
        "self.n1 = No",
        "self.n2 = No",
    ]


def test_a_constructor_without_a_config_parameter_is_refused(tmp_path: Path):
    """R018 where NXS004 cannot give the constructor its callers' config."""
    text = (
        model_source()
        .replace(
            "class Feed(tnn.Module):\n    def __init__(self, config):",
            # `*rest`: NXS004 cannot put the callers' config first (it does where it can)
            "class Feed(tnn.Module):\n    def __init__(self, settings, *rest):",
        )
        .replace("config.intermediate_size", "settings.intermediate_size")
        .replace("self.p = Dense(config.hidden_size", "self.p = Dense(settings.hidden_size")
    )
    blueprint, lines = _analyse(tmp_path, text)
    refusals = [r for r in blueprint.refusals if r.code == "R018"]
    assert [(r.subject, r.rules) for r in refusals] == [("Feed", ("NXS004",))]
    assert lines[refusals[0].location.line - 1].strip() == "def __init__(self, settings, *rest):"
