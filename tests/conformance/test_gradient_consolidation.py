"""K/V replica bookkeeping of gradient consolidation, on hand-made shards whose layout is written out.

T = 4 ranks, 2 kv heads of size 1 (rows a, b), kv_size_multiplier m = 2: the tiled K is [a, b, a, b] and
rank r holds row r, so replicas are {rank 0, rank 2} for a and {rank 1, rank 3} for b.
"""

from __future__ import annotations

import torch

from conformance.comparisons.gradient_consolidation import kv_replica_disagreement, replicated_disagreement


def _spec(fuse_qkv: bool, multiplier: int = 2, bias: bool = False) -> list[dict]:
    fields = {
        "gqa_qkv_projection_name": "qkv_proj",
        "query_projection_name": "q_proj",
        "key_projection_name": "k_proj",
        "value_projection_name": "v_proj",
        "output_projection_name": "o_proj",
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "kv_size_multiplier": multiplier,
        "q_output_size_per_partition": 1,
        "kv_output_size_per_partition": 1,
        "fuse_qkv": fuse_qkv,
        "bias": bias,
    }
    return [
        {
            "module_fully_qualified_name": "layers.0.attn",
            "specs": [["GQAQKVColumnParallelLinearSpec", fields]],
        }
    ]


def _rows(*values: float) -> list[torch.Tensor]:
    return [torch.full((1, 3), v) for v in values]


def test_agreeing_replicas_give_zero() -> None:
    sharded = {
        "layers.0.attn.qkv_proj.weight_k": _rows(1, 2, 1, 2),
        "layers.0.attn.qkv_proj.weight_v": _rows(5, 6, 5, 6),
    }
    assert kv_replica_disagreement(sharded, _spec(False)) == {
        "layers.0.attn.k_proj.weight": 0.0,
        "layers.0.attn.v_proj.weight": 0.0,
    }


def test_a_replica_that_missed_the_kv_group_sum_is_measured() -> None:
    # Rank 2's copy of row a holds only its local part (0.25) instead of the all-reduced 1.0.
    sharded = {
        "layers.0.attn.qkv_proj.weight_k": _rows(1, 2, 0.25, 2),
        "layers.0.attn.qkv_proj.weight_v": _rows(5, 6, 5, 6),
        "layers.0.attn.qkv_proj.bias_k": [
            torch.tensor([1.0]),
            torch.tensor([2.0]),
            torch.tensor([1.0]),
            torch.tensor([3.0]),
        ],
        "layers.0.attn.qkv_proj.bias_v": [torch.tensor([0.0])] * 4,
    }
    spread = kv_replica_disagreement(sharded, _spec(False, bias=True))
    assert spread == {
        "layers.0.attn.k_proj.weight": 0.75,
        "layers.0.attn.v_proj.weight": 0.0,
        "layers.0.attn.k_proj.bias": 1.0,
        "layers.0.attn.v_proj.bias": 0.0,
    }


def test_fused_qkv_rows_are_split_before_comparing() -> None:
    # Per rank: [q | k | v] rows. Q rows differ freely (distinct heads); only v's replica 3 disagrees.
    shards = [
        torch.tensor([[10.0], [1.0], [5.0]]),
        torch.tensor([[11.0], [2.0], [6.0]]),
        torch.tensor([[12.0], [1.0], [5.0]]),
        torch.tensor([[13.0], [2.0], [6.5]]),
    ]
    spread = kv_replica_disagreement({"layers.0.attn.qkv_proj.weight_qkv": shards}, _spec(True))
    assert spread == {"layers.0.attn.k_proj.weight": 0.0, "layers.0.attn.v_proj.weight": 0.5}


def test_layers_without_replication_are_not_reported() -> None:
    sharded = {"layers.0.attn.qkv_proj.weight_k": _rows(1, 2), "layers.0.attn.qkv_proj.weight_v": _rows(3, 4)}
    assert kv_replica_disagreement(sharded, _spec(False, multiplier=1)) == {}
    other = [
        {
            "module_fully_qualified_name": "mlp",
            "specs": [["FusedLinearsSpec", {"fused_linear_name": "gate_up_proj"}]],
        }
    ]
    assert kv_replica_disagreement(sharded, other) == {}


def test_replicated_parameters_are_compared_across_ranks_and_sharded_ones_are_not() -> None:
    metadata = {
        "norm.weight": {"tensor_model_parallel": False},
        "bias": {"tensor_model_parallel": False},
        "proj.weight": {"tensor_model_parallel": True, "partition_dim": 0},
    }
    per_rank = [
        {"norm.weight": torch.tensor([1.0, 2.0]), "bias": torch.tensor([3.0]), "proj.weight": torch.ones(2)},
        {"norm.weight": torch.tensor([1.0, 2.5]), "bias": torch.tensor([3.0]), "proj.weight": torch.zeros(2)},
    ]
    assert replicated_disagreement(per_rank, metadata) == {"norm.weight": 0.5, "bias": 0.0}


def _key_norm_spec(projection: str) -> list[dict]:
    fields = {
        "parameter_names": ["k_norm.weight"],
        "projection": projection,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "kv_size_multiplier": 2,
    }
    return [{"module_fully_qualified_name": "layers.0.attn", "specs": [["HeadRowsSpec", fields]]}]


def test_a_key_norm_replica_that_missed_the_kv_group_sum_is_measured() -> None:
    # The key norm's weight tiles like K: [a, b, a, b] over the four ranks; rank 3's copy of b is partial.
    sharded = {
        "layers.0.attn.k_norm.weight": [
            torch.tensor([1.0]),
            torch.tensor([2.0]),
            torch.tensor([1.0]),
            torch.tensor([0.5]),
        ]
    }
    assert kv_replica_disagreement(sharded, _key_norm_spec("key")) == {"layers.0.attn.k_norm.weight": 1.5}
    # A query norm's entries are each held once: nothing to compare.
    assert kv_replica_disagreement(sharded, _key_norm_spec("query")) == {}
