"""`HeadRowsSpec` of `templates/modules/attention_norm_weights.py` against the released GQA spec.

A q/k norm's parameters follow the heads of their projection. Under NxD's GQA layer the released
optimum-neuron 0.4.5 `GQAQKVColumnParallelLinearSpec` decides which checkpoint rows of `q_proj` and `k_proj`
each rank holds; the oracle is that spec applied to a projection weight whose row `i` holds the value `i`:
the rank's norm entries must be the entries of exactly those rows (a full-width weight of `heads * head_dim`
values, or one row of `head_dim` values per head). Consolidating every rank's part gives the checkpoint
tensor back, bit for bit, also through `ModelWeightTransformationSpecs.from_metadata` (the class is found
by name once the module is imported).
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch

from conformance.backends import activate

activate("reference")

from conformance.backends.reference.neuronx_distributed.parallel_layers import parallel_state  # noqa: E402

from .oracle_optimum_neuron import ORACLE_PACKAGE, load_oracle  # noqa: E402

TEMPLATE = Path(__file__).resolve().parents[2] / "templates" / "modules" / "attention_norm_weights.py"
HEAD_DIM = 3
# (query heads, K/V heads, TP size, kv_size_multiplier): GQA layouts NxD's layer takes (KV * m divisible by T).
LAYOUTS = [(8, 2, 4, 2), (8, 1, 4, 4), (4, 2, 4, 2), (16, 4, 8, 2), (8, 2, 8, 4), (6, 3, 2, 2)]

oracle = load_oracle()


def _template(host_package: str) -> ModuleType:
    name = f"{host_package}.norm_template.attention_norm_weights"
    if name not in sys.modules:
        importlib.import_module(host_package)
        package = ModuleType(f"{host_package}.norm_template")
        package.__path__ = [str(TEMPLATE.parent)]
        sys.modules[package.__name__] = package
    return importlib.import_module(name)


template = _template(f"{ORACLE_PACKAGE}.models.training")


@contextlib.contextmanager
def tp_rank(size: int, rank: int) -> Iterator[None]:
    """Pretend to be TP rank `rank` of `size` in this process."""
    parallel_state.set_tensor_model_parallel_size(size)
    parallel_state.set_tensor_model_parallel_rank(rank)
    try:
        yield
    finally:
        parallel_state.set_tensor_model_parallel_size(None)
        parallel_state.set_tensor_model_parallel_rank(None)


def _oracle_rows(
    projection: str, heads: int, kv_heads: int, tp: int, m: int, head_dim: int = HEAD_DIM
) -> list[torch.Tensor]:
    """Per rank: the checkpoint rows of the projection the released spec gives it (row i holds i)."""
    gqa = oracle.GQAQKVColumnParallelLinearSpec
    width = (heads if projection == "query" else kv_heads) * head_dim
    weight = torch.arange(width, dtype=torch.float64).unsqueeze(1)
    found = []
    for rank in range(tp):
        with tp_rank(tp, rank):
            if projection == "query":
                local = gqa.create_query_or_output_projection_local_weight_from_regular_weight(
                    weight, heads, kv_heads, m, "query"
                )
            else:
                local = gqa.create_kv_proj_local_weight_from_regular_weight(
                    weight, m, kv_heads * head_dim * m // tp
                )
        found.append(local.squeeze(1))
    return found


def _spec(projection: str, heads: int, kv_heads: int, m: int) -> object:
    return template.HeadRowsSpec(
        parameter_names=["norm.weight"],
        projection=projection,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        kv_size_multiplier=m,
    )


CASES = [
    pytest.param(
        projection,
        shape,
        layout,
        id=f"{projection}-{shape}-H{layout[0]}KV{layout[1]}T{layout[2]}m{layout[3]}",
    )
    for projection in ("query", "key")
    for shape in ("full-width", "head-rows")
    for layout in LAYOUTS
]


@pytest.mark.parametrize(("projection", "shape", "layout"), CASES)
def test_each_rank_holds_the_norm_entries_of_its_projection_rows(
    projection: str, shape: str, layout: tuple[int, int, int, int]
) -> None:
    heads, kv_heads, tp, m = layout
    count = heads if projection == "query" else kv_heads
    full = torch.arange(count * HEAD_DIM, dtype=torch.float64) + 0.5
    if shape == "head-rows":
        full = full.reshape(count, HEAD_DIM)
    spec = _spec(projection, heads, kv_heads, m)
    locals_ = []
    for rank, rows in enumerate(_oracle_rows(projection, heads, kv_heads, tp, m)):
        with tp_rank(tp, rank):
            adapted = spec.adapt_state_dict("attn", {}, {"attn.norm.weight": full.clone()}, {})
        local = adapted["attn.norm.weight"]
        expected = (rows.numel(),) if shape == "full-width" else (rows.numel() // HEAD_DIM, HEAD_DIM)
        assert local.shape == expected
        torch.testing.assert_close(local.reshape(-1), rows + 0.5, rtol=0, atol=0)
        locals_.append(local)
    metadata = {"attn.norm.weight": {"tensor_model_parallel": True, "partition_dim": 0, "num_partitions": tp}}
    specs = oracle.ModelWeightTransformationSpecs(module_fully_qualified_name="attn", specs=[spec])
    restored = oracle.ModelWeightTransformationSpecs.from_metadata(specs.to_metadata())
    consolidated = oracle.to_original_weights([restored], {"attn.norm.weight": locals_}, metadata)
    assert torch.equal(consolidated["attn.norm.weight"], full)


def test_the_spec_refuses_an_unknown_projection() -> None:
    with pytest.raises(ValueError, match="projection"):
        _spec("value", 8, 2, 2)


def _oracle_heads(projection: str, heads: int, kv_heads: int, tp: int, m: int) -> list[list[int]]:
    """Per rank: the checkpoint heads of the projection the released spec gives it, in order (one row per
    head: the rows are the heads)."""
    return [[int(v) for v in rows] for rows in _oracle_rows(projection, heads, kv_heads, tp, m, head_dim=1)]


MODULE_CASES = [
    pytest.param(
        projection, layout, gqa, id=f"{projection}-H{layout[0]}KV{layout[1]}T{layout[2]}m{layout[3]}-{gqa}"
    )
    for projection in ("query", "key")
    for layout in LAYOUTS
    for gqa in (True, False)
    # without NxD's GQA layer the heads split contiguously: only where they divide by the ranks
    if gqa or (layout[0] if projection == "query" else layout[1]) % layout[2] == 0
]


@pytest.mark.parametrize(("projection", "layout", "gqa"), MODULE_CASES)
def test_each_rank_holds_the_norms_of_its_heads_renumbered(
    projection: str, layout: tuple[int, int, int, int], gqa: bool
) -> None:
    heads, kv_heads, tp, m = layout
    count = heads if projection == "query" else kv_heads
    if not gqa:  # contiguous heads, no replicas: rank r holds heads r n .. r n + n - 1
        m = 1
        expected = [list(range(r * count // tp, (r + 1) * count // tp)) for r in range(tp)]
    else:
        expected = _oracle_heads(projection, heads, kv_heads, tp, m)
    spec = template.HeadModulesSpec(
        module_list="norm.norms",
        parameter_names=["weight", "bias"],
        projection=projection,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        kv_size_multiplier=m,
        gqa=gqa,
    )
    full = {
        f"attn.norm.norms.{h}.{p}": torch.full((HEAD_DIM,), 10.0 * h + (p == "bias"))
        for h in range(count)
        for p in ("weight", "bias")
    }
    shards: dict[str, list[torch.Tensor]] = {}
    for rank, rank_heads in enumerate(expected):
        with tp_rank(tp, rank):
            adapted = spec.adapt_state_dict("attn", {}, {**full, "other": torch.zeros(1)}, {})
        local = {name: value for name, value in adapted.items() if name.startswith("attn.")}
        assert sorted(local) == sorted(
            f"attn.norm.norms.{j}.{p}" for j in range(len(rank_heads)) for p in ("weight", "bias")
        )
        for j, h in enumerate(rank_heads):
            assert torch.equal(local[f"attn.norm.norms.{j}.weight"], full[f"attn.norm.norms.{h}.weight"])
            assert torch.equal(local[f"attn.norm.norms.{j}.bias"], full[f"attn.norm.norms.{h}.bias"])
        assert "other" in adapted
        for name, value in local.items():
            shards.setdefault(name, []).append(value)
    metadata = {
        name: {"tensor_model_parallel": True, "partition_dim": 0, "num_partitions": tp} for name in shards
    }
    specs = oracle.ModelWeightTransformationSpecs(module_fully_qualified_name="attn", specs=[spec])
    restored = oracle.ModelWeightTransformationSpecs.from_metadata(specs.to_metadata())
    consolidated = oracle.to_original_weights([restored], shards, metadata)
    assert sorted(consolidated) == sorted(full)
    assert all(torch.equal(consolidated[name], full[name]) for name in full)
