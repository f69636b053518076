"""The code NXS012 inserts after a lookup of learned absolute positions, run on the ranks against the dense
sum of token and position embeddings.

Each rank holds the hidden stream as sequence parallelism lays it out, `(S/T, B, D)` (the token embeddings'
rows of its sequence shard), looks the positions up for the whole sequence in its replica of the table, runs
the inserted statements (filled from `templates/code/base_model_forward.py` exactly as the rule fills them)
and adds the result to its shard. Oracle: the dense `tokens + table[position_ids]` and the dense table
gradient. Every rank's table must get the whole gradient (the table is replicated, and optimum-neuron's
optimizer does not sum it over TP). The negative case, a local slice of the positions instead of the
scatter, gives the right sum but each rank only its own shard's gradient: the check can fail.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace
from typing import Any

import libcst as cst
import pytest
import torch

from conformance.tensor_parallel_run import run_tensor_parallel
from scaffold.blueprint import CodeStyle
from scaffold.rules import templates

B, S, D, POSITIONS = 2, 8, 6, 12
CASES = [
    {"tp": tp, "sp": sp, "kind": kind}
    for tp in (2, 4)
    for sp, kind in ((True, "template"), (False, "template"), (True, "local-slice"))
]


def _inserted_code() -> str:
    statements, _ = templates.fill_statements(
        "base_model_forward", "positions_in_stream_layout", CodeStyle(), renames={"position_embeds": "pos"}
    )
    body = "".join(cst.Module(body=[statement]).code for statement in statements)
    indented = "".join(f"    {line}\n" for line in body.splitlines())
    return f"def layout(self, pos):\n{indented}    return pos\n"


def _data() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    return {
        "tokens": torch.randn(B, S, D, generator=generator),
        "table": torch.randn(POSITIONS, D, generator=generator),
        "position_ids": torch.stack([torch.arange(S), torch.arange(S).flip(0) + 2]),  # packed / shifted
        "grad": torch.randn(B, S, D, generator=generator),
    }


def _run(cases: list[dict[str, Any]], code: str) -> list[dict[str, Any]]:
    from neuronx_distributed.parallel_layers import mappings
    from neuronx_distributed.parallel_layers import parallel_state as ps

    world, rank = ps.get_tensor_model_parallel_size(), ps.get_tensor_model_parallel_rank()
    namespace: dict[str, Any] = {
        "scatter_to_sequence_parallel_region": mappings.scatter_to_sequence_parallel_region
    }
    exec(code, namespace)  # the rule's own filled template
    layout = namespace["layout"]
    results = []
    for case in cases:
        data = _data()
        table = torch.nn.Embedding(POSITIONS, D)
        with torch.no_grad():
            table.weight.copy_(data["table"])
        stream, grad = data["tokens"], data["grad"]
        if case["sp"]:
            stream = stream.transpose(0, 1).chunk(world, 0)[rank]
            grad = grad.transpose(0, 1).chunk(world, 0)[rank]
        positions = table(data["position_ids"])
        if case["kind"] == "template":
            trn_config = SimpleNamespace(sequence_parallel_enabled=case["sp"])
            positions = layout(SimpleNamespace(trn_config=trn_config), positions)
        else:  # the mistake: each rank keeps its slice, with no collective in the backward
            positions = positions.transpose(0, 1).chunk(world, 0)[rank]
        hidden = stream + positions
        hidden.backward(grad)
        results.append({"hidden": hidden.detach(), "table_grad": table.weight.grad.clone()})
    return results


@functools.cache
def _results(tp: int) -> list[list[dict[str, Any]]]:
    cases = [case for case in CASES if case["tp"] == tp]
    return run_tensor_parallel(_run, tp, cases, _inserted_code(), timeout=300)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"T{c['tp']}-{'sp' if c['sp'] else 'nosp'}-{c['kind']}")
def test_positions_in_the_stream_layout_match_the_dense_sum(case: dict[str, Any]) -> None:
    index = [c for c in CASES if c["tp"] == case["tp"]].index(case)
    ranks = [rank_results[index] for rank_results in _results(case["tp"])]
    data = _data()
    table = data["table"].clone().requires_grad_()
    dense = data["tokens"] + table[data["position_ids"]]
    dense.backward(data["grad"])
    if case["sp"]:
        hidden = torch.cat([rank["hidden"] for rank in ranks], 0).transpose(0, 1)
    else:
        hidden = ranks[0]["hidden"]
        for rank in ranks:
            torch.testing.assert_close(rank["hidden"], hidden)
    torch.testing.assert_close(hidden, dense.detach())
    if case["kind"] == "local-slice":
        assert not any(torch.allclose(rank["table_grad"], table.grad) for rank in ranks)
        return
    for rank in ranks:
        torch.testing.assert_close(rank["table_grad"], table.grad)
