"""The reference host's weight transformation specs (training semantics §2), against independent oracles.

Oracles: hand-written query-index tables and the closed form of §2.6, per-rank layouts rebuilt here with
plain chunking, and the identity (load then consolidate gives the checkpoint back, LoRA by the documented
mean rule). Single process: TP ranks are visited with `set_tensor_model_parallel_rank/size`.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from peft import LoraConfig
from torch import nn

from conformance.backends import activate

activate("reference")  # the host imports `neuronx_distributed` by its public name

from conformance.backends.reference.training import transformations_utils as tu  # noqa: E402
from conformance.backends.reference.training.gqa_layout import GQAHeadLayout  # noqa: E402
from conformance.tensor_parallel_run import run_tensor_parallel  # noqa: E402

from .transformation_trees import (  # noqa: E402
    LoraWrapper,
    Shape,
    _linear,
    _wrap,
    build_model,
    consolidate,
    full_adapter_state_dict,
    full_state_dict,
    gqa_shapes,
    load_on_this_rank,
    load_ranks,
    local_shapes,
    saved_names,
    shapes,
    tensor_parallel_rank,
)

Spec = tu.GQAQKVColumnParallelLinearSpec
ATTENTIONS = ["separate", "fused", "gqa"]

# --- query permutation ---------------------------------------------------------------------------------

# (T, H, KV, m) -> rank -> original query heads, from optimum-neuron's own test file (semantics §2.6).
GROUND_TRUTHS = {
    (8, 32, 4, 2): [
        [0, 1, 2, 3], [8, 9, 10, 11], [16, 17, 18, 19], [24, 25, 26, 27],
        [4, 5, 6, 7], [12, 13, 14, 15], [20, 21, 22, 23], [28, 29, 30, 31],
    ],
    (8, 32, 4, 4): [
        [0, 1, 8, 9], [16, 17, 24, 25], [2, 3, 10, 11], [18, 19, 26, 27],
        [4, 5, 12, 13], [20, 21, 28, 29], [6, 7, 14, 15], [22, 23, 30, 31],
    ],
    (8, 32, 4, 8): [
        [0, 8, 16, 24], [1, 9, 17, 25], [2, 10, 18, 26], [3, 11, 19, 27],
        [4, 12, 20, 28], [5, 13, 21, 29], [6, 14, 22, 30], [7, 15, 23, 31],
    ],
    (32, 32, 4, 8): [
        [0], [8], [16], [24], [1], [9], [17], [25], [2], [10], [18], [26], [3], [11], [19], [27],
        [4], [12], [20], [28], [5], [13], [21], [29], [6], [14], [22], [30], [7], [15], [23], [31],
    ],
}  # fmt: skip


@pytest.mark.parametrize("key", list(GROUND_TRUTHS))
def test_query_indices_match_optimum_neuron_ground_truths(key):
    T, H, KV, m = key
    for rank, expected in enumerate(GROUND_TRUTHS[key]):
        got = Spec.compute_query_indices_for_rank(T, rank, H, KV, m)
        assert got.dtype == torch.int64
        assert got.tolist() == expected, f"rank {rank}"


def _closed_form(g: int, H: int, KV: int, m: int, T: int) -> int:
    G = H // KV
    Gr = (H // T) // (KV * m // T)
    return (g % Gr) + ((g // Gr) % KV) * G + (g // (H // m)) * Gr


@given(gqa_shapes())
def test_query_indices_follow_the_closed_form(shape):
    T, H, KV, m = shape
    Hr = H // T
    for r in range(T):
        got = Spec.compute_query_indices_for_rank(T, r, H, KV, m).tolist()
        assert got == [_closed_form(r * Hr + j, H, KV, m, T) for j in range(Hr)]


@given(gqa_shapes())
def test_query_heads_form_a_permutation_next_to_their_kv_head(shape):
    T, H, KV, m = shape
    Hr, KVr, G = H // T, KV * m // T, H // KV
    Gr = Hr // KVr
    everything = []
    for r in range(T):
        indices = Spec.compute_query_indices_for_rank(T, r, H, KV, m).tolist()
        everything += indices
        for j, head in enumerate(indices):
            # Local KV slot j // Gr of rank r holds KV head (r*KVr + j//Gr) mod KV (tile layout).
            assert head // G == (r * KVr + j // Gr) % KV
    assert sorted(everything) == list(range(H))


def test_invalid_gqa_layouts_are_refused_with_the_sizes():
    with pytest.raises(ValueError, match="not divisible by the tensor parallel size 8"):
        Spec.compute_query_indices_for_rank(8, 0, 32, 2, 2)
    with pytest.raises(ValueError, match="query group size 2 is not divisible by kv_size_multiplier 4"):
        GQAHeadLayout(4, 8, 4, 4)


# --- per-rank layouts, rebuilt independently -----------------------------------------------------------


def _chunk(t: torch.Tensor, T: int, r: int, dim: int = 0) -> torch.Tensor:
    return torch.chunk(t, T, dim=dim)[r]


def _heads(t: torch.Tensor, n: int, picks: list[int], dim: int) -> torch.Tensor:
    return torch.cat([torch.chunk(t, n, dim=dim)[h] for h in picks], dim=dim)


def _gqa_picks(s: Shape, r: int) -> tuple[list[int], list[int]]:
    """(query heads, kv heads) of rank r, from the closed form and the tile rule."""
    Hr, KVr = s.heads // s.tp, s.kv_heads * s.kv_size_multiplier // s.tp
    q = [_closed_form(r * Hr + j, s.heads, s.kv_heads, s.kv_size_multiplier, s.tp) for j in range(Hr)]
    return q, [(r * KVr + t) % s.kv_heads for t in range(KVr)]


def expected_local(
    s: Shape, full: dict[str, torch.Tensor], r: int, prefix: str = ""
) -> dict[str, torch.Tensor]:
    """Rank r's tensors for the tree of `s`, by chunking and index tables only."""
    T, out = s.tp, {}
    pns = ["weight", "bias"] if s.bias else ["weight"]
    out[f"{prefix}model.embed_tokens.weight"] = _chunk(full["model.embed_tokens.weight"], T, r)
    out[f"{prefix}lm_head.weight"] = _chunk(full["lm_head.weight"], T, r)
    out[f"{prefix}model.norm.weight"] = full["model.norm.weight"]
    for i in range(s.layers):
        p, q = f"model.layers.{i}", f"{prefix}model.layers.{i}"
        out[f"{q}.input_layernorm.weight"] = full[f"{p}.input_layernorm.weight"]
        for pn in pns:
            g, u = full[f"{p}.mlp.gate_proj.{pn}"], full[f"{p}.mlp.up_proj.{pn}"]
            out[f"{q}.mlp.gate_up_proj.{pn}"] = torch.cat([_chunk(g, T, r), _chunk(u, T, r)])
            wq, wk, wv = (full[f"{p}.self_attn.{n}_proj.{pn}"] for n in "qkv")
            if s.attention == "separate":
                for n, w in zip("qkv", (wq, wk, wv)):
                    out[f"{q}.self_attn.{n}_proj.{pn}"] = _chunk(w, T, r)
            elif s.attention == "fused":
                out[f"{q}.self_attn.qkv_proj.{pn}"] = torch.cat([_chunk(w, T, r) for w in (wq, wk, wv)])
            else:
                q_heads, kv_heads = _gqa_picks(s, r)
                local = [_heads(wq, s.heads, q_heads, 0)] + [
                    _heads(w, s.kv_heads, kv_heads, 0) for w in (wk, wv)
                ]
                if s.fuse_qkv:
                    out[f"{q}.self_attn.qkv_proj.{pn}_qkv"] = torch.cat(local)
                else:
                    for n, w in zip("qkv", local):
                        out[f"{q}.self_attn.qkv_proj.{pn}_{n}"] = w
        wo, wd = full[f"{p}.self_attn.o_proj.weight"], full[f"{p}.mlp.down_proj.weight"]
        out[f"{q}.mlp.down_proj.weight"] = _chunk(wd, T, r, 1)
        if s.attention == "gqa":
            out[f"{q}.self_attn.o_proj.weight"] = _heads(wo, s.heads, _gqa_picks(s, r)[0], 1)
        else:
            out[f"{q}.self_attn.o_proj.weight"] = _chunk(wo, T, r, 1)
        if s.bias:
            out[f"{q}.mlp.down_proj.bias"] = full[f"{p}.mlp.down_proj.bias"]
            out[f"{q}.self_attn.o_proj.bias"] = full[f"{p}.self_attn.o_proj.bias"]
    return out


