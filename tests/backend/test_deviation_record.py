"""The reference backend notes the deviations it goes through, where it goes through them.

Oracle: the deviation table's own description of when the released stack behaves differently (a
`padding_idx` of 0, q/k/v biases on the GQA layer, K/V replication, the fused `weight_qkv`, a bf16 input
gradient reduced in fp32, a random bias init that is kept), exercised here on the layers at T=2 and
compared with the cases where nothing differs. Every id the backend's source notes is in the table.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from conformance.backends.reference import deviation_record
from conformance.backends.reference.deviations import DEVIATIONS
from conformance.tensor_parallel_run import run_tensor_parallel

BACKEND = Path(__file__).resolve().parents[2] / "conformance" / "backends" / "reference"


def _noted(build) -> list[str]:
    with deviation_record.recording() as found:
        build()
    return sorted(found)


def _embeddings() -> dict[str, list[str]]:
    from neuronx_distributed.parallel_layers.layers import ParallelEmbedding

    return {
        "padding 0": _noted(lambda: ParallelEmbedding(8, 4, padding_idx=0)),
        "padding 3": _noted(lambda: ParallelEmbedding(8, 4, padding_idx=3)),
        "no padding": _noted(lambda: ParallelEmbedding(8, 4)),
    }


def test_a_padding_index_of_zero_is_noted_and_another_is_not() -> None:
    found = run_tensor_parallel(_embeddings, 2)[0]
    assert found == {"padding 0": ["NXD-05"], "padding 3": [], "no padding": []}


def _gqa_layers() -> dict[str, list[str]]:
    from neuronx_distributed.modules.qkv_linear import GQAQKVColumnParallelLinear
    from neuronx_distributed.parallel_layers import parallel_state

    def forward_backward(**options) -> None:
        parallel_state.destroy_kv_group()
        layer = GQAQKVColumnParallelLinear(8, [8, 2], gather_output=False, **options)
        q, k, v = layer(torch.randn(3, 2, 8))
        (q.sum() + k.sum() + v.sum()).backward()

    return {
        "m=2, biases, fused": _noted(
            lambda: forward_backward(bias=True, kv_size_multiplier=2, fuse_qkv=True)
        ),
        "m=2, separate": _noted(lambda: forward_backward(bias=False, kv_size_multiplier=2, fuse_qkv=False)),
        "built only": _noted(
            lambda: (
                parallel_state.destroy_kv_group()
                or GQAQKVColumnParallelLinear(8, [8, 4], bias=False, kv_size_multiplier=1, fuse_qkv=False)
            )
        ),
    }


def test_the_gqa_layer_notes_biases_replication_fusion_and_its_backward() -> None:
    found = run_tensor_parallel(_gqa_layers, 2)[0]
    assert found["m=2, biases, fused"] == ["NXD-09", "NXD-10", "NXD-11", "NXD-12"]
    assert found["m=2, separate"] == ["NXD-11", "NXD-12"]
    assert found["built only"] == []  # no replication, no bias, no fusion, no backward: nothing differs


def _gqa_kv_groups() -> dict[str, list[str]]:
    """At T=4, layers whose random init is thrown away (as `from_pretrained` does): only the backward's
    kv-shared groups are left to differ by platform."""
    from neuronx_distributed.modules.qkv_linear import GQAQKVColumnParallelLinear
    from neuronx_distributed.parallel_layers import parallel_state

    def loaded_forward_backward(kv_size_multiplier: int) -> None:
        parallel_state.destroy_kv_group()
        with deviation_record.discarding_random_init():
            layer = GQAQKVColumnParallelLinear(
                8,
                [8, 2],
                bias=False,
                gather_output=False,
                kv_size_multiplier=kv_size_multiplier,
                fuse_qkv=False,
            )
        q, k, v = layer(torch.randn(3, 2, 8))
        (q.sum() + k.sum() + v.sum()).backward()

    return {
        "m=2 of T=4": _noted(lambda: loaded_forward_backward(2)),
        "m=4 of T=4": _noted(lambda: loaded_forward_backward(4)),
    }


def test_trn2_kv_groups_are_noted_only_where_they_pair_other_ranks() -> None:
    """NXD-11: TRN2's adjacent kv-shared groups differ from the tile layout's strided ones only when
    1 < m < T; with m = T both platforms form one group of every rank (and a loaded model never sees the
    platform's random-init layout)."""
    found = run_tensor_parallel(_gqa_kv_groups, 4)[0]
    assert found == {"m=2 of T=4": ["NXD-11", "NXD-12"], "m=4 of T=4": ["NXD-12"]}


def _column_backward() -> dict[str, list[str]]:
    from neuronx_distributed.parallel_layers.layers import ColumnParallelLinear

    def run(dtype: torch.dtype, sequence_parallel: bool) -> None:
        layer = ColumnParallelLinear(8, 8, bias=False, gather_output=False, dtype=dtype)
        layer.sequence_parallel_enabled = sequence_parallel
        x = torch.randn(2, 8, dtype=dtype, requires_grad=True)
        layer(x).sum().backward()

    return {
        "bf16": _noted(lambda: run(torch.bfloat16, False)),
        "fp32": _noted(lambda: run(torch.float32, False)),
    }


def test_a_bf16_input_gradient_reduced_in_fp32_is_noted() -> None:
    found = run_tensor_parallel(_column_backward, 2)[0]
    assert found == {"bf16": ["NXD-07"], "fp32": []}


def _biases() -> dict[str, list[str]]:
    from neuronx_distributed.parallel_layers.layers import ColumnParallelLinear, RowParallelLinear

    def build() -> None:
        ColumnParallelLinear(8, 8, bias=True, gather_output=False)
        RowParallelLinear(8, 8, bias=True, input_is_parallel=True)

    def discarded() -> None:
        with deviation_record.discarding_random_init():
            build()

    return {"kept": _noted(build), "discarded": _noted(discarded)}


def test_a_random_bias_init_is_noted_only_where_it_is_kept() -> None:
    found = run_tensor_parallel(_biases, 2)[0]
    assert found == {"kept": ["NXD-03"], "discarded": []}


def test_recording_restores_what_was_noted_before() -> None:
    deviation_record.clear()
    deviation_record.note("ON-11")
    with deviation_record.recording() as inner:
        deviation_record.note("NXD-05")
    assert inner == {"NXD-05"} and deviation_record.noted() == ("ON-11",)
    deviation_record.clear()


def test_every_noted_id_is_in_the_deviation_table() -> None:
    noted = set()
    for path in BACKEND.rglob("*.py"):
        noted |= set(re.findall(r'\bnote\("([A-Z]+-\d+)"\)', path.read_text()))
    assert noted and noted <= {deviation.id for deviation in DEVIATIONS}, noted - {d.id for d in DEVIATIONS}
    assert {"NXD-03", "NXD-05", "NXD-07", "NXD-09", "NXD-10", "NXD-11", "NXD-12", "ON-10", "ON-11"} <= noted
