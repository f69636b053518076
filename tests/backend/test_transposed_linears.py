"""`TransposedSourceFusedLinearSpec` (templates/definitions/transposed_linears.py, what NXS027 inserts into a
model whose source builds linears as transformers' `Conv1D`, weight `[in, out]`) under the reference host
and under the released optimum-neuron 0.4.5 host code (`oracle_optimum_neuron`), ranks simulated in one
process.

Oracles: transformers' own `Conv1D` (its weight transposed by hand is the `nn.Linear` weight that computes
the same outputs); each rank's tensors cut by hand from that transposed weight (for NxD's GQA layer, what
the released `GQAQKVColumnParallelLinearSpec` makes of the q, k and v rows cut by hand). Consolidation must
give back the Conv1D checkpoint, bit for bit, through the checkpoint metadata (which rebuilds the spec by
its class name).
"""

from __future__ import annotations

import json
from types import ModuleType

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from .definition_hosts import HOSTS, definitions, on
from .transformation_trees import ADAPTER, LoraParallelLinear, _param, tensor_parallel_rank

H, Q, KV, HEADS, KV_HEADS, INTER = 8, 8, 2, 4, 1, 6  # hidden, q rows, k (= v) rows, heads, KV heads, MLP


def _template(host_package: str) -> ModuleType:
    return definitions(host_package, "transposed_linears")


def test_a_conv1d_weight_transposed_is_the_linear_weight():
    """The oracle's premise, against transformers: Conv1D(nf, nx) computes x @ W + b with W `[nx, nf]`."""
    torch.manual_seed(0)
    conv = Conv1D(INTER, H)
    nn.init.normal_(conv.weight)
    nn.init.normal_(conv.bias)
    x = torch.randn(2, 3, H)
    assert conv.weight.shape == (H, INTER)
    assert torch.allclose(conv(x), nn.functional.linear(x, conv.weight.t(), conv.bias), atol=1e-6)