def _assert_same(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert set(got) == set(expected), set(got) ^ set(expected)
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor), name


@pytest.mark.parametrize("attention", ATTENTIONS)
@settings(max_examples=15)
@given(data=st.data())
def test_load_gives_each_rank_its_layout_and_consolidation_is_the_identity(attention, data):
    s = data.draw(shapes(attention=attention))
    full = full_state_dict(s)
    model = build_model(tu, s)
    per_rank = load_ranks(tu, model, [full], s.tp)
    shapes_ = local_shapes(model, tu)
    for r, local in enumerate(per_rank):
        _assert_same(local, expected_local(s, full, r))
        assert {k: tuple(v.shape) for k, v in local.items()} == shapes_
    _assert_same(consolidate(tu, model, per_rank), full)


@settings(max_examples=10)
@given(shapes())
def test_a_model_without_parameters_for_current_stage_uses_its_state_dict_names(s):
    full = full_state_dict(s)
    with_stage, without = build_model(tu, s), build_model(tu, s, stage_attribute=False)
    for a, b in zip(load_ranks(tu, with_stage, [full], s.tp), load_ranks(tu, without, [full], s.tp)):
        _assert_same(a, b)
    assert tu.create_parameter_metadata(with_stage) == tu.create_parameter_metadata(without)


