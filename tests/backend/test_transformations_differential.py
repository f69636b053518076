"""Differential fidelity: the reference host's specs against the released optimum-neuron 0.4.5 code.

The oracle is optimum-neuron's own `transformations_utils.py`, run against the reference NxD (see
`oracle_optimum_neuron`). On the same module trees and checkpoints, both must give bit-identical per-rank
tensors, consolidated tensors and metadata JSON. Where the reference deliberately differs (a bug of the
released code), a test named after the deviation id shows the released behaviour and ours side by side.
"""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from peft import LoraConfig
from torch import nn

from conformance.backends import activate

activate("reference")  # the host imports `neuronx_distributed` by its public name

from conformance.backends.reference.training import transformations_utils as tu  # noqa: E402

from .oracle_optimum_neuron import load_oracle  # noqa: E402
from .transformation_trees import (  # noqa: E402
    Shape,
    _linear,
    _wrap,
    build_model,
    consolidate,
    full_adapter_state_dict,
    full_state_dict,
    gqa_shapes,
    load_ranks,
    local_shapes,
    saved_names,
    shapes,
    tensor_parallel_rank,
)

on = load_oracle()


def _assert_same(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert set(got) == set(expected), set(got) ^ set(expected)
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor), name


def _metadata_json(module, model) -> str:
    return json.dumps(module.create_parameter_metadata(model), indent=4)


ATTENTIONS = ["separate", "fused", "gqa"]


@st.composite
def released_shapes(draw, attention: str | None = None, lora: bool = False):
    """Shapes the released code handles: no GQA biases (it fails on them, see the GQA-bias test)."""
    s = draw(shapes(attention=attention))
    if lora or s.attention == "gqa":
        s = Shape(**{**s.__dict__, "bias": False})
    return s


# --- primitives ----------------------------------------------------------------------------------------


@given(gqa_shapes())
def test_query_indices_equal_the_released_code(shape):
    T, H, KV, m = shape
    for r in range(T):
        ours = tu.GQAQKVColumnParallelLinearSpec.compute_query_indices_for_rank(T, r, H, KV, m)
        theirs = on.GQAQKVColumnParallelLinearSpec.compute_query_indices_for_rank(T, r, H, KV, m)
        assert ours.dtype == theirs.dtype and torch.equal(ours, theirs), r


def _both(name: str, *args):
    """The GQA spec's static helper `name` applied by ours and by the released code."""
    return tuple(getattr(m.GQAQKVColumnParallelLinearSpec, name)(*args) for m in (tu, on))


@given(gqa_shapes(), st.integers(1, 3), st.integers(1, 4))
def test_gqa_weight_helpers_equal_the_released_code(shape, head_dim, hidden):
    T, H, KV, m = shape
    g = torch.Generator().manual_seed(T * 1000 + H)
    q = torch.randn(H * head_dim, hidden, generator=g)
    kv = torch.randn(KV * head_dim, hidden, generator=g)
    o = torch.randn(hidden, H * head_dim, generator=g)
    kv_pp = KV * m * head_dim // T
    local = "create_query_or_output_projection_local_weight_from_regular_weight"
    for r in range(T):
        with tensor_parallel_rank(T, r):
            for which, w in (("query", q), ("output", o)):
                ours, theirs = _both(local, w, H, KV, m, which)
                assert torch.equal(ours, theirs), (which, r)
            ours, theirs = _both("create_kv_proj_local_weight_from_regular_weight", kv, m, kv_pp)
            assert torch.equal(ours, theirs), r
    for which, w in (("query", q), ("output", o)):
        full = "create_gqa_query_or_output_projection_weight_from_full_weight"
        ours, theirs = _both(full, w, T, H, KV, m, which)
        assert torch.equal(ours, theirs), which


