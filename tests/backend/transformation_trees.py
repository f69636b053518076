"""Tiny Llama-shaped module trees for the transformation-spec tests, independent of the parallel layers.

A tree has the parameter names, local (per-rank) shapes and tensor-parallel attributes of a custom
Neuron causal LM at TP size T, on the meta device: the specs only read names and attributes. It is built
against a given `transformations_utils` module (ours or optimum-neuron's), so that its custom modules
mix in that module's `CustomModule` and use its spec classes. `full_state_dict` / `full_adapter_state_dict`
give matching Transformers / PEFT checkpoints with random fp32 values.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch
from hypothesis import strategies as st
from torch import nn

from conformance.backends import activate

activate("reference")

from conformance.backends.reference.neuronx_distributed.parallel_layers import parallel_state  # noqa: E402
from conformance.backends.reference.neuronx_distributed.parallel_layers.utils import (  # noqa: E402
    set_tensor_model_parallel_attributes,
)

ADAPTER = "default"


@dataclass(frozen=True)
class Shape:
    tp: int
    heads: int
    kv_heads: int
    head_dim: int
    hidden: int
    intermediate: int
    vocab: int
    attention: str  # "separate" | "fused" (FusedLinearsSpec qkv) | "gqa"
    fuse_qkv: bool = False  # GQA only
    kv_size_multiplier: int = 1  # GQA only
    bias: bool = False
    layers: int = 2
    lora_rank: int = 2
    tag_weight_qkv: bool = True  # NxD leaves the fused GQA weight untagged (NXD-10)

    @property
    def q_pp(self) -> int:
        return self.heads * self.head_dim // self.tp

    @property
    def kv_pp(self) -> int:
        return self.kv_heads * self.kv_size_multiplier * self.head_dim // self.tp


@st.composite
def shapes(draw: Any, attention: str | None = None, bias: bool | None = None) -> Shape:
    """Valid shapes: everything sharded divides T; GQA with m | T, KV*m % T == 0 and m | H/KV."""
    tp = draw(st.sampled_from([1, 2, 4, 8]))
    attention = attention or draw(st.sampled_from(["separate", "fused", "gqa"]))
    m = 1
    if attention == "gqa":
        m = draw(st.sampled_from([d for d in (1, 2, 4, 8) if tp % d == 0]))
        kv = (tp // m) * draw(st.integers(1, 2))
        heads = kv * m * draw(st.integers(1, 2))
    else:
        kv = tp * draw(st.integers(1, 2))
        heads = kv if attention == "fused" else kv * draw(st.integers(1, 2))
    return Shape(
        tp=tp,
        heads=heads,
        kv_heads=kv,
        head_dim=draw(st.integers(1, 3)),
        hidden=draw(st.integers(2, 5)),
        intermediate=tp * draw(st.integers(1, 3)),
        vocab=tp * draw(st.integers(1, 3)),
        attention=attention,
        fuse_qkv=attention == "gqa" and draw(st.booleans()),
        kv_size_multiplier=m,
        bias=draw(st.booleans()) if bias is None else bias,
        layers=draw(st.integers(1, 2)),
        lora_rank=draw(st.integers(1, 3)),
        tag_weight_qkv=draw(st.booleans()),
    )


@st.composite
def gqa_shapes(draw: Any) -> tuple[int, int, int, int]:
    """(T, H, KV, m) with m | T, KV*m % T == 0 and m | H/KV: what NxD's GQA layer accepts."""
    T = draw(st.sampled_from([1, 2, 4, 8, 16]))
    m = draw(st.sampled_from([d for d in (1, 2, 4, 8, 16) if T % d == 0]))
    KV = (T // m) * draw(st.integers(1, 3))
    H = KV * m * draw(st.integers(1, 3))
    return T, H, KV, m


@contextlib.contextmanager
def tensor_parallel_rank(tp_size: int, tp_rank: int) -> Iterator[None]:
    """Pretend to be TP rank `tp_rank` of `tp_size` in this process (single-process tests)."""
    parallel_state.set_tensor_model_parallel_size(tp_size)
    parallel_state.set_tensor_model_parallel_rank(tp_rank)
    try:
        yield
    finally:
        parallel_state.set_tensor_model_parallel_size(None)
        parallel_state.set_tensor_model_parallel_rank(None)


# --- trees ---------------------------------------------------------------------------------------------


def _param(
    module: nn.Module, name: str, shape: tuple[int, ...], tp: int, dim: int | None, stride: int = 1
) -> None:
    parameter = nn.Parameter(torch.empty(shape, device="meta"))
    if dim is not None:
        set_tensor_model_parallel_attributes(parameter, True, dim, stride, num_partitions=tp)
    module.register_parameter(name, parameter)


class StandInLinear(nn.Module):
    """A bare parameter holder; the name ends in `Linear` like NxD's layers, which 'all-linear' relies on."""


def _linear(tp: int, out: int, inp: int, kind: str, bias: bool, stride: int = 1) -> nn.Module:
    """A parameter holder shaped like a column ("col"), row ("row") or replicated ("rep") linear."""
    layer = StandInLinear()
    if kind == "col":
        _param(layer, "weight", (out // tp, inp), tp, 0, stride)
        if bias:
            _param(layer, "bias", (out // tp,), tp, 0, stride)
    elif kind == "row":
        _param(layer, "weight", (out, inp // tp), tp, 1)
        if bias:
            _param(layer, "bias", (out,), tp, None)
    else:
        _param(layer, "weight", (out, inp), tp, None)
        if bias:
            _param(layer, "bias", (out,), tp, None)
    return layer


def _gqa_linear(s: Shape, inp: int, bias: bool) -> nn.Module:
    layer = StandInLinear()
    names = ["weight", "bias"] if bias else ["weight"]
    for pn in names:
        tail = (inp,) if pn == "weight" else ()
        if s.fuse_qkv:
            _param(layer, f"{pn}_qkv", (s.q_pp + 2 * s.kv_pp, *tail), s.tp, 0 if s.tag_weight_qkv else None)
        else:
            _param(layer, f"{pn}_q", (s.q_pp, *tail), s.tp, 0)
            _param(layer, f"{pn}_k", (s.kv_pp, *tail), s.tp, 0)
            _param(layer, f"{pn}_v", (s.kv_pp, *tail), s.tp, 0)
    return layer


class LoraWrapper(nn.Module):
    """Stands in for a PEFT LoRA wrapper: `base_layer`, `lora_A.<adapter>`, `lora_B.<adapter>`."""

    def __init__(self, base_layer: nn.Module, lora_a: nn.Module, lora_b: nn.Module) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.lora_A = nn.ModuleDict({ADAPTER: lora_a})
        self.lora_B = nn.ModuleDict({ADAPTER: lora_b})


class LoraParallelLinear(LoraWrapper):
    """optimum-neuron's `peft.tuners.lora.layer.ParallelLinear` in the oracle's stub package."""


class LoraGQAQKVColumnParallelLinear(LoraWrapper):
    """optimum-neuron's `peft.tuners.lora.layer.GQAQKVColumnParallelLinear` in the oracle's stub package."""


def _wrap(base: nn.Module, s: Shape, out: int, inp: int, kind: str) -> nn.Module:
    r = s.lora_rank
    if kind == "col":
        return LoraParallelLinear(
            base, _linear(s.tp, r, inp, "rep", False), _linear(s.tp, out, r, "col", False)
        )
    return LoraParallelLinear(base, _linear(s.tp, r, inp, "row", False), _linear(s.tp, out, r, "rep", False))


def build_model(
    tu: ModuleType, s: Shape, lora: bool = False, lora_on_output: bool = True, stage_attribute: bool = True
) -> nn.Module:
    """The tree for `s`, specialized; with `lora`, wrapped like a PEFT model (`base_model.model.` prefix).

    With `stage_attribute`, the root carries `parameters_for_current_stage` as optimum-neuron's models do
    without pipeline parallelism (every state-dict name).
    """

    class Attention(nn.Module, tu.CustomModule):
        pass

    class MLP(nn.Module, tu.CustomModule):
        pass

    H, KV, D, inter = s.heads * s.head_dim, s.kv_heads * s.head_dim, s.hidden, s.intermediate
    decoder = nn.Module()
    decoder.embed_tokens = nn.Module()
    _param(decoder.embed_tokens, "weight", (s.vocab // s.tp, D), s.tp, 0)
    decoder.layers = nn.ModuleList()
    for _ in range(s.layers):
        layer = nn.Module()
        attn = Attention()
        if s.attention == "separate":
            for name, out in (("q_proj", H), ("k_proj", KV), ("v_proj", KV)):
                base = _linear(s.tp, out, D, "col", s.bias)
                setattr(attn, name, _wrap(base, s, out, D, "col") if lora else base)
        elif s.attention == "fused":
            base = _linear(s.tp, 3 * H, D, "col", s.bias, stride=3)
            attn.qkv_proj = _wrap(base, s, 3 * H, D, "col") if lora else base
            attn.specs.add_spec(
                tu.FusedLinearsSpec(
                    "qkv_proj", ["q_proj", "k_proj", "v_proj"], s.bias, "column", [H] * 3, s.tp
                )
            )
        else:
            base = _gqa_linear(s, D, s.bias)
            if lora:
                base = LoraGQAQKVColumnParallelLinear(
                    base, _linear(s.tp, s.lora_rank, D, "rep", False), _gqa_linear(s, s.lora_rank, False)
                )
            attn.qkv_proj = base
            spec = tu.GQAQKVColumnParallelLinearSpec(
                "qkv_proj", "q_proj", "k_proj", "v_proj", "o_proj", s.heads, s.kv_heads, s.kv_size_multiplier,
                s.q_pp, s.kv_pp, s.fuse_qkv, s.bias, s.tp,
            )  # fmt: skip
            attn.specs.add_spec(spec)
        o_proj = _linear(s.tp, D, H, "row", s.bias)
        attn.o_proj = _wrap(o_proj, s, D, H, "row") if lora and lora_on_output else o_proj
        mlp = MLP()
        gate_up = _linear(s.tp, 2 * inter, D, "col", s.bias, stride=2)
        mlp.gate_up_proj = _wrap(gate_up, s, 2 * inter, D, "col") if lora else gate_up
        down = _linear(s.tp, D, inter, "row", s.bias)
        mlp.down_proj = _wrap(down, s, D, inter, "row") if lora and lora_on_output else down
        mlp.specs.add_spec(
            tu.FusedLinearsSpec("gate_up_proj", ["gate_proj", "up_proj"], s.bias, "column", [inter] * 2, s.tp)
        )
        layer.self_attn, layer.mlp = attn, mlp
        layer.input_layernorm = nn.Module()
        _param(layer.input_layernorm, "weight", (D,), s.tp, None)
        decoder.layers.append(layer)
    decoder.norm = nn.Module()
    _param(decoder.norm, "weight", (D,), s.tp, None)
    root = nn.Module()
    root.model = decoder
    root.lm_head = _linear(s.tp, s.vocab, D, "col", False)
    if lora:
        peft_root = nn.Module()
        peft_root.base_model = nn.Module()
        peft_root.base_model.model = root
        root = peft_root
    if stage_attribute:
        root.parameters_for_current_stage = set(root.state_dict())
    tu.specialize_transformation_specs_for_model(root)
    return root


# --- checkpoints ---------------------------------------------------------------------------------------


def _attention_shapes(s: Shape) -> dict[str, tuple[int, int]]:
    H, KV, D = s.heads * s.head_dim, s.kv_heads * s.head_dim, s.hidden
    return {"q_proj": (H, D), "k_proj": (KV, D), "v_proj": (KV, D), "o_proj": (D, H)}


def full_state_dict(s: Shape, seed: int = 0) -> dict[str, torch.Tensor]:
    """A Transformers Llama-style state dict for `s` (names relative to the causal LM)."""
    g = torch.Generator().manual_seed(seed)
    D, inter = s.hidden, s.intermediate
    sd = {"model.embed_tokens.weight": torch.randn(s.vocab, D, generator=g)}
    for i in range(s.layers):
        p = f"model.layers.{i}"
        linears = {f"self_attn.{k}": v for k, v in _attention_shapes(s).items()}
        linears |= {"mlp.gate_proj": (inter, D), "mlp.up_proj": (inter, D), "mlp.down_proj": (D, inter)}
        for name, (out, inp) in linears.items():
            sd[f"{p}.{name}.weight"] = torch.randn(out, inp, generator=g)
            if s.bias:
                sd[f"{p}.{name}.bias"] = torch.randn(out, generator=g)
        sd[f"{p}.input_layernorm.weight"] = torch.randn(D, generator=g)
    sd["model.norm.weight"] = torch.randn(D, generator=g)
    sd["lm_head.weight"] = torch.randn(s.vocab, D, generator=g)
    return sd


def full_adapter_state_dict(s: Shape, seed: int = 1, lora_on_output: bool = True) -> dict[str, torch.Tensor]:
    """A PEFT adapter checkpoint for every linear of `s` (adapter-free names, `base_model.model.` prefix)."""
    g = torch.Generator().manual_seed(seed)
    r, D, inter = s.lora_rank, s.hidden, s.intermediate
    sd = {}
    for i in range(s.layers):
        p = f"base_model.model.model.layers.{i}"
        linears = {f"self_attn.{k}": v for k, v in _attention_shapes(s).items()}
        linears |= {"mlp.gate_proj": (inter, D), "mlp.up_proj": (inter, D), "mlp.down_proj": (D, inter)}
        for name, (out, inp) in linears.items():
            if not lora_on_output and name.endswith(("o_proj", "down_proj")):
                continue
            sd[f"{p}.{name}.lora_A.weight"] = torch.randn(r, inp, generator=g)
            sd[f"{p}.{name}.lora_B.weight"] = torch.randn(out, r, generator=g)
    return sd


def expected_consolidated_adapter(s: Shape, adapter_sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What consolidation must give back: fused groups' lora_A replaced by their mean, the rest unchanged."""
    expected = dict(adapter_sd)
    groups = [["mlp.gate_proj", "mlp.up_proj"]]
    if s.attention != "separate":
        groups.append(["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"])
    for i in range(s.layers):
        p = f"base_model.model.model.layers.{i}"
        for group in groups:
            names = [f"{p}.{lin}.lora_A.weight" for lin in group]
            mean = torch.mean(torch.stack([adapter_sd[n] for n in names]), dim=0)
            expected.update(dict.fromkeys(names, mean))
    return expected


# --- load and consolidate ------------------------------------------------------------------------------


def saved_names(model: nn.Module, tu: ModuleType, adapter_only: bool = False) -> set[str]:
    """The keys of a saved checkpoint: adapter-free parameter names (only the LoRA ones for an adapter)."""
    names = {tu.remove_adapter_name(n) for n, _ in model.named_parameters() if not tu.is_base_layer(n)}
    return {n for n in names if ".lora_" in n} if adapter_only else names


def load_ranks(
    tu: ModuleType,
    model: nn.Module,
    files: list[dict[str, torch.Tensor]],
    tp: int,
    check_leftovers: bool = True,
    **peft_kwargs: Any,
) -> list[dict[str, torch.Tensor]]:
    """Each rank's adapted state dict, the checkpoint given as one or more files (dicts) in order."""
    per_rank = []
    for rank in range(tp):
        with tensor_parallel_rank(tp, rank):
            upstanding: dict[str, torch.Tensor] = {}
            merged: dict[str, torch.Tensor] = {}
            for file in files:
                merged.update(
                    tu.adapt_state_dict(model, dict(file), upstanding, inplace=True, **dict(peft_kwargs))
                )
            if check_leftovers:
                assert not upstanding, sorted(upstanding)
        per_rank.append(merged)
    return per_rank


def load_on_this_rank(s: Shape, full: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rank-side: this process's shard of `full` through the reference host, with the real parallel state."""
    from conformance.backends.reference.training import transformations_utils as host

    model = build_model(host, s)
    upstanding: dict[str, torch.Tensor] = {}
    local = host.adapt_state_dict(model, full, upstanding)
    host.check_no_upstanding_sharded_params(upstanding)
    return local


def consolidate(
    tu: ModuleType, model: nn.Module, per_rank: list[dict[str, torch.Tensor]], **peft_kwargs: Any
) -> dict[str, torch.Tensor]:
    """Save-then-consolidate: the metadata goes through JSON, the specs are rebuilt from it."""
    metadata = json.loads(json.dumps(tu.create_parameter_metadata(model)))
    specs = [
        tu.ModelWeightTransformationSpecs.from_metadata(m)
        for m in metadata["model_weight_transformation_specs"]
    ]
    sharded = {name: [sd[name] for sd in per_rank] for name in per_rank[0]}
    return tu.to_original_weights(specs, sharded, metadata["parameters"], **peft_kwargs)


def local_shapes(model: nn.Module, tu: ModuleType) -> dict[str, tuple[int, ...]]:
    return {
        tu.remove_adapter_name(n): tuple(p.shape)
        for n, p in model.named_parameters()
        if not tu.is_base_layer(n)
    }