def test_parameters_outside_the_stage_are_dropped():
    s = Shape(tp=2, heads=2, kv_heads=2, head_dim=1, hidden=2, intermediate=2, vocab=2, attention="separate")
    model = build_model(tu, s)
    model.parameters_for_current_stage = {n for n in model.parameters_for_current_stage if "lm_head" not in n}
    (local, _) = load_ranks(tu, model, [full_state_dict(s)], s.tp)
    assert "lm_head.weight" not in local and "model.embed_tokens.weight" in local


# --- multi-file checkpoints (deviation ON-03) ----------------------------------------------------------


@pytest.mark.parametrize("attention", ATTENTIONS)
@settings(max_examples=10)
@given(data=st.data())
def test_groups_split_over_files_load_like_one_file_ON_03(attention, data):
    s = data.draw(shapes(attention=attention))
    full = full_state_dict(s)
    n_files = data.draw(st.integers(2, 4))
    order = data.draw(st.permutations(sorted(full)))
    files = [{} for _ in range(n_files)]
    for name in order:
        files[data.draw(st.integers(0, n_files - 1))][name] = full[name]
    model = build_model(tu, s)
    for whole, split in zip(load_ranks(tu, model, [full], s.tp), load_ranks(tu, model, files, s.tp)):
        _assert_same(split, whole)


def test_incomplete_groups_are_reported_after_the_last_file_ON_03():
    s = Shape(tp=2, heads=4, kv_heads=1, head_dim=1, hidden=2, intermediate=2, vocab=2, attention="gqa",
              fuse_qkv=True, kv_size_multiplier=2)  # fmt: skip
    full = full_state_dict(s)
    del full["model.layers.1.self_attn.v_proj.weight"], full["model.layers.0.mlp.up_proj.weight"]
    model = build_model(tu, s)
    upstanding = {}
    with tensor_parallel_rank(2, 0):
        local = tu.adapt_state_dict(model, dict(full), upstanding)
    assert set(upstanding) == {
        "model.layers.1.self_attn.q_proj.weight",
        "model.layers.1.self_attn.k_proj.weight",
        "model.layers.0.mlp.gate_proj.weight",
    }
    assert "model.layers.1.self_attn.qkv_proj.weight_qkv" not in local
    assert "model.layers.0.self_attn.qkv_proj.weight_qkv" in local
    with pytest.raises(ValueError, match=r"never found: model\.layers\.0\.mlp\.gate_proj\.weight, model"):
        tu.check_no_upstanding_sharded_params(upstanding)
    tu.check_no_upstanding_sharded_params({})