@given(
    st.sampled_from([1, 2, 4]),
    st.lists(st.integers(1, 3), min_size=1, max_size=3),
    st.integers(1, 3),
    st.sampled_from([0, 1]),
    st.sampled_from([1, 2, 3]),
)
def test_sharding_primitives_equal_the_released_code(T, sizes, other, dim, stride):
    g = torch.Generator().manual_seed(len(sizes))
    weights = [torch.randn(*((n * T, other) if dim == 0 else (other, n * T)), generator=g) for n in sizes]
    full = torch.randn(*((T * stride * 2, other) if dim == 0 else (other, T * stride * 2)), generator=g)
    for r in range(T):
        for fuse_axis in {dim, 1 - dim} if len(set(sizes)) == 1 else {dim}:
            ours = tu.create_local_fused_weight(r, T, weights, dim, fuse_axis)
            assert torch.equal(ours, on.create_local_fused_weight(r, T, weights, dim, fuse_axis))
        with tensor_parallel_rank(T, r):
            ours = tu.create_local_weight_with_padding(full, dim, stride)
            assert torch.equal(ours, on.create_local_weight_with_padding(full, dim, stride))


# --- whole trees ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("attention", ATTENTIONS)
@settings(max_examples=15)
@given(data=st.data())
def test_base_weights_load_consolidate_and_metadata_equal_the_released_code(attention, data):
    s = data.draw(released_shapes(attention))
    full = full_state_dict(s)
    ours_model, their_model = build_model(tu, s), build_model(on, s)
    assert _metadata_json(tu, ours_model) == _metadata_json(on, their_model)
    ours = load_ranks(tu, ours_model, [full], s.tp)
    theirs = load_ranks(on, their_model, [full], s.tp)
    for r in range(s.tp):
        _assert_same(ours[r], theirs[r])
    # Both consolidate the same saved shards.
    _assert_same(consolidate(tu, ours_model, ours), consolidate(on, their_model, ours))


