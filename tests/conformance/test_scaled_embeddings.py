"""A scaled word embedding rebased on ParallelEmbedding (NXS010) against transformers: gemma3_text's
`Gemma3TextScaledWordEmbedding` keeps its scale on the vocab-parallel lookup, with and without sequence
parallelism; dropping the scale from the generated class fails parity at the embedding itself.

The oracle is transformers' model on the same checkpoint (inside the parity check).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from conformance.checks import RunSettings
from conformance.checks.parity import CHECK, ParityConfig
from conformance.results import Status

UNSCALED = (
    "return super().forward(input_ids) * self.embed_scale.to(self.weight.dtype)",
    "return super().forward(input_ids)",
)
CONFIGURATIONS = [
    ParityConfig("gemma3_text/gqa", 2),
    ParityConfig("gemma3_text/gqa", 2, sequence_parallel=True),
    ParityConfig("gemma3_text/tied", 2, sequence_parallel=True),
]


pytestmark = pytest.mark.slow  # two launcher calls on a model built for the test (about 45 s on 2 cores)


@pytest.fixture
def settings(checkpoint_cache: Path) -> RunSettings:
    return RunSettings(cache_dir=checkpoint_cache)


def test_the_scaled_parallel_embedding_matches_transformers(
    generated: Callable[[str], Path], settings: RunSettings
) -> None:
    package = generated("gemma3_text")
    modeling = (package / "modeling_gemma3_text.py").read_text()
    assert "class Gemma3TextScaledWordEmbedding(ParallelEmbedding):" in modeling
    for result in CHECK.run(package, CONFIGURATIONS, settings):
        assert result.status is Status.PASS, (result.label, result.reasons)


def test_an_embedding_without_its_scale_fails_at_the_embedding(
    broken_copy: Callable[[str, list[tuple[str, str]]], Path], settings: RunSettings
) -> None:
    package = broken_copy("gemma3_text", [UNSCALED])
    (result,) = CHECK.run(package, CONFIGURATIONS[1:2], settings)
    assert result.status is Status.FAIL
    assert result.figures["first_divergent_module"] == "model.embed_tokens"
    assert result.reasons[0].startswith("the forward first departs from transformers at model.embed_tokens")