# --- uneven shards (deviation ON-05) -------------------------------------------------------------------


def test_uneven_shards_are_errors_naming_the_parameter_ON_05():
    with tensor_parallel_rank(4, 1):
        with pytest.raises(ValueError, match="size 10 does not split into 4"):
            tu.create_local_weight_with_padding(torch.zeros(10, 3), 0, 1)
        assert tu.create_local_weight_with_padding(torch.arange(16.0).view(8, 2), 0, 2).tolist() == [
            [2.0, 3.0], [10.0, 11.0]
        ]  # fmt: skip
        with pytest.raises(ValueError, match="fused weight 1: dimension 0 of size 6"):
            tu.create_local_fused_weight(1, 4, [torch.zeros(8, 2), torch.zeros(6, 2)], 0, 0)
        s = Shape(
            tp=4, heads=4, kv_heads=4, head_dim=1, hidden=2, intermediate=4, vocab=4, attention="separate"
        )
        full = full_state_dict(s)
        full["model.embed_tokens.weight"] = torch.zeros(6, 2)
        with pytest.raises(ValueError, match=r"model\.embed_tokens\.weight: dimension 0 of size 6"):
            tu.adapt_state_dict(build_model(tu, s), full, {})


# --- LoRA ----------------------------------------------------------------------------------------------