def _with_released_lora_b_names(s: Shape, local: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our per-rank dict under the released code's fused GQA lora_B name (ON-02), for comparison."""
    if not (s.attention == "gqa" and s.fuse_qkv):
        return local
    return {k.replace("qkv_proj.lora_B.weight_qkv", "qkv_proj.lora_B.weight"): v for k, v in local.items()}


@pytest.mark.parametrize("attention", ATTENTIONS)
@settings(max_examples=15)
@given(data=st.data(), lora_on_output=st.booleans())
def test_lora_load_consolidate_and_metadata_equal_the_released_code(attention, data, lora_on_output):
    s = data.draw(released_shapes(attention, lora=True))
    adapter = full_adapter_state_dict(s, lora_on_output=lora_on_output)
    ours_model = build_model(tu, s, lora=True, lora_on_output=lora_on_output)
    their_model = build_model(on, s, lora=True, lora_on_output=lora_on_output)
    assert _metadata_json(tu, ours_model) == _metadata_json(on, their_model)
    ours = load_ranks(tu, ours_model, [adapter], s.tp, adapter_name="default")
    theirs = load_ranks(on, their_model, [adapter], s.tp, adapter_name="default")
    for r in range(s.tp):
        _assert_same(_with_released_lora_b_names(s, ours[r]), theirs[r])
    _assert_same(
        consolidate(tu, ours_model, ours, adapter_name="default"),
        consolidate(on, their_model, ours, adapter_name="default"),
    )


def _random_shards(model, s: Shape, adapter_only: bool) -> list[dict[str, torch.Tensor]]:
    """Arbitrary per-rank tensors of the saved shapes, as after training (K/V replicas differ, say)."""
    g = torch.Generator().manual_seed(s.tp + s.heads)
    shapes_ = local_shapes(model, tu)
    names = saved_names(model, tu, adapter_only=adapter_only)
    return [{n: torch.randn(shapes_[n], generator=g) for n in sorted(names)} for _ in range(s.tp)]


@pytest.mark.parametrize("attention", ATTENTIONS)
@settings(max_examples=15)
@given(data=st.data(), lora=st.booleans())
def test_consolidating_arbitrary_shards_equals_the_released_code(attention, data, lora):
    s = data.draw(released_shapes(attention))
    s = Shape(**{**s.__dict__, "bias": s.bias and not lora})
    ours_model, their_model = build_model(tu, s, lora=lora), build_model(on, s, lora=lora)
    shards = _random_shards(ours_model, s, adapter_only=lora)
    kwargs = {"adapter_name": "default"} if lora else {}
    _assert_same(
        consolidate(tu, ours_model, shards, **kwargs), consolidate(on, their_model, shards, **kwargs)
    )


@settings(max_examples=15)
@given(released_shapes())
def test_specs_read_each_others_metadata(s):
    ours, theirs = build_model(tu, s, lora=s.tp > 2), build_model(on, s, lora=s.tp > 2)
    for module, other in ((tu, on), (on, tu)):
        model = ours if module is tu else theirs
        for entry in json.loads(_metadata_json(module, model))["model_weight_transformation_specs"]:
            rebuilt = other.ModelWeightTransformationSpecs.from_metadata(json.loads(json.dumps(entry)))
            assert json.loads(json.dumps(rebuilt.to_metadata())) == entry


def _relevant(module, s: Shape) -> list[set[str]]:
    model = build_model(module, s)
    return [
        spec.get_relevant_parameter_names(m.specs.module_fully_qualified_name)
        for _, m in model.named_modules()
        if isinstance(m, module.CustomModule)
        for spec in m.specs
    ]


@pytest.mark.parametrize("attention", ATTENTIONS)
@settings(max_examples=8)
@given(data=st.data())
def test_relevant_parameter_names_equal_the_released_code_plus_the_ON_02_name(attention, data):
    s = data.draw(shapes(attention=attention))
    for ours, theirs in zip(_relevant(tu, s), _relevant(on, s), strict=True):
        assert theirs <= ours
        extra = {".".join(n.split(".")[-3:]) for n in ours - theirs}
        gqa_fused = any(n.endswith("qkv_proj.weight_qkv") for n in ours)
        expected = {"qkv_proj.lora_B.weight_qkv"} | ({"qkv_proj.lora_B.bias_qkv"} if s.bias else set())
        assert extra == (expected if gqa_fused else set())


@pytest.mark.parametrize(
    "targets",
    [
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        ["gate_proj", "up_proj"],
        ["o_proj", "down_proj"],
    ],
)
@pytest.mark.parametrize("attention", ["separate", "fused", "gqa"])
def test_peft_configs_equal_the_released_code(targets, attention):
    kv_heads, m = {"separate": (4, 1), "fused": (8, 1), "gqa": (2, 2)}[attention]
    s = Shape(tp=4, heads=8, kv_heads=kv_heads, head_dim=1, hidden=2, intermediate=4, vocab=4,
              attention=attention, kv_size_multiplier=m)  # fmt: skip
    ours_model, their_model = build_model(tu, s), build_model(on, s)
    config = LoraConfig(target_modules=targets)
    ours = tu.adapt_peft_config_for_model(ours_model, config)
    theirs = on.adapt_peft_config_for_model(their_model, config)
    assert ours.target_modules == theirs.target_modules
    back_ours = tu.to_original_peft_config_for_model(ours_model, ours)
    back_theirs = on.to_original_peft_config_for_model(their_model, theirs)
    assert back_ours.target_modules == back_theirs.target_modules == set(targets)


def test_partial_fusion_targets_fail_in_both():
    s = Shape(tp=2, heads=2, kv_heads=2, head_dim=1, hidden=2, intermediate=2, vocab=2, attention="fused")
    config = LoraConfig(target_modules=["q_proj", "v_proj"])
    for module in (tu, on):
        with pytest.raises(ValueError, match="k_proj"):
            module.adapt_peft_config_for_model(build_model(module, s), config)


def test_adapter_consolidation_with_an_untargeted_spec_fails_in_both():
    """Both raise KeyError when an adapter checkpoint carries a spec whose layer it does not adapt."""
    s = Shape(tp=2, heads=4, kv_heads=1, head_dim=1, hidden=2, intermediate=2, vocab=2, attention="gqa",
              kv_size_multiplier=2)  # fmt: skip
    model = build_model(tu, s, lora=True)
    per_rank = load_ranks(tu, model, [full_adapter_state_dict(s)], s.tp, adapter_name="default")
    metadata = tu.create_parameter_metadata(model)
    for entry in metadata["model_weight_transformation_specs"]:
        if entry["module_fully_qualified_name"].endswith("self_attn"):
            entry["specs"][0][1]["peft_type"] = None  # as if q/k/v were not LoRA targets
    sharded = {name: [sd[name] for sd in per_rank] for name in per_rank[0]}
    for module in (tu, on):
        specs = [
            module.ModelWeightTransformationSpecs.from_metadata(json.loads(json.dumps(e)))
            for e in metadata["model_weight_transformation_specs"]
        ]
        with pytest.raises(KeyError, match=r"qkv_proj\.weight_q"):
            module.to_original_weights(specs, sharded, metadata["parameters"], adapter_name="default")


# --- deliberate deviations -----------------------------------------------------------------------------


def _row_fusion(module, lora: bool):
    class RowFused(nn.Module, module.CustomModule):
        pass

    shape = Shape(
        tp=2, heads=1, kv_heads=1, head_dim=1, hidden=1, intermediate=1, vocab=1, attention="separate"
    )
    block = RowFused()
    base = _linear(2, 3, 8, "row", False)
    block.fused = _wrap(base, shape, 3, 8, "row") if lora else base
    block.specs.add_spec(module.FusedLinearsSpec("fused", ["a", "b"], False, "row", [4, 4], 2))
    root = nn.Module()
    root.m = block
    root.parameters_for_current_stage = set(root.state_dict())
    module.specialize_transformation_specs_for_model(root)
    return root


def test_row_fusion_lora_ON_01():
    g = torch.Generator().manual_seed(0)
    base = {"m.a.weight": torch.randn(3, 4, generator=g), "m.b.weight": torch.randn(3, 4, generator=g)}
    adapter = {f"m.{x}.lora_A.weight": torch.randn(2, 4, generator=g) for x in "ab"}
    adapter |= {f"m.{x}.lora_B.weight": torch.randn(3, 2, generator=g) for x in "ab"}
    # Base weights of a row fusion: identical.
    ours = load_ranks(tu, _row_fusion(tu, False), [base], 2)
    theirs = load_ranks(on, _row_fusion(on, False), [base], 2)
    for r in range(2):
        _assert_same(ours[r], theirs[r])
    # LoRA: the released load leaves lora_B as an unsharded (out, 2r) concatenation, which does not fit
    # the (out, r) parameter, and its consolidation always raises; ours fits and round-trips.
    their_model = _row_fusion(on, True)
    theirs = load_ranks(on, their_model, [adapter], 2, adapter_name="default")
    assert theirs[0]["m.fused.lora_B.weight"].shape == (3, 4)
    with pytest.raises(ValueError, match="Could not find LoRA weights"):
        consolidate(on, their_model, theirs, adapter_name="default")
    our_model = _row_fusion(tu, True)
    ours = load_ranks(tu, our_model, [adapter], 2, adapter_name="default")
    assert (
        ours[0]["m.fused.lora_B.weight"].shape == our_model.m.fused.lora_B["default"].weight.shape == (3, 2)
    )
    out = consolidate(tu, our_model, ours, adapter_name="default")
    assert torch.equal(out["m.a.lora_A.weight"], adapter["m.a.lora_A.weight"])


def test_fused_gqa_lora_b_goes_to_the_parameter_name_ON_02():
    s = Shape(tp=2, heads=4, kv_heads=1, head_dim=2, hidden=3, intermediate=2, vocab=2, attention="gqa",
              fuse_qkv=True, kv_size_multiplier=2, layers=1)  # fmt: skip
    adapter = full_adapter_state_dict(s)
    name = "base_model.model.model.layers.0.self_attn.qkv_proj.lora_B"
    for module, loaded, lost in (
        (on, f"{name}.weight", f"{name}.weight_qkv"),
        (tu, f"{name}.weight_qkv", None),
    ):
        model = build_model(module, s, lora=True)
        local = load_ranks(module, model, [adapter], s.tp, adapter_name="default")[0]
        parameters = {module.remove_adapter_name(n) for n, _ in model.named_parameters()}
        assert loaded in local
        assert (loaded in parameters) == (module is tu)  # the released name matches no parameter
        if lost is not None:
            assert lost not in local


def test_projections_split_over_files_ON_03():
    s = Shape(tp=2, heads=4, kv_heads=1, head_dim=1, hidden=2, intermediate=2, vocab=2, attention="gqa",
              fuse_qkv=True, kv_size_multiplier=2, layers=1)  # fmt: skip
    full = full_state_dict(s)
    v_name = "model.layers.0.self_attn.v_proj.weight"
    files = [{k: v for k, v in full.items() if k != v_name}, {v_name: full[v_name]}]
    with pytest.raises(KeyError, match="v_proj"):
        load_ranks(on, build_model(on, s), files, s.tp)
    model = build_model(tu, s)
    for split, whole in zip(load_ranks(tu, model, files, s.tp), load_ranks(tu, model, [full], s.tp)):
        _assert_same(split, whole)


def test_two_pending_fusions_ON_03():
    """The released code waits for one fused parameter at a time: two pending groups are never loaded."""
    s = Shape(tp=2, heads=2, kv_heads=2, head_dim=1, hidden=2, intermediate=2, vocab=2, attention="separate")
    full = full_state_dict(s)
    late = "model.layers.0.mlp.up_proj.weight"
    files = [{k: v for k, v in full.items() if k != late}, {late: full[late]}]
    fused = [f"model.layers.{i}.mlp.gate_up_proj.weight" for i in range(2)]
    with tensor_parallel_rank(2, 0):
        their_model, upstanding, loaded = build_model(on, s), {}, {}
        for file in files:
            loaded |= on.adapt_state_dict(their_model, dict(file), upstanding)
        assert not any(name in loaded for name in fused) and len(upstanding) == 4  # silently lost
    ours = load_ranks(tu, build_model(tu, s), files, s.tp)  # asserts nothing is left pending
    assert all(name in ours[0] for name in fused)


def test_uneven_shards_ON_05(monkeypatch):
    """The released helper asks NxD for ceil(N/T) rows per rank, so the last rank gets a short shard."""
    calls = []
    monkeypatch.setattr(on, "create_local_weight", lambda *args, **kwargs: calls.append(args[1:]))
    with tensor_parallel_rank(4, 3):
        on.create_local_weight_with_padding(torch.zeros(10, 2), 0, 1)
        assert calls == [(0, 3, 1)]  # 4 ranks x 3 rows for 10 rows: rank 3 would get 1 row
        with pytest.raises(ValueError, match="size 10 does not split into 4"):
            tu.create_local_weight_with_padding(torch.zeros(10, 2), 0, 1)


def test_all_linear_ON_06():
    s = Shape(tp=2, heads=2, kv_heads=2, head_dim=1, hidden=2, intermediate=2, vocab=2, attention="fused")
    with pytest.raises(AttributeError, match="remove"):
        on.adapt_peft_config_for_model(build_model(on, s), LoraConfig(target_modules="all-linear"))
    adapted = tu.adapt_peft_config_for_model(build_model(tu, s), LoraConfig(target_modules="all-linear"))
    assert adapted.target_modules == {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}


def test_gqa_biases_fail_in_the_released_code_and_load_here():
    """Proposed deviation: the released GQA spec cannot load attention biases (a 1-D tensor viewed as 3-D)."""
    s = Shape(tp=2, heads=4, kv_heads=1, head_dim=2, hidden=3, intermediate=2, vocab=2, attention="gqa",
              kv_size_multiplier=2, bias=True, layers=1)  # fmt: skip
    full = full_state_dict(s)
    with pytest.raises((IndexError, RuntimeError)):
        load_ranks(on, build_model(on, s), [full], s.tp)
    model = build_model(tu, s)
    _assert_same(consolidate(tu, model, load_ranks(tu, model, [full], s.tp)), full)
