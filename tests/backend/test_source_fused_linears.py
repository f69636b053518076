"""`SourceFusedLinearSpec` (templates/definitions/source_fused_linears.py, what NXS027 inserts into a model
whose source fuses q|k|v or gate|up in one linear) under the reference host and under the released
optimum-neuron 0.4.5 host code (`oracle_optimum_neuron`), ranks simulated in one process.

Oracles: the rank tensors of a plain column-parallel or fused (stride 2) layer are cut by hand from the
fused checkpoint tensor; for NxD's GQA layer they are what the released `GQAQKVColumnParallelLinearSpec`
makes of the q, k and v rows cut by hand. Consolidation must give back the checkpoint, bit for bit, through
the checkpoint metadata (which rebuilds the spec by its class name, so the registration is exercised too).
"""

from __future__ import annotations

import json
from types import ModuleType

import pytest
import torch
from torch import nn

from .definition_hosts import HOSTS, definitions, on
from .transformation_trees import ADAPTER, LoraParallelLinear, _param, tensor_parallel_rank

H, Q, KV, HEADS, KV_HEADS, INTER = 8, 8, 2, 4, 1, 6  # hidden, q rows, k (= v) rows, heads, KV heads, MLP


def _template(host_package: str) -> ModuleType:
    return definitions(host_package, "source_fused_linears")


def _blocks(tensor: torch.Tensor, tp: int, rank: int) -> torch.Tensor:
    return torch.chunk(tensor, tp, dim=0)[rank]