def _expected_lora_local(s: Shape, ad: dict[str, torch.Tensor], r: int) -> dict[str, torch.Tensor]:
    """Rank r's LoRA tensors: fused lora_A = mean, lora_B laid out like the base weight."""
    T, out = s.tp, {}
    for i in range(s.layers):
        p = f"base_model.model.model.layers.{i}"
        A = {n: ad[f"{p}.{n}.lora_A.weight"] for n in ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")}
        B = {n: ad[f"{p}.{n}.lora_B.weight"] for n in ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")}
        for n in "qkvo":
            A[f"self_attn.{n}_proj"] = ad[f"{p}.self_attn.{n}_proj.lora_A.weight"]
            B[f"self_attn.{n}_proj"] = ad[f"{p}.self_attn.{n}_proj.lora_B.weight"]
        out[f"{p}.mlp.gate_up_proj.lora_A.weight"] = torch.stack([A["mlp.gate_proj"], A["mlp.up_proj"]]).mean(
            0
        )
        out[f"{p}.mlp.gate_up_proj.lora_B.weight"] = torch.cat(
            [_chunk(B["mlp.gate_proj"], T, r), _chunk(B["mlp.up_proj"], T, r)]
        )
        out[f"{p}.mlp.down_proj.lora_A.weight"] = _chunk(A["mlp.down_proj"], T, r, 1)
        out[f"{p}.mlp.down_proj.lora_B.weight"] = B["mlp.down_proj"]
        out[f"{p}.self_attn.o_proj.lora_B.weight"] = B["self_attn.o_proj"]
        qkv_a = torch.stack([A[f"self_attn.{n}_proj"] for n in "qkv"]).mean(0)
        bq, bk, bv = (B[f"self_attn.{n}_proj"] for n in "qkv")
        if s.attention == "separate":
            for n in "qkv":
                out[f"{p}.self_attn.{n}_proj.lora_A.weight"] = A[f"self_attn.{n}_proj"]
                out[f"{p}.self_attn.{n}_proj.lora_B.weight"] = _chunk(B[f"self_attn.{n}_proj"], T, r)
        elif s.attention == "fused":
            out[f"{p}.self_attn.qkv_proj.lora_A.weight"] = qkv_a
            out[f"{p}.self_attn.qkv_proj.lora_B.weight"] = torch.cat([_chunk(b, T, r) for b in (bq, bk, bv)])
        else:
            q_heads, kv_heads = _gqa_picks(s, r)
            out[f"{p}.self_attn.qkv_proj.lora_A.weight"] = qkv_a
            local = [_heads(bq, s.heads, q_heads, 0)] + [_heads(b, s.kv_heads, kv_heads, 0) for b in (bk, bv)]
            if s.fuse_qkv:
                out[f"{p}.self_attn.qkv_proj.lora_B.weight_qkv"] = torch.cat(local)  # ON-02
            else:
                for n, b in zip("qkv", local):
                    out[f"{p}.self_attn.qkv_proj.lora_B.weight_{n}"] = b
        ao = A["self_attn.o_proj"]
        out[f"{p}.self_attn.o_proj.lora_A.weight"] = (
            _heads(ao, s.heads, _gqa_picks(s, r)[0], 1) if s.attention == "gqa" else _chunk(ao, T, r, 1)
        )
    return out


def _expected_consolidated_lora(s: Shape, ad: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    expected = dict(ad)
    groups = [("mlp.gate_proj", "mlp.up_proj")]
    if s.attention != "separate":
        groups.append(("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"))
    for i in range(s.layers):
        p = f"base_model.model.model.layers.{i}"
        for group in groups:
            names = [f"{p}.{n}.lora_A.weight" for n in group]
            expected.update(dict.fromkeys(names, torch.stack([ad[n] for n in names]).mean(0)))
    return expected


@pytest.mark.parametrize("attention", ATTENTIONS)
@settings(max_examples=15)
@given(data=st.data())
def test_lora_loads_with_the_mean_rule_and_consolidates_back(attention, data):
    s = data.draw(shapes(attention=attention, bias=False))
    ad = full_adapter_state_dict(s)
    model = build_model(tu, s, lora=True)
    per_rank = load_ranks(tu, model, [ad], s.tp, adapter_name="default")
    for r, local in enumerate(per_rank):
        _assert_same(local, _expected_lora_local(s, ad, r))
        assert set(local) == saved_names(model, tu, adapter_only=True)
    _assert_same(consolidate(tu, model, per_rank, adapter_name="default"), _expected_consolidated_lora(s, ad))


def test_lora_without_output_projection_adapters():
    s = Shape(tp=4, heads=8, kv_heads=2, head_dim=2, hidden=3, intermediate=4, vocab=4, attention="gqa",
              kv_size_multiplier=2, lora_rank=2)  # fmt: skip
    ad = full_adapter_state_dict(s, lora_on_output=False)
    model = build_model(tu, s, lora=True, lora_on_output=False)
    per_rank = load_ranks(tu, model, [ad], s.tp, adapter_name="default")
    _assert_same(consolidate(tu, model, per_rank, adapter_name="default"), _expected_consolidated_lora(s, ad))


def test_a_second_adapter_is_left_out_of_loading_and_consolidation():
    s = Shape(tp=2, heads=4, kv_heads=1, head_dim=1, hidden=2, intermediate=2, vocab=2, attention="gqa",
              kv_size_multiplier=2)  # fmt: skip
    model = build_model(tu, s, lora=True)
    for module in model.modules():
        if isinstance(module, LoraWrapper):
            module.lora_A["other"] = copy.deepcopy(module.lora_A["default"])
            module.lora_B["other"] = copy.deepcopy(module.lora_B["default"])
    model.parameters_for_current_stage = set(model.state_dict())
    ad = full_adapter_state_dict(s)
    per_rank = load_ranks(tu, model, [ad], s.tp, adapter_name="default")
    for r, local in enumerate(per_rank):
        _assert_same(local, _expected_lora_local(s, ad, r))
    _assert_same(consolidate(tu, model, per_rank, adapter_name="default"), _expected_consolidated_lora(s, ad))
    with pytest.raises(ValueError, match="Could not find LoRA weights"):
        consolidate(tu, model, per_rank, adapter_name="missing")


# --- row fusions (deviation ON-01) ---------------------------------------------------------------------


class RowFused(nn.Module, tu.CustomModule):
    """`fused` = [a | b] along the inputs, row-parallel; LoRA-wrapped when `lora`."""

    def __init__(self, T: int, out: int, ins: tuple[int, int], rank: int, lora: bool) -> None:
        super().__init__()
        base = _linear(T, out, sum(ins), "row", False)
        shape = Shape(tp=T, heads=1, kv_heads=1, head_dim=1, hidden=1, intermediate=1, vocab=1,
                      attention="separate", lora_rank=rank)  # fmt: skip
        self.fused = _wrap(base, shape, out, sum(ins), "row") if lora else base
        self.specs.add_spec(tu.FusedLinearsSpec("fused", ["a", "b"], False, "row", list(ins), T))


@given(st.sampled_from([1, 2, 4]), st.integers(1, 3), st.integers(1, 3), st.integers(1, 3), st.integers(1, 3))
def test_row_fusions_round_trip_base_and_lora_ON_01(T, out, a, b, rank):
    ins = (a * T, b * T)
    g = torch.Generator().manual_seed(0)
    base = {
        "m.a.weight": torch.randn(out, ins[0], generator=g),
        "m.b.weight": torch.randn(out, ins[1], generator=g),
    }
    root = nn.Module()
    root.m = RowFused(T, out, ins, rank, lora=False)
    tu.specialize_transformation_specs_for_model(root)
    per_rank = load_ranks(tu, root, [base], T)
    for r, local in enumerate(per_rank):
        expected = torch.cat(
            [_chunk(base["m.a.weight"], T, r, 1), _chunk(base["m.b.weight"], T, r, 1)], dim=1
        )
        _assert_same(local, {"m.fused.weight": expected})
    _assert_same(consolidate(tu, root, per_rank), base)

    ad = {
        "m.a.lora_A.weight": torch.randn(rank, ins[0], generator=g),
        "m.b.lora_A.weight": torch.randn(rank, ins[1], generator=g),
        "m.a.lora_B.weight": torch.randn(out, rank, generator=g),
        "m.b.lora_B.weight": torch.randn(out, rank, generator=g),
    }
    root = nn.Module()
    root.m = RowFused(T, out, ins, rank, lora=True)
    tu.specialize_transformation_specs_for_model(root)
    assert root.m.specs.specs[0].peft_type == "lora"
    per_rank = load_ranks(tu, root, [ad], T, adapter_name="default")
    mean_b = torch.stack([ad["m.a.lora_B.weight"], ad["m.b.lora_B.weight"]]).mean(0)
    for r, local in enumerate(per_rank):
        a_r = torch.cat(
            [_chunk(ad["m.a.lora_A.weight"], T, r, 1), _chunk(ad["m.b.lora_A.weight"], T, r, 1)], 1
        )
        _assert_same(local, {"m.fused.lora_A.weight": a_r, "m.fused.lora_B.weight": mean_b})
    expected = dict(ad) | {"m.a.lora_B.weight": mean_b, "m.b.lora_B.weight": mean_b}
    _assert_same(consolidate(tu, root, per_rank, adapter_name="default"), expected)


# --- PEFT configs --------------------------------------------------------------------------------------

GQA = Shape(tp=4, heads=8, kv_heads=2, head_dim=1, hidden=2, intermediate=4, vocab=4, attention="gqa",
            kv_size_multiplier=2)  # fmt: skip


def test_peft_config_is_fused_and_restored():
    model = build_model(tu, GQA)
    config = LoraConfig(target_modules=["q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "down_proj"])
    adapted = tu.adapt_peft_config_for_model(model, config)
    assert adapted.target_modules == {"qkv_proj", "gate_up_proj", "down_proj"}
    assert config.target_modules == {"q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "down_proj"}
    restored = tu.to_original_peft_config_for_model(model, adapted)
    assert restored.target_modules == config.target_modules
    both = tu.adapt_peft_config_for_model(model, {"a": config, "b": LoraConfig(target_modules=["o_proj"])})
    assert both["a"].target_modules == adapted.target_modules and both["b"].target_modules == {"o_proj"}


def test_peft_config_with_part_of_a_fusion_is_refused():
    model = build_model(tu, GQA)
    with pytest.raises(ValueError, match="missing: k_proj"):
        tu.adapt_peft_config_for_model(model, LoraConfig(target_modules=["q_proj", "v_proj"]))
    config = LoraConfig(target_modules=["gate_proj"])
    config.peft_type = "IA3"
    with pytest.raises(NotImplementedError, match="only LoRA"):
        model.model.layers[0].mlp.specs.specs[0].adapt_peft_config(config)


@pytest.mark.parametrize("attention", ["separate", "fused", "gqa"])
def test_all_linear_is_expanded_to_the_model_layers_ON_06(attention):
    s = dataclasses.replace(
        GQA, attention=attention, kv_heads={"separate": 4, "fused": 8, "gqa": 2}[attention]
    )
    model = build_model(tu, s)
    adapted = tu.adapt_peft_config_for_model(model, LoraConfig(target_modules="all-linear"))
    attn = {"q_proj", "k_proj", "v_proj"} if attention == "separate" else {"qkv_proj"}
    assert adapted.target_modules == attn | {"o_proj", "gate_up_proj", "down_proj"}
    restored = tu.to_original_peft_config_for_model(model, adapted)
    assert restored.target_modules == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }
    peft_model = build_model(tu, s, lora=True)  # wrappers count, their lora_A/lora_B/base_layer do not
    assert tu.adapt_peft_config_for_model(
        peft_model, LoraConfig(target_modules="all-linear")
    ).target_modules == (adapted.target_modules)
    with pytest.raises(ValueError, match="adapt_peft_config_for_model"):
        model.model.layers[0].mlp.specs.specs[0].adapt_peft_config(LoraConfig(target_modules="all-linear"))


# --- specs, metadata and names -------------------------------------------------------------------------


def test_specialization_names_specs_and_guesses_lora():
    model = build_model(tu, GQA)
    attn = model.model.layers[1].self_attn
    assert attn.specs.module_fully_qualified_name == "model.layers.1.self_attn"
    assert attn.specs.specs[0].peft_type is None
    peft_model = build_model(tu, GQA, lora=True, lora_on_output=False)
    mlp = peft_model.base_model.model.model.layers[0].mlp
    assert mlp.specs.module_fully_qualified_name == "base_model.model.model.layers.0.mlp"
    assert mlp.specs.specs[0].peft_type == "lora"


def test_metadata_records_attributes_and_specs():
    model = build_model(tu, GQA)
    meta = tu.create_parameter_metadata(model)
    params = meta["parameters"]
    assert params["model.layers.0.mlp.gate_up_proj.weight"] == {
        "tensor_model_parallel": True, "partition_dim": 0, "partition_stride": 2, "num_partitions": 4
    }  # fmt: skip
    assert params["model.norm.weight"] == {"tensor_model_parallel": False}
    assert params["model.layers.0.self_attn.o_proj.weight"]["partition_dim"] == 1
    entries = {
        e["module_fully_qualified_name"]: e["specs"] for e in meta["model_weight_transformation_specs"]
    }
    assert list(entries) == [f"model.layers.{i}.{m}" for i in range(2) for m in ("self_attn", "mlp")]
    name, fields = entries["model.layers.0.mlp"][0]
    assert name == "FusedLinearsSpec"
    assert fields == {
        "fused_linear_name": "gate_up_proj", "linear_names": ["gate_proj", "up_proj"], "bias": False,
        "fuse_axis": 0, "original_dims": [4, 4], "tp_size": 4, "peft_type": None,
    }  # fmt: skip
    assert list(entries["model.layers.0.self_attn"][0][1]) == [
        "gqa_qkv_projection_name", "query_projection_name", "key_projection_name", "value_projection_name",
        "output_projection_name", "num_attention_heads", "num_key_value_heads", "kv_size_multiplier",
        "q_output_size_per_partition", "kv_output_size_per_partition", "fuse_qkv", "bias", "tp_size",
        "peft_type",
    ]  # fmt: skip


def test_specs_round_trip_through_metadata_without_a_parallel_state():
    specs = build_model(tu, GQA, lora=True).base_model.model.model.layers[0].self_attn.specs
    rebuilt = tu.ModelWeightTransformationSpecs.from_metadata(specs.to_metadata())
    assert rebuilt == specs  # dataclass equality: same name and fields, tp_size taken from the metadata
    assert [s.peft_type for s in rebuilt] == ["lora"]
    stage = {"unrelated.weight"}
    assert specs.to_metadata(stage)["specs"] == []
    with pytest.raises(ValueError, match="unknown transformation spec class 'os'"):
        tu.ModelWeightTransformationSpecs.from_metadata(
            {"module_fully_qualified_name": "x", "specs": [["os", {}]]}
        )
    with pytest.raises(ValueError, match="module_fully_qualified_name"):
        tu.ModelWeightTransformationSpecs().to_metadata()


def test_custom_module_and_container_type_checks():
    class Block(nn.Module, tu.CustomModule):
        pass

    block = Block()
    assert isinstance(block.specs, tu.ModelWeightTransformationSpecs) and block.specs.specs == []
    assert block.specs is block.specs
    with pytest.raises(TypeError, match="ModelWeightTransformationSpecs"):
        block.specs = []
    with pytest.raises(TypeError, match="ModelWeightTransformationSpec"):
        block.specs.add_spec("not a spec")
    spec = tu.FusedLinearsSpec("f", ["a", "b"], False, "row", [2, 2], 1)
    assert spec.fuse_axis == 1
    assert tu.ModelWeightTransformationSpecs("m", spec).specs == [spec]
    with pytest.raises(TypeError):
        tu.ModelWeightTransformationSpec()
    spec.peft_type = "ia3"
    with pytest.raises(NotImplementedError, match="ia3"):
        spec.adapt_state_dict("m", {}, {}, {})


def test_adapter_name_helpers():
    name = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight"
    assert tu.remove_adapter_name(name) == "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    assert tu.remove_adapter_name("m.qkv_proj.lora_B.my_adapter.weight_q") == "m.qkv_proj.lora_B.weight_q"
    assert tu.remove_adapter_name("m.embed.lora_embedding_A.x.weight") == "m.embed.lora_embedding_A.weight"
    assert tu.remove_adapter_name("m.q_proj.weight") == "m.q_proj.weight"
    assert tu.get_adapter_name(name) == "default" and tu.get_adapter_name("m.q_proj.weight") is None
    assert tu.is_base_layer("m.q_proj.base_layer.weight") and not tu.is_base_layer("m.q_proj.weight")


def test_gqa_biases_follow_their_weight_rows():
    s = dataclasses.replace(GQA, bias=True, head_dim=2, fuse_qkv=True)
    full = full_state_dict(s)
    model = build_model(tu, s)
    per_rank = load_ranks(tu, model, [full], s.tp)
    for r, local in enumerate(per_rank):
        _assert_same(local, expected_local(s, full, r))
    _assert_same(consolidate(tu, model, per_rank), full)


def test_gqa_helpers_reject_parameters():
    with tensor_parallel_rank(2, 0), pytest.raises(TypeError, match="plain tensor"):
        Spec.create_kv_proj_local_weight_from_regular_weight(nn.Parameter(torch.zeros(2, 2)), 1, 1)


def test_ranks_of_a_real_tensor_parallel_group_load_their_shards():
    # The host reads rank and size from the initialised parallel state here, not from overrides.
    s = Shape(tp=2, heads=4, kv_heads=1, head_dim=2, hidden=3, intermediate=4, vocab=8, attention="gqa",
              fuse_qkv=True, kv_size_multiplier=2, bias=True)  # fmt: skip
    full = full_state_dict(s)
    per_rank = run_tensor_parallel(load_on_this_rank, s.tp, s, full)
    for r, local in enumerate(per_rank):
        _assert_same(local, expected_local(s, full, r))
