"""Every logits layout a valid model may return is recognised and compared.

A tensor-parallel causal LM returns either its vocab-parallel shard (B, S, V/T) on each rank, or the full
vocabulary (B, S, V) on every rank (a replicated `lm_head`, or one that gathers its output). Oracle for the
layouts: hand-made tensors on two ranks, whose gathered result is written out here. End to end: a copy of
the generated llama whose `lm_head` gathers its output and whose loss is torch's cross entropy over the
full vocabulary is a valid model; it passes parity, topology_change and lora_round_trip, which used to
fail it with "logits must be (batch, sequence, vocab/T)".
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from conformance.checks import RunSettings
from conformance.checks.lora_round_trip import CHECK as LORA
from conformance.checks.lora_round_trip import LoraConfig
from conformance.checks.parity import CHECK as PARITY
from conformance.checks.parity import ParityConfig
from conformance.checks.topology_change import CHECK as TOPOLOGY
from conformance.checks.topology_change import TopologyConfig
from conformance.results import Status
from conformance.tensor_parallel_run import run_tensor_parallel

REPLICATED_LM_HEAD = [
    (
        "            config.vocab_size,\n            bias=False,\n            gather_output=False,",
        "            config.vocab_size,\n            bias=False,\n            gather_output=True,",
    ),
    (
        "loss = ForCausalLMLoss(logits=logits, labels=labels, vocab_size=self.vocab_size, **kwargs)",
        "loss = torch.nn.functional.cross_entropy(logits[..., :-1, :].reshape(-1, logits.shape[-1]).float(), "
        "labels[..., 1:].reshape(-1), ignore_index=-100)",
    ),
]


def _layouts() -> dict[str, object]:
    from neuronx_distributed.parallel_layers.parallel_state import get_tensor_model_parallel_rank

    from conformance.model_runs.logits import LogitsLayoutError, full_vocabulary_logits

    rank = get_tensor_model_parallel_rank()
    vocab = torch.arange(2 * 3 * 8, dtype=torch.float32).reshape(2, 3, 8)
    found: dict[str, object] = {}
    sharded = full_vocabulary_logits(vocab[..., rank * 4 : (rank + 1) * 4], 8)
    found["shards"] = (sharded.layout, torch.equal(sharded.logits, vocab), sharded.local_shape)
    replicated = full_vocabulary_logits(vocab.clone(), 8)
    found["replicated"] = (
        replicated.layout,
        torch.equal(replicated.logits, vocab),
        replicated.replica_spread,
    )
    drifting = full_vocabulary_logits(vocab + rank * 0.5, 8)
    found["drifting"] = drifting.replica_spread
    try:
        full_vocabulary_logits(vocab[..., :3], 8)
    except LogitsLayoutError as error:
        found["neither"] = str(error)
    return found


def test_shards_and_the_full_vocabulary_are_recognised_and_anything_else_is_named() -> None:
    found = run_tensor_parallel(_layouts, 2)[0]
    assert found["shards"] == ("vocab-parallel", True, (2, 3, 4))
    assert found["replicated"] == ("replicated", True, 0.0)
    assert found["drifting"] == 0.5  # the ranks' full logits disagree: parity names it
    assert found["neither"] == (
        "logits have shape (2, 3, 3) on each of the 2 ranks: neither the vocab-parallel shard "
        "(batch, sequence, 8/2) nor the full vocabulary (batch, sequence, 8)"
    )


@pytest.fixture
def replicated_llama(broken_copy: Callable[[str, list[tuple[str, str]]], Path]) -> Path:
    return broken_copy("llama", REPLICATED_LM_HEAD)


def test_a_replicated_lm_head_passes_parity_topology_change_and_lora(
    replicated_llama: Path, checkpoint_cache: Path
) -> None:
    settings = RunSettings(cache_dir=checkpoint_cache)
    parity = PARITY.run(
        replicated_llama, [ParityConfig("llama/gqa", 1), ParityConfig("llama/gqa", 2)], settings
    )
    assert [r.status for r in parity] == [Status.PASS, Status.PASS], [r.reasons for r in parity]
    assert [r.figures["logits_layout"] for r in parity] == ["vocab-parallel", "replicated"]
    assert parity[1].figures["local_logits_shape"] == [2, 16, 256]
    assert parity[1].figures["logits_max_abs_diff"] <= 1e-5
    (topology,) = TOPOLOGY.run(replicated_llama, [TopologyConfig("llama/gqa", 2, 1)], settings)
    assert topology.status is Status.PASS, topology.reasons
    (lora,) = LORA.run(replicated_llama, [LoraConfig("llama/gqa", 2)], settings)
    assert lora.status is Status.PASS, lora.reasons
