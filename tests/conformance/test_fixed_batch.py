"""The fixed batch carries real training data (padding at both ends, packed sequences with restarting
`position_ids`, ignored labels), and what the checks assume about transformers on it holds. Oracles: the
layout written out by hand, and transformers' own model on the unpadded sequences."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM

from conformance.model_runs.fixed_batch import IGNORED, fixed_batch, pad_token_id
from reference_models import build, variant


def test_the_layout_is_the_documented_one() -> None:
    batch = fixed_batch(256, 16, pad_id=7)
    assert batch.attention_mask.tolist() == [[0] * 3 + [1] * 13, [1] * 11 + [0] * 5]
    assert batch.position_ids.tolist() == [
        [1, 1, 1, 0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5, 6, 7],  # left padding, then two packed sequences
        list(range(16)),
    ]
    padding = batch.attention_mask == 0
    assert bool((batch.input_ids[padding] == 7).all()) and not bool((batch.input_ids[~padding] == 7).any())
    ignored = (batch.labels == IGNORED).nonzero().tolist()
    assert ignored == [[0, 0], [0, 1], [0, 2], [0, 3], [0, 8], *([1, i] for i in range(11, 16))]
    assert torch.equal(batch.labels[batch.labels != IGNORED], batch.input_ids[batch.labels != IGNORED])
    assert batch.padded_tokens == 8


def test_what_each_model_is_given() -> None:
    batch = fixed_batch(256, 16, pad_id=0)
    honoured = batch.reference_inputs(honours_padding=True)
    assert torch.equal(honoured["attention_mask"], batch.attention_mask)
    assert torch.equal(
        batch.reference_inputs(honours_padding=False)["attention_mask"], torch.ones(2, 16, dtype=torch.long)
    )
    assert "position_ids" not in batch.reference_inputs(True, default_positions=True)
    assert set(batch.model_inputs(labels=False)) == {"input_ids", "attention_mask", "position_ids"}
    assert batch.compared_positions(True).sum() == 24 and bool(batch.compared_positions(False).all())


def test_a_model_updating_an_input_in_place_leaves_the_batch_as_it_was() -> None:
    # transformers' XGLM adds its position offset to `position_ids` in place: with the batch's own tensor,
    # every later forward (the next overfit step, the other model) got positions shifted again.
    batch = fixed_batch(256, 16, pad_id=0)
    expected = batch.position_ids.clone()
    for inputs in (batch.model_inputs(), batch.reference_inputs(honours_padding=True)):
        for tensor in inputs.values():
            tensor += 2
    assert torch.equal(batch.position_ids, expected)
    assert torch.equal(batch.model_inputs()["position_ids"], expected)


def test_the_pad_id_comes_from_the_config() -> None:
    assert pad_token_id(SimpleNamespace(vocab_size=256, pad_token_id=5, eos_token_id=2)) == 5
    assert pad_token_id(SimpleNamespace(vocab_size=256, pad_token_id=None, eos_token_id=[9, 4])) == 9
    assert pad_token_id(SimpleNamespace(vocab_size=256, pad_token_id=None, eos_token_id=None)) == 0


@pytest.fixture(scope="module")
def llama(checkpoint_cache: Path) -> torch.nn.Module:
    checkpoint = build(variant("llama/gqa"), checkpoint_cache)
    return AutoModelForCausalLM.from_pretrained(
        checkpoint, attn_implementation="eager", dtype=torch.float32
    ).eval()


def test_the_padding_mask_hides_the_padding_from_every_compared_position(llama: torch.nn.Module) -> None:
    """transformers given the padding mask computes, at the attended positions, what it computes on the
    rows without their padding: the positions the check compares do not depend on the pad tokens."""
    batch = fixed_batch(256, 16, pad_id=pad_token_id(llama.config))
    with torch.no_grad():
        padded = llama(**batch.reference_inputs(honours_padding=True, labels=False)).logits
        for row in range(2):
            keep = batch.attention_mask[row].bool()
            alone = llama(
                input_ids=batch.input_ids[row, keep][None],
                position_ids=batch.position_ids[row, keep][None],
                attention_mask=torch.ones(1, int(keep.sum()), dtype=torch.long),
            ).logits[0]
            torch.testing.assert_close(padded[row, keep], alone, atol=1e-5, rtol=0)


def test_transformers_infers_packed_sequences_only_without_a_mask(llama: torch.nn.Module) -> None:
    """Why the checks always give transformers a 2-D mask: with none (and no cache, as in training),
    transformers 4.57 reads packed sequences from `position_ids` and attends within each one, which
    optimum-neuron's masks never do."""
    batch = fixed_batch(256, 16, pad_id=pad_token_id(llama.config))
    inputs = batch.reference_inputs(honours_padding=False, labels=False)
    with torch.no_grad():
        causal = llama(**inputs).logits
        inferred = llama(
            input_ids=inputs["input_ids"], position_ids=inputs["position_ids"], use_cache=False
        ).logits
    second_sequence = slice(8, 16)  # row 0's second packed sequence attends to the first one, or not
    assert (causal[0, second_sequence] - inferred[0, second_sequence]).abs().max() > 1e-3
    torch.testing.assert_close(causal[1], inferred[1], atol=1e-6, rtol=0)  # row 1 is one sequence