def _model(host: str, layout: str, tp: int) -> nn.Module:
    """`block` as the generated model holds a Conv1D of the source: "column" (`c_fc`, column-parallel),
    "row" (`c_proj`, row-parallel, bias replicated), "qkv" (`c_attn` split into column-parallel q, k, v,
    biases too) or "gqa" (`c_attn` split into NxD's GQA layer, no bias)."""
    host_module, package = HOSTS[host]
    template = _template(package)

    class Block(nn.Module, host_module.CustomModule):
        pass

    block = Block()
    specs = host_module.ModelWeightTransformationSpecs()
    if layout == "column":
        layer = nn.Module()
        _param(layer, "weight", (INTER // tp, H), tp, 0)
        _param(layer, "bias", (INTER // tp,), tp, 0)
        block.add_module("c_fc", layer)
        source, parts, sizes, bias = "c_fc", ["c_fc"], [INTER], True
    elif layout == "row":
        layer = nn.Module()
        _param(layer, "weight", (H, INTER // tp), tp, 1)
        _param(layer, "bias", (H,), tp, None)
        block.add_module("c_proj", layer)
        source, parts, sizes, bias = "c_proj", ["c_proj"], [H], True
    elif layout == "qkv":
        for name, rows in (("q_proj", Q), ("k_proj", KV), ("v_proj", KV)):
            part = nn.Module()
            _param(part, "weight", (rows // tp, H), tp, 0)
            _param(part, "bias", (rows // tp,), tp, 0)
            block.add_module(name, part)
        source, parts, sizes, bias = "c_attn", ["q_proj", "k_proj", "v_proj"], [Q, KV, KV], True
    else:
        multiplier = tp // KV_HEADS
        q_local, kv_local = Q // tp, KV * multiplier // tp
        gqa = nn.Module()
        for suffix, rows in (("q", q_local), ("k", kv_local), ("v", kv_local)):
            _param(gqa, f"weight_{suffix}", (rows, H), tp, 0)
        block.add_module("qkv_proj", gqa)
        output = nn.Module()
        _param(output, "weight", (H, Q // tp), tp, 1)
        block.add_module("o_proj", output)
        specs.add_spec(
            host_module.GQAQKVColumnParallelLinearSpec(
                "qkv_proj",
                "q_proj",
                "k_proj",
                "v_proj",
                "o_proj",
                HEADS,
                KV_HEADS,
                multiplier,
                q_local,
                kv_local,
                False,
                False,
                tp,
            )
        )
        source, parts, sizes, bias = "c_attn", ["q_proj", "k_proj", "v_proj"], [Q, KV, KV], False
    with tensor_parallel_rank(tp, 0):
        block.specs = template.with_transposed_source_fused_linear(specs, source, parts, sizes, bias=bias)
    root = nn.Module()
    root.add_module("block", block)
    root.parameters_for_current_stage = {name for name, _ in root.named_parameters()}
    host_module.specialize_transformation_specs_for_model(root)
    return root


def _checkpoint(layout: str) -> dict[str, torch.Tensor]:
    """The Conv1D tensors transformers saves: weight `[in, out]`, bias `[out]`."""
    generator = torch.Generator().manual_seed(0)
    name, out = {"column": ("c_fc", INTER), "row": ("c_proj", H)}.get(layout, ("c_attn", Q + 2 * KV))
    inputs = INTER if layout == "row" else H
    full = {f"block.{name}.weight": torch.randn(inputs, out, generator=generator)}
    if layout != "gqa":
        full[f"block.{name}.bias"] = torch.randn(out, generator=generator)
    else:  # the GQA layer's spec reads its output projection too (a plain linear here)
        full["block.o_proj.weight"] = torch.randn(H, Q, generator=generator)
    return full


def _expected(layout: str, full: dict[str, torch.Tensor], tp: int, rank: int) -> dict[str, torch.Tensor]:
    """Rank `rank`'s tensors, cut by hand from the transposed weight."""
    if layout == "column":
        weight = full["block.c_fc.weight"].t()
        return {
            "block.c_fc.weight": torch.chunk(weight, tp, dim=0)[rank],
            "block.c_fc.bias": torch.chunk(full["block.c_fc.bias"], tp, dim=0)[rank],
        }
    if layout == "row":
        weight = full["block.c_proj.weight"].t()
        return {
            "block.c_proj.weight": torch.chunk(weight, tp, dim=1)[rank],
            "block.c_proj.bias": full["block.c_proj.bias"],
        }
    q, k, v = torch.split(full["block.c_attn.weight"].t(), [Q, KV, KV])
    if layout == "qkv":
        qb, kb, vb = torch.split(full["block.c_attn.bias"], [Q, KV, KV])
        expected = {f"block.{n}_proj.weight": torch.chunk(t, tp)[rank] for n, t in zip("qkv", (q, k, v))}
        expected |= {f"block.{n}_proj.bias": torch.chunk(t, tp)[rank] for n, t in zip("qkv", (qb, kb, vb))}
        return expected
    separate = {"block.q_proj.weight": q, "block.k_proj.weight": k, "block.v_proj.weight": v}
    separate["block.o_proj.weight"] = full["block.o_proj.weight"]
    spec = on.GQAQKVColumnParallelLinearSpec(
        "qkv_proj", "q_proj", "k_proj", "v_proj", "o_proj", HEADS, KV_HEADS, tp // KV_HEADS,
        Q // tp, KV * (tp // KV_HEADS) // tp, False, False, tp,
    )  # fmt: skip
    with tensor_parallel_rank(tp, rank):
        return spec._adapt_state_dict("block", {}, separate, {}, inplace=False)


LAYOUTS = ["column", "row", "qkv", "gqa"]
# NxD's GQA layer stands in for q/k/v only where the KV heads are fewer than the ranks: no gqa at TP 1.
CASES = [(layout, tp) for layout in LAYOUTS for tp in (1, 2) if not (layout == "gqa" and tp == 1)]


@pytest.mark.parametrize("host", sorted(HOSTS))
@pytest.mark.parametrize(("layout", "tp"), CASES)
def test_a_conv1d_checkpoint_loads_transposed_and_comes_back_bit_for_bit(host, layout, tp) -> None:
    model = _model(host, layout, tp)
    full = _checkpoint(layout)
    per_rank = []
    for rank in range(tp):
        with tensor_parallel_rank(tp, rank):
            loaded = HOSTS[host][0].adapt_state_dict(model, {k: v.clone() for k, v in full.items()}, {})
        expected = _expected(layout, full, tp, rank)
        assert sorted(loaded) == sorted(expected)
        for name, tensor in expected.items():
            assert torch.equal(loaded[name], tensor), f"{host} {layout} rank {rank}: {name}"
        per_rank.append(loaded)
    host_module = HOSTS[host][0]
    metadata = json.loads(json.dumps(host_module.create_parameter_metadata(model)))
    specs = [
        host_module.ModelWeightTransformationSpecs.from_metadata(m)
        for m in metadata["model_weight_transformation_specs"]
    ]
    assert [type(s).__name__ for m in specs for s in m] == ["TransposedSourceFusedLinearSpec"]
    sharded = {name: [tensors[name] for tensors in per_rank] for name in per_rank[0]}
    consolidated = host_module.to_original_weights(specs, sharded, metadata["parameters"])
    assert sorted(consolidated) == sorted(full)
    for name, tensor in full.items():
        assert consolidated[name].shape == tensor.shape
        assert torch.equal(consolidated[name], tensor), f"{host} {layout}: {name} is not given back"


def test_without_the_transposition_the_checkpoint_does_not_load_as_the_linear():
    """Negative: the plain source spec on the same checkpoint cuts the `[in, out]` tensor by rows, which is
    not what the parallel layer computes with (the hand-cut oracle sees it)."""
    host_module, package = HOSTS["released"]
    model = _model("released", "column", 2)
    spec = next(iter(model.block.specs))
    plain = _template(package).SourceFusedLinearSpec(
        spec.source_name, spec.part_names, spec.part_sizes, spec.bias, spec.inner, spec.groups
    )
    model.block.specs = host_module.ModelWeightTransformationSpecs(module_fully_qualified_name="block")
    model.block.specs.add_spec(plain)
    full = _checkpoint("column")
    with pytest.raises((AssertionError, RuntimeError)):
        with tensor_parallel_rank(2, 0):
            loaded = host_module.adapt_state_dict(model, {k: v.clone() for k, v in full.items()}, {})
        assert torch.equal(loaded["block.c_fc.weight"], _expected("column", full, 2, 0)["block.c_fc.weight"])


def _lora_model(host: str, layout: str, tp: int, r: int) -> nn.Module:
    """`block.c_fc` (column-parallel) or `block.c_proj` (row-parallel) wrapped by LoRA, with the spec."""
    host_module, package = HOSTS[host]

    class Block(nn.Module, host_module.CustomModule):
        pass

    base, lora_a, lora_b = nn.Module(), nn.Module(), nn.Module()
    if layout == "column":
        name, out, inputs = "c_fc", INTER, H
        _param(base, "weight", (INTER // tp, H), tp, 0)
        _param(lora_a, "weight", (r, H), tp, None)
        _param(lora_b, "weight", (INTER // tp, r), tp, 0)
    else:
        name, out, inputs = "c_proj", H, INTER
        _param(base, "weight", (H, INTER // tp), tp, 1)
        _param(lora_a, "weight", (r, INTER // tp), tp, 1)
        _param(lora_b, "weight", (H, r), tp, None)
    block = Block()
    block.add_module(name, LoraParallelLinear(base, lora_a, lora_b))
    with tensor_parallel_rank(tp, 0):
        block.specs = _template(package).with_transposed_source_fused_linear(
            host_module.ModelWeightTransformationSpecs(), name, [name], [out], bias=False
        )
    root = nn.Module()
    root.add_module("block", block)
    root.parameters_for_current_stage = {n for n, _ in root.named_parameters()}
    host_module.specialize_transformation_specs_for_model(root)
    root.lora_shapes = (name, out, inputs)  # type: ignore[assignment]
    return root


@pytest.mark.parametrize("host", sorted(HOSTS))
@pytest.mark.parametrize("layout", ["column", "row"])
def test_a_lora_adapter_on_a_conv1d_loads_by_the_layer_layout_and_comes_back(host: str, layout: str) -> None:
    """PEFT shapes a Conv1D's lora_A `[r, in]` and lora_B `[out, r]` as for a linear: nothing is transposed;
    the column-parallel layer's lora_B and the row-parallel layer's lora_A are sharded (cut by hand), the
    other kept whole; consolidation gives both back exactly."""
    tp, r = 2, 3
    model = _lora_model(host, layout, tp, r)
    name, out, inputs = model.lora_shapes
    generator = torch.Generator().manual_seed(2)
    adapter = {
        f"block.{name}.lora_A.weight": torch.randn(r, inputs, generator=generator),
        f"block.{name}.lora_B.weight": torch.randn(out, r, generator=generator),
    }
    per_rank = []
    for rank in range(tp):
        with tensor_parallel_rank(tp, rank):
            loaded = HOSTS[host][0].adapt_state_dict(
                model, {k: v.clone() for k, v in adapter.items()}, {}, adapter_name=ADAPTER
            )
        lora_a, lora_b = adapter[f"block.{name}.lora_A.weight"], adapter[f"block.{name}.lora_B.weight"]
        if layout == "column":
            expected = {"lora_A": lora_a, "lora_B": torch.chunk(lora_b, tp, dim=0)[rank]}
        else:
            expected = {"lora_A": torch.chunk(lora_a, tp, dim=1)[rank], "lora_B": lora_b}
        for lora, tensor in expected.items():
            assert torch.equal(loaded[f"block.{name}.{lora}.weight"], tensor), f"{host} {layout} {lora}"
        per_rank.append({k: v for k, v in loaded.items() if "lora_" in k})
    host_module = HOSTS[host][0]
    metadata = json.loads(json.dumps(host_module.create_parameter_metadata(model)))
    specs = [
        host_module.ModelWeightTransformationSpecs.from_metadata(m)
        for m in metadata["model_weight_transformation_specs"]
    ]
    sharded = {key: [tensors[key] for tensors in per_rank] for key in per_rank[0]}
    consolidated = host_module.to_original_weights(
        specs, sharded, metadata["parameters"], adapter_name=ADAPTER
    )
    assert sorted(consolidated) == sorted(adapter)
    for key, tensor in adapter.items():
        assert torch.equal(consolidated[key], tensor), f"{host} {layout}: {key} is not given back"


def test_the_adapter_config_follows_the_layer_layout() -> None:
    """PEFT adapts a Conv1D with fan_in_fan_out=True; the parallel linear holds `[out, in]`: off there, and
    back on for the original model."""
    from peft import LoraConfig

    spec = _template(HOSTS["released"][1]).TransposedSourceFusedLinearSpec("c_fc", ["c_fc"], [INTER], True)
    original = LoraConfig(r=2, target_modules=["c_fc"], fan_in_fan_out=True)
    adapted = spec.adapt_peft_config(original)
    assert adapted.fan_in_fan_out is False and original.fan_in_fan_out is True
    assert spec.to_original_peft_config(adapted).fan_in_fan_out is True