def _model(host: str, layout: str, tp: int, bias: bool) -> nn.Module:
    """`attn` (q|k|v in `qkv_proj`, output `o_proj`) or `mlp` (gate|up in `gate_up_proj`) as the generated
    model holds them: `layout` "separate" (plain column-parallel parts), "fused" or "gqa"."""
    host_module, package = HOSTS[host]
    template = _template(package)

    class Block(nn.Module, host_module.CustomModule):
        pass

    block = Block()
    specs = host_module.ModelWeightTransformationSpecs()
    if layout == "separate":
        for name, rows in (("q_proj", Q), ("k_proj", KV), ("v_proj", KV)):
            part = nn.Module()
            _param(part, "weight", (rows // tp, H), tp, 0)
            if bias:
                _param(part, "bias", (rows // tp,), tp, 0)
            block.add_module(name, part)
        source, parts, sizes = "qkv_proj", ["q_proj", "k_proj", "v_proj"], [Q, KV, KV]
    elif layout == "fused":
        fused = nn.Module()
        _param(fused, "weight", (2 * INTER // tp, H), tp, 0, stride=2)
        if bias:
            _param(fused, "bias", (2 * INTER // tp,), tp, 0, stride=2)
        block.add_module("gate_up_proj", fused)
        specs.add_spec(
            host_module.FusedLinearsSpec(
                fused_linear_name="gate_up_proj",
                linear_names=["gate_proj", "up_proj"],
                bias=bias,
                fuse_axis="column",
                original_dims=[INTER, INTER],
                tp_size=tp,
            )
        )
        source, parts, sizes = "gate_up_proj", ["gate_proj", "up_proj"], [INTER, INTER]
    else:
        multiplier = tp // KV_HEADS
        q_local, kv_local = Q // tp, KV * multiplier // tp
        gqa = nn.Module()
        for suffix, rows in (("q", q_local), ("k", kv_local), ("v", kv_local)):
            _param(gqa, f"weight_{suffix}", (rows, H), tp, 0)
        block.add_module("qkv_proj", gqa)
        specs.add_spec(
            host_module.GQAQKVColumnParallelLinearSpec(
                gqa_qkv_projection_name="qkv_proj",
                query_projection_name="q_proj",
                key_projection_name="k_proj",
                value_projection_name="v_proj",
                output_projection_name="o_proj",
                num_attention_heads=HEADS,
                num_key_value_heads=KV_HEADS,
                kv_size_multiplier=multiplier,
                q_output_size_per_partition=q_local,
                kv_output_size_per_partition=kv_local,
                fuse_qkv=False,
                bias=False,
                tp_size=tp,
            )
        )
        source, parts, sizes = "qkv_proj", ["q_proj", "k_proj", "v_proj"], [Q, KV, KV]
    if layout != "fused":
        output = nn.Module()
        _param(output, "weight", (H, Q // tp), tp, 1)
        block.add_module("o_proj", output)
    with tensor_parallel_rank(tp, 0):
        block.specs = template.with_source_fused_linear(specs, source, parts, sizes, bias=bias)
    root = nn.Module()
    root.add_module("block", block)
    root.parameters_for_current_stage = {name for name, _ in root.named_parameters()}
    host_module.specialize_transformation_specs_for_model(root)
    return root


def _checkpoint(layout: str, bias: bool) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    rows = 2 * INTER if layout == "fused" else Q + 2 * KV
    source = "gate_up_proj" if layout == "fused" else "qkv_proj"
    full = {f"block.{source}.weight": torch.randn(rows, H, generator=generator)}
    if bias:
        full[f"block.{source}.bias"] = torch.randn(rows, generator=generator)
    if layout != "fused":
        full["block.o_proj.weight"] = torch.randn(H, Q, generator=generator)
    return full


def _expected(layout: str, full: dict[str, torch.Tensor], tp: int, rank: int) -> dict[str, torch.Tensor]:
    """Rank `rank`'s tensors, cut by hand (GQA: the released spec over the q, k, v rows cut by hand)."""
    expected = {}
    for param in ("weight", "bias"):
        if layout == "fused" and f"block.gate_up_proj.{param}" in full:
            gate, up = torch.split(full[f"block.gate_up_proj.{param}"], [INTER, INTER])
            expected[f"block.gate_up_proj.{param}"] = torch.cat(
                [_blocks(gate, tp, rank), _blocks(up, tp, rank)]
            )
        elif layout == "separate" and f"block.qkv_proj.{param}" in full:
            q, k, v = torch.split(full[f"block.qkv_proj.{param}"], [Q, KV, KV])
            expected |= {f"block.{n}_proj.{param}": _blocks(t, tp, rank) for n, t in zip("qkv", (q, k, v))}
    if layout == "separate":
        expected["block.o_proj.weight"] = torch.chunk(full["block.o_proj.weight"], tp, dim=1)[rank]
    if layout == "gqa":
        q, k, v = torch.split(full["block.qkv_proj.weight"], [Q, KV, KV])
        separate = {"block.q_proj.weight": q, "block.k_proj.weight": k, "block.v_proj.weight": v}
        separate["block.o_proj.weight"] = full["block.o_proj.weight"]
        spec = on.GQAQKVColumnParallelLinearSpec(
            "qkv_proj", "q_proj", "k_proj", "v_proj", "o_proj", HEADS, KV_HEADS, tp // KV_HEADS,
            Q // tp, KV * (tp // KV_HEADS) // tp, False, False, tp,
        )  # fmt: skip
        with tensor_parallel_rank(tp, rank):
            expected = spec._adapt_state_dict("block", {}, separate, {}, inplace=False)
    return expected


def _load(host: str, model: nn.Module, full: dict[str, torch.Tensor], tp: int, rank: int) -> dict:
    with tensor_parallel_rank(tp, rank):
        loaded = HOSTS[host][0].adapt_state_dict(model, {k: v.clone() for k, v in full.items()}, {})
    return loaded


def _consolidate(host: str, model: nn.Module, per_rank: list[dict[str, torch.Tensor]]) -> dict:
    host_module = HOSTS[host][0]
    metadata = json.loads(json.dumps(host_module.create_parameter_metadata(model)))
    specs = [
        host_module.ModelWeightTransformationSpecs.from_metadata(m)
        for m in metadata["model_weight_transformation_specs"]
    ]
    assert [type(s).__name__ for m in specs for s in m] == ["SourceFusedLinearSpec"]
    sharded = {name: [tensors[name] for tensors in per_rank] for name in per_rank[0]}
    return host_module.to_original_weights(specs, sharded, metadata["parameters"])


CASES = [
    ("separate", 2, False),
    ("separate", 2, True),
    ("fused", 2, False),
    ("fused", 2, True),
    ("gqa", 2, False),
]


@pytest.mark.parametrize("host", sorted(HOSTS))
@pytest.mark.parametrize(("layout", "tp", "bias"), CASES, ids=[f"{c[0]}-T{c[1]}-bias{c[2]}" for c in CASES])
def test_fused_checkpoint_loads_into_the_parts_and_comes_back_bit_for_bit(host, layout, tp, bias) -> None:
    model = _model(host, layout, tp, bias)
    full = _checkpoint(layout, bias)
    per_rank = []
    for rank in range(tp):
        loaded = _load(host, model, full, tp, rank)
        expected = _expected(layout, full, tp, rank)
        assert sorted(loaded) == sorted(expected)
        for name, tensor in expected.items():
            assert torch.equal(loaded[name], tensor), f"{host} {layout} rank {rank}: {name}"
        per_rank.append(loaded)
    consolidated = _consolidate(host, model, per_rank)
    assert sorted(consolidated) == sorted(full)
    for name, tensor in full.items():
        assert torch.equal(consolidated[name], tensor), f"{host} {layout}: {name} is not given back"


def test_a_wrong_part_size_fails_the_round_trip() -> None:
    """Negative: sizes that do not match the checkpoint's cut (k and v swapped in length) load the wrong
    rows, which the hand-cut oracle sees."""
    model = _model("released", "separate", 2, False)
    spec = next(iter(model.block.specs))
    spec.part_sizes = [Q, KV + 1, KV - 1]
    with pytest.raises((AssertionError, RuntimeError)):
        loaded = _load("released", model, _checkpoint("separate", False), 2, 0)
        expected = _expected("separate", _checkpoint("separate", False), 2, 0)
        for name, tensor in expected.items():
            assert torch.equal(loaded[name], tensor)


def _lora_model(host: str, tp: int, r: int) -> nn.Module:
    """`mlp.gate_up_proj` (stride 2) wrapped by LoRA, its FusedLinearsSpec wrapped by the source spec."""
    host_module, package = HOSTS[host]
    template = _template(package)

    class Block(nn.Module, host_module.CustomModule):
        pass

    base = nn.Module()
    _param(base, "weight", (2 * INTER // tp, H), tp, 0, stride=2)
    lora_a, lora_b = nn.Module(), nn.Module()
    _param(lora_a, "weight", (r, H), tp, None)
    _param(lora_b, "weight", (2 * INTER // tp, r), tp, 0)
    block = Block()
    block.add_module("gate_up_proj", LoraParallelLinear(base, lora_a, lora_b))
    specs = host_module.ModelWeightTransformationSpecs()
    specs.add_spec(
        host_module.FusedLinearsSpec(
            "gate_up_proj", ["gate_proj", "up_proj"], False, "column", [INTER, INTER], tp
        )
    )
    with tensor_parallel_rank(tp, 0):
        block.specs = template.with_source_fused_linear(
            specs, "gate_up_proj", ["gate_proj", "up_proj"], [INTER] * 2, False
        )
    root = nn.Module()
    root.add_module("block", block)
    root.parameters_for_current_stage = {name for name, _ in root.named_parameters()}
    host_module.specialize_transformation_specs_for_model(root)
    return root


@pytest.mark.parametrize("host", sorted(HOSTS))
def test_a_lora_adapter_on_the_fused_linear_loads_and_comes_back_bit_for_bit(host: str) -> None:
    """lora_B splits like the weight; the fused layer's lora_A is the checkpoint's own (the wrapped spec's
    mean of equal copies is replaced, so nothing rounds); consolidation gives both back exactly."""
    tp, r = 2, 3
    model = _lora_model(host, tp, r)
    assert [s.peft_type for s in model.block.specs] == ["lora"]
    generator = torch.Generator().manual_seed(1)
    adapter = {
        "block.gate_up_proj.lora_A.weight": torch.randn(r, H, generator=generator) / 3,
        "block.gate_up_proj.lora_B.weight": torch.randn(2 * INTER, r, generator=generator) / 3,
    }
    gate_b, up_b = torch.split(adapter["block.gate_up_proj.lora_B.weight"], [INTER, INTER])
    per_rank = []
    for rank in range(tp):
        with tensor_parallel_rank(tp, rank):
            loaded = HOSTS[host][0].adapt_state_dict(
                model, {k: v.clone() for k, v in adapter.items()}, {}, adapter_name=ADAPTER
            )
        assert torch.equal(
            loaded["block.gate_up_proj.lora_A.weight"], adapter["block.gate_up_proj.lora_A.weight"]
        )
        expected_b = torch.cat([_blocks(gate_b, tp, rank), _blocks(up_b, tp, rank)])
        assert torch.equal(loaded["block.gate_up_proj.lora_B.weight"], expected_b)
        per_rank.append({k: v for k, v in loaded.items() if "lora_" in k})
    host_module = HOSTS[host][0]
    metadata = json.loads(json.dumps(host_module.create_parameter_metadata(model)))
    specs = [
        host_module.ModelWeightTransformationSpecs.from_metadata(m)
        for m in metadata["model_weight_transformation_specs"]
    ]
    sharded = {name: [tensors[name] for tensors in per_rank] for name in per_rank[0]}
    consolidated = host_module.to_original_weights(
        specs, sharded, metadata["parameters"], adapter_name=ADAPTER
    )
    assert sorted(consolidated) == sorted(adapter)
    for name, tensor in adapter.items():
        assert torch.equal(consolidated[name], tensor), f"{host}: {name} is not given back"


# --- parts interleaved per head (GPT-NeoX's query_key_value) --------------------------------------------

I_HEADS, I_HEAD_DIM = 4, 2  # 4 heads of 2 features: rows [q0 q0 k0 k0 v0 v0 q1 q1 k1 k1 v1 v1 ...]
I_ROWS = 3 * I_HEADS * I_HEAD_DIM


def _interleaved_rows(part: int) -> list[int]:
    """The checkpoint rows of part `part` (0 q, 1 k, 2 v), head by head: a hand-written index table."""
    return [
        head * 3 * I_HEAD_DIM + part * I_HEAD_DIM + feature
        for head in range(I_HEADS)
        for feature in range(I_HEAD_DIM)
    ]


def test_the_index_table_is_what_a_per_head_view_then_chunk_reads() -> None:
    """The oracle's table against the source's own reading: view (heads, 3 * d), chunk the last dim."""
    fused = torch.arange(I_ROWS)
    viewed = fused.view(I_HEADS, 3 * I_HEAD_DIM).chunk(3, dim=-1)
    for part in range(3):
        assert viewed[part].reshape(-1).tolist() == _interleaved_rows(part)


def _interleaved_model(host: str, layout: str, tp: int, bias: bool) -> nn.Module:
    """`attn` with q|k|v interleaved per head in the checkpoint's `query_key_value`, held as plain
    column-parallel q/k/v ("separate") or NxD's GQA layer ("gqa", one K/V head per query head)."""
    host_module, package = HOSTS[host]
    template = _template(package)

    class Block(nn.Module, host_module.CustomModule):
        pass

    block = Block()
    specs = host_module.ModelWeightTransformationSpecs()
    rows = I_HEADS * I_HEAD_DIM
    if layout == "separate":
        for name in ("q_proj", "k_proj", "v_proj"):
            part = nn.Module()
            _param(part, "weight", (rows // tp, H), tp, 0)
            if bias:
                _param(part, "bias", (rows // tp,), tp, 0)
            block.add_module(name, part)
    else:
        gqa = nn.Module()
        for suffix in "qkv":
            _param(gqa, f"weight_{suffix}", (rows // tp, H), tp, 0)
        block.add_module("qkv_proj", gqa)
        specs.add_spec(
            host_module.GQAQKVColumnParallelLinearSpec(
                "qkv_proj",
                "q_proj",
                "k_proj",
                "v_proj",
                "dense",
                I_HEADS,
                I_HEADS,
                1,
                rows // tp,
                rows // tp,
                False,
                False,
                tp,
            )
        )
    output = nn.Module()
    _param(output, "weight", (H, rows // tp), tp, 1)
    block.add_module("dense", output)
    with tensor_parallel_rank(tp, 0):
        block.specs = template.with_source_fused_linear(
            specs, "query_key_value", ["q_proj", "k_proj", "v_proj"], [rows] * 3, bias=bias, groups=I_HEADS
        )
    root = nn.Module()
    root.add_module("block", block)
    root.parameters_for_current_stage = {name for name, _ in root.named_parameters()}
    host_module.specialize_transformation_specs_for_model(root)
    return root


INTERLEAVED_CASES = [("separate", False), ("separate", True), ("gqa", False)]


@pytest.mark.parametrize("host", sorted(HOSTS))
@pytest.mark.parametrize(
    ("layout", "bias"), INTERLEAVED_CASES, ids=[f"{c[0]}-bias{c[1]}" for c in INTERLEAVED_CASES]
)
def test_a_per_head_interleaved_checkpoint_loads_head_aligned_and_comes_back_bit_for_bit(
    host: str, layout: str, bias: bool
) -> None:
    """Each rank gets whole heads' q, k and v, de-interleaved by the index table (GQA: the released spec
    over the de-interleaved rows); consolidation interleaves them again, bit for bit."""
    tp = 2
    model = _interleaved_model(host, layout, tp, bias)
    generator = torch.Generator().manual_seed(2)
    full = {"block.query_key_value.weight": torch.randn(I_ROWS, H, generator=generator)}
    if bias:
        full["block.query_key_value.bias"] = torch.randn(I_ROWS, generator=generator)
    full["block.dense.weight"] = torch.randn(H, I_HEADS * I_HEAD_DIM, generator=generator)
    parts = {
        param: [full[f"block.query_key_value.{param}"][_interleaved_rows(p)] for p in range(3)]
        for param in ("weight", "bias")
        if f"block.query_key_value.{param}" in full
    }
    per_rank = []
    for rank in range(tp):
        loaded = _load(host, model, full, tp, rank)
        if layout == "separate":
            expected = {
                f"block.{n}_proj.{param}": _blocks(tensors[i], tp, rank)
                for param, tensors in parts.items()
                for i, n in enumerate("qkv")
            }
            expected["block.dense.weight"] = torch.chunk(full["block.dense.weight"], tp, dim=1)[rank]
        else:
            separate = {f"block.{n}_proj.weight": parts["weight"][i] for i, n in enumerate("qkv")}
            separate["block.dense.weight"] = full["block.dense.weight"]
            rows = I_HEADS * I_HEAD_DIM
            spec = on.GQAQKVColumnParallelLinearSpec(
                "qkv_proj", "q_proj", "k_proj", "v_proj", "dense", I_HEADS, I_HEADS, 1,
                rows // tp, rows // tp, False, False, tp,
            )  # fmt: skip
            with tensor_parallel_rank(tp, rank):
                expected = spec._adapt_state_dict("block", {}, separate, {}, inplace=False)
        assert sorted(loaded) == sorted(expected)
        for name, tensor in expected.items():
            assert torch.equal(loaded[name], tensor), f"{host} {layout} rank {rank}: {name}"
        per_rank.append(loaded)
    consolidated = _consolidate(host, model, per_rank)
    assert sorted(consolidated) == sorted(full)
    for name, tensor in full.items():
        assert torch.equal(consolidated[name], tensor), f"{host} {layout}: {name} is not given back"


def test_contiguous_sizes_on_an_interleaved_checkpoint_load_the_wrong_rows() -> None:
    """Negative: the same spec without `groups` reads the checkpoint as [q | k | v] one after the other,
    which the index table sees."""
    model = _interleaved_model("released", "separate", 2, False)
    next(iter(model.block.specs)).groups = 1
    full = {
        "block.query_key_value.weight": torch.randn(I_ROWS, H, generator=torch.Generator().manual_seed(3)),
        "block.dense.weight": torch.zeros(H, I_HEADS * I_HEAD_DIM),
    }
    loaded = _load("released", model, full, 2, 0)
    q_rows = full["block.query_key_value.weight"][_interleaved_rows(0)]
    assert not torch.equal(loaded["block.q_proj.weight"], _blocks(q_rows, 2, 0))


# --- parts interleaved per K/V group (Falcon's new decoder architecture) ---------------------------------

G_KV, G_HEADS, G_HEAD_DIM = 2, 4, 2  # per K/V group: [q q | q q | k | v] (2 query heads, then k, then v)


def _grouped_rows(part: int) -> list[int]:
    """The checkpoint rows of q (0), k (1) or v (2) when each K/V group holds its query heads, then its k
    head, then its v head: a hand-written index table."""
    per_group = (G_HEADS // G_KV + 2) * G_HEAD_DIM
    q_rows = G_HEADS // G_KV * G_HEAD_DIM
    offset, width = [(0, q_rows), (q_rows, G_HEAD_DIM), (q_rows + G_HEAD_DIM, G_HEAD_DIM)][part]
    return [group * per_group + offset + row for group in range(G_KV) for row in range(width)]


def test_a_checkpoint_grouped_per_kv_head_reaches_the_gqa_layer_with_replicated_kv() -> None:
    """K/V groups (2 K/V heads, 4 query heads) at T=4: NxD's GQA layer replicates each K/V head twice
    (kv_size_multiplier 2). Rank tensors: the released spec over the rows the index table cuts; the
    consolidated checkpoint comes back bit for bit, under both hosts."""
    tp, multiplier = 4, 2
    q_size, kv_size = G_HEADS * G_HEAD_DIM, G_KV * G_HEAD_DIM
    q_local, kv_local = q_size // tp, kv_size * multiplier // tp
    total = q_size + 2 * kv_size
    generator = torch.Generator().manual_seed(4)
    full = {
        "block.query_key_value.weight": torch.randn(total, H, generator=generator),
        "block.dense.weight": torch.randn(H, q_size, generator=generator),
    }
    names = ["q_proj", "k_proj", "v_proj"]
    separate = {
        f"block.{name}.weight": full["block.query_key_value.weight"][_grouped_rows(part)]
        for part, name in enumerate(names)
    }
    separate["block.dense.weight"] = full["block.dense.weight"]
    fields = ("qkv_proj", "q_proj", "k_proj", "v_proj", "dense", G_HEADS, G_KV, multiplier)
    for host in sorted(HOSTS):
        host_module, package = HOSTS[host]

        class Block(nn.Module, host_module.CustomModule):
            pass

        block = Block()
        gqa = nn.Module()
        for suffix, rows in (("q", q_local), ("k", kv_local), ("v", kv_local)):
            _param(gqa, f"weight_{suffix}", (rows, H), tp, 0)
        block.add_module("qkv_proj", gqa)
        output = nn.Module()
        _param(output, "weight", (H, q_size // tp), tp, 1)
        block.add_module("dense", output)
        specs = host_module.ModelWeightTransformationSpecs()
        specs.add_spec(
            host_module.GQAQKVColumnParallelLinearSpec(*fields, q_local, kv_local, False, False, tp)
        )
        with tensor_parallel_rank(tp, 0):
            block.specs = _template(package).with_source_fused_linear(
                specs, "query_key_value", names, [q_size, kv_size, kv_size], bias=False, groups=G_KV
            )
        root = nn.Module()
        root.add_module("block", block)
        root.parameters_for_current_stage = {name for name, _ in root.named_parameters()}
        host_module.specialize_transformation_specs_for_model(root)
        oracle = on.GQAQKVColumnParallelLinearSpec(*fields, q_local, kv_local, False, False, tp)
        per_rank = []
        for rank in range(tp):
            loaded = _load(host, root, full, tp, rank)
            with tensor_parallel_rank(tp, rank):
                expected = oracle._adapt_state_dict("block", {}, dict(separate), {}, inplace=False)
            assert sorted(loaded) == sorted(expected)
            for name, tensor in expected.items():
                assert torch.equal(loaded[name], tensor), f"{host} rank {rank}: {name}"
            per_rank.append(loaded)
        consolidated = _consolidate(host, root, per_rank)
        assert sorted(consolidated) == sorted(full)
        for name, tensor in full.items():
            assert torch.equal(consolidated[name], tensor), f"{host}: {name} is not given back"


def test_the_grouped_index_table_is_what_the_grouped_view_reads() -> None:
    """The oracle's table against Falcon's own reading: view (kv groups, heads/kv + 2, d), q = [:-2],
    k = [-2], v = [-1]."""
    fused = torch.arange((G_HEADS + 2 * G_KV) * G_HEAD_DIM)
    viewed = fused.view(G_KV, G_HEADS // G_KV + 2, G_HEAD_DIM)
    for part, rows in enumerate((viewed[:, :-2], viewed[:, [-2]], viewed[:, [-1]])):
        assert rows.reshape(-1).tolist() == _grouped_rows(part)


# --- parts grouped first, in another order (CodeGen's qkv_proj: mp_num groups of q|v|k) ----------------

M_GROUPS, M_HEADS, M_HEAD_DIM = 4, 8, 2  # 4 groups, each [q of 2 heads | v of 2 heads | k of 2 heads]
M_WIDTH = M_HEADS * M_HEAD_DIM  # one part's rows
M_ORDER = ("q", "v", "k")  # the order of the parts inside a group, as the source splits them


def _mp_rows(part: str) -> list[int]:
    """The checkpoint rows of q, k or v when the rows form 4 groups, each holding a quarter of q, then of
    v, then of k: a hand-written index table."""
    share = M_WIDTH // M_GROUPS
    offset = M_ORDER.index(part) * share
    return [group * 3 * share + offset + row for group in range(M_GROUPS) for row in range(share)]


def test_the_mp_index_table_is_what_the_grouped_split_reads() -> None:
    """The oracle's table against CodeGen's own reading: `qkv.reshape(qkv.shape[:-1] + (mp_num, -1))`,
    then `query, value, key = torch.split(qkv_split, local_dim, dim=-1)`."""
    qkv = torch.arange(3 * M_WIDTH)[None, :]
    qkv_split = qkv.reshape(qkv.shape[:-1] + (M_GROUPS, -1))  # noqa: RUF005 (as the source writes it)
    query, value, key = torch.split(qkv_split, M_WIDTH // M_GROUPS, dim=-1)
    for part, rows in (("q", query), ("v", value), ("k", key)):
        assert rows.reshape(-1).tolist() == _mp_rows(part)


@pytest.mark.parametrize("host", sorted(HOSTS))
@pytest.mark.parametrize("layout", ["separate", "gqa"])
def test_an_mp_grouped_checkpoint_in_q_v_k_order_loads_and_comes_back_bit_for_bit(
    host: str, layout: str
) -> None:
    """The parts given in the source's order (q, v, k) with 4 groups: each rank gets its heads' q, k and v
    rows as the index table cuts them (GQA: the released spec over those rows); consolidation groups them
    again, bit for bit."""
    tp = 2
    host_module, package = HOSTS[host]

    class Block(nn.Module, host_module.CustomModule):
        pass

    block = Block()
    specs = host_module.ModelWeightTransformationSpecs()
    fields = ("qkv_proj", "q_proj", "k_proj", "v_proj", "out_proj", M_HEADS, M_HEADS, 1)
    local = M_WIDTH // tp
    if layout == "separate":
        for name in ("q_proj", "v_proj", "k_proj"):
            part = nn.Module()
            _param(part, "weight", (local, H), tp, 0)
            block.add_module(name, part)
    else:
        gqa = nn.Module()
        for suffix in "qkv":
            _param(gqa, f"weight_{suffix}", (local, H), tp, 0)
        block.add_module("qkv_proj", gqa)
        specs.add_spec(host_module.GQAQKVColumnParallelLinearSpec(*fields, local, local, False, False, tp))
    output = nn.Module()
    _param(output, "weight", (H, local), tp, 1)
    block.add_module("out_proj", output)
    names = [f"{part}_proj" for part in M_ORDER]
    with tensor_parallel_rank(tp, 0):
        block.specs = _template(package).with_source_fused_linear(
            specs, "qkv_proj", names, [M_WIDTH] * 3, bias=False, groups=M_GROUPS
        )
    root = nn.Module()
    root.add_module("block", block)
    root.parameters_for_current_stage = {name for name, _ in root.named_parameters()}
    host_module.specialize_transformation_specs_for_model(root)

    generator = torch.Generator().manual_seed(5)
    full = {
        "block.qkv_proj.weight": torch.randn(3 * M_WIDTH, H, generator=generator),
        "block.out_proj.weight": torch.randn(H, M_WIDTH, generator=generator),
    }
    separate = {f"block.{p}_proj.weight": full["block.qkv_proj.weight"][_mp_rows(p)] for p in "qkv"}
    per_rank = []
    for rank in range(tp):
        loaded = _load(host, root, full, tp, rank)
        if layout == "separate":
            expected = {name: _blocks(tensor, tp, rank) for name, tensor in separate.items()}
            expected["block.out_proj.weight"] = torch.chunk(full["block.out_proj.weight"], tp, dim=1)[rank]
        else:
            oracle = on.GQAQKVColumnParallelLinearSpec(*fields, local, local, False, False, tp)
            inputs = {**separate, "block.out_proj.weight": full["block.out_proj.weight"]}
            with tensor_parallel_rank(tp, rank):
                expected = oracle._adapt_state_dict("block", {}, inputs, {}, inplace=False)
        assert sorted(loaded) == sorted(expected)
        for name, tensor in expected.items():
            assert torch.equal(loaded[name], tensor), f"{host} {layout} rank {rank}: {name}"
        per_rank.append(loaded)
    consolidated = _consolidate(host, root, per_rank)
    assert sorted(consolidated) == sorted(full)
    for name, tensor in full.items():
        assert torch.equal(consolidated[name], tensor), f"{host} {layout}: {name} is not given back"
