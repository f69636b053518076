"""Token embeddings built from a local `nn.Embedding` subclass: a scaled lookup is accepted (NXS010 rebases
it on ParallelEmbedding), any other token-embedding subclass stays refused (R012) at the line that builds it;
learned positions held by the base model are kept whole."""

from __future__ import annotations

from pathlib import Path

import pytest

from scaffold.analysis import analyze
from scaffold.blueprint import Blueprint, Role
from scaffold.source import locate

from .conftest import blueprint_of
from .synthetic import marked_line, model_source

PLAIN_EMBEDDING = "self.tok = tnn.Embedding(config.vocab_size, config.hidden_size)"
SUBCLASS_EMBEDDING = "self.tok = Table(config.vocab_size, config.hidden_size, 8.0)  # <-"

SCALED = '''

class Table(tnn.Embedding):
    """A scaled word embedding, written as transformers writes them."""

    def __init__(self, rows: int, width: int, scale: float = 1.0):
        super().__init__(rows, width)
        self.register_buffer("scale", torch.tensor(scale), persistent=False)

    def forward(self, ids: torch.Tensor):
        return super().forward(ids) * self.scale.to(self.weight.dtype)
'''


def source_with(table: str) -> str:
    text = model_source()
    assert PLAIN_EMBEDDING in text
    header_end = text.index("\nclass Mixer")
    return text[:header_end] + table + text[header_end:].replace(PLAIN_EMBEDDING, SUBCLASS_EMBEDDING)


def analyse(tmp_path: Path, text: str) -> Blueprint:
    path = tmp_path / "modeling_synthetic.py"
    path.write_text(text)
    return analyze(locate("llama", path))


def test_a_scaled_lookup_subclass_is_the_token_embedding(tmp_path: Path):
    blueprint = analyse(tmp_path, source_with(SCALED))
    plain = analyse(tmp_path, model_source())  # the synthetic forwards are refused by other rules' checks
    assert "R012" not in {refusal.code for refusal in blueprint.refusals}
    assert {r.code for r in blueprint.refusals} == {r.code for r in plain.refusals}
    embedding = blueprint.site("body.tok")
    assert (embedding.role, embedding.constructor) == (Role.EMBEDDING, "Table")


@pytest.mark.parametrize(
    ("what", "old", "new"),
    [
        (
            "shifted ids (learned positions with an offset)",
            "super().forward(ids)",
            "super().forward(ids + 2)",
        ),
        ("a read of the table's values", "self.weight.dtype", "self.weight.sum()"),
        (
            "a parameter of its own",
            'self.register_buffer("scale", torch.tensor(scale), persistent=False)',
            "self.scale = tnn.Parameter(torch.tensor(scale))",
        ),
        ("a second input", "def forward(self, ids: torch.Tensor):", "def forward(self, ids, offset):"),
        ("another method", "    def forward(", "    def extra(self):\n        return 1\n\n    def forward("),
    ],
)
def test_other_embedding_subclasses_stay_refused(tmp_path: Path, what: str, old: str, new: str):
    assert old in SCALED, what
    text = source_with(SCALED.replace(old, new))
    refusals = [refusal for refusal in analyse(tmp_path, text).refusals if refusal.code == "R012"]
    assert [refusal.location.line for refusal in refusals] == [marked_line(text)], what
    assert "Table, a subclass of a torch layer with its own forward" in refusals[0].message


def test_real_scaled_word_embeddings_and_learned_positions_are_accepted():
    # gemma3_text's only blockers were its scaled embedding and its copied mask arguments (R021).
    gemma3 = blueprint_of("gemma3_text")
    assert gemma3.refusals == ()
    assert gemma3.site("model.embed_tokens").constructor == "Gemma3TextScaledWordEmbedding"
    # biogpt: the scaled word embedding passes, and so do the learned positions (ids shifted by an offset),
    # a table not sized by the vocabulary that the base model holds and that trains nothing else: kept whole.
    biogpt = blueprint_of("biogpt")
    assert not [refusal for refusal in biogpt.refusals if refusal.code == "R012"]
    assert biogpt.backbone.positions == ("biogpt.embed_positions",)
    assert biogpt.site("biogpt.embed_positions").role.value == "replicated"
