"""NXS020 (fused gate/up) and NXS021 (attention variants) on the five target models.

The generated classes are executed, not just read: each is built with recording stand-ins for the
parallel layers at simulated TP sizes, and what it builds (variant, layer arguments, specs, per-rank head
counts) is checked against the contributing guide's rules written out here independently. The fused MLP
forward is run rank by rank with weights sharded the way a stride-2 column layer holds them; the sum of
the ranks' outputs must equal the transformers MLP.
"""

from __future__ import annotations

import ast
import builtins
import functools
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from transformers import AutoConfig
from transformers.activations import ACT2FN

from scaffold.rules.base import definition_source

from ..conftest import blueprint_of
from .generated_stages import definition_after, keyword, method, module_after, normalized, self_assignments

LAST = "NXS024"  # the last layer rule: classes below are taken from the module after it


# --- executing generated classes with recording stand-ins ---------------------------------------------


class Recorded:
    """A stand-in layer or spec: keeps its arguments; unknown attributes read as 0."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs

    def parameters(self) -> list[torch.nn.Parameter]:
        return []

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return 0


class Specs:
    def __init__(self) -> None:
        self.specs: list[Recorded] = []

    def add_spec(self, spec: Recorded) -> None:
        self.specs.append(spec)


class Module:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass


def _divide(numerator: int, denominator: int) -> int:
    assert numerator % denominator == 0, f"{numerator} is not divisible by {denominator}"
    return numerator // denominator


def build(model_type: str, scope: str, tp: int, **arguments: Any) -> Any:
    """Instantiate the generated class `scope` with stand-ins, at TP size `tp`."""
    source = definition_source(module_after(model_type, LAST), scope)
    tree = ast.parse(source)
    namespace: dict[str, Any] = {
        "torch": torch,
        "nn": SimpleNamespace(Module=Module, Linear=type("Linear", (Recorded,), {})),
        "CustomModule": type("CustomModule", (), {}),
        "ModelWeightTransformationSpecs": Specs,
        "partial": functools.partial,
        "divide": _divide,
        "get_tensor_model_parallel_size": lambda: tp,
        "ACT2FN": ACT2FN,
    }
    loaded = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    for name in loaded - set(namespace) - set(dir(builtins)) - {"self"}:
        namespace[name] = type(name, (Recorded,), {})
    exec(compile("from __future__ import annotations\n" + source, scope, "exec"), namespace)
    return namespace[scope](**arguments)


def tiny_config(model_type: str, heads: int, kv_heads: int, **extra: Any) -> Any:
    return AutoConfig.for_model(
        model_type,
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        **extra,
    )


def trn_config(tp: int, fuse_qkv: bool = False, kv_size_multiplier: int | None = None) -> SimpleNamespace:
    return SimpleNamespace(
        tensor_parallel_size=tp,
        sequence_parallel_enabled=tp > 1,
        fuse_qkv=fuse_qkv,
        kv_size_multiplier=kv_size_multiplier,
        auto_kv_size_multiplier=lambda kv: max(1, tp // kv),
        gradient_checkpointing=False,
        transpose_nki_inputs=True,
        recompute_causal_mask=True,
    )


# --- NXS020 -----------------------------------------------------------------------------------------


def test_gated_mlp_becomes_one_stride_2_column_layer_with_its_spec(target: str) -> None:
    (block,) = blueprint_of(target).mlps
    gate = blueprint_of(target).site(f"{block.path}.{block.gate}")
    cls = definition_after(target, "NXS020", block.owner)
    init = method(cls, "__init__")
    assert not self_assignments(init, block.gate) and not self_assignments(init, block.up)
    (fused,) = self_assignments(init, "gate_up_proj")
    assert ast.unparse(fused.value.func) == "ColumnParallelLinear"
    assert keyword(fused.value, "stride") == "2"
    assert keyword(fused.value, "bias") == normalized(gate.bias.source)
    assert keyword(fused.value, "gather_output") == "False"
    assert keyword(fused.value, "sequence_parallel_enabled") == "trn_config.sequence_parallel_enabled"
    assert "CustomModule" in [ast.unparse(base) for base in cls.bases]
    forward = ast.unparse(method(cls, "forward"))
    assert f"self.{block.gate}(" not in forward and f"self.{block.up}(" not in forward
    assert "self.gate_up_proj(x).split(self.split_size, dim=-1)" in forward


@pytest.mark.parametrize("tp", [1, 2, 4])
@pytest.mark.parametrize("model_type", ["llama", "qwen3"])
def test_fused_mlp_ranks_sum_to_the_transformers_mlp(model_type: str, tp: int) -> None:
    """Rank r's gate_up_proj holds [gate rows of r; up rows of r] (stride 2); down_proj holds columns of r."""
    config = tiny_config(model_type, 4, 2, **({"mlp_bias": True} if model_type == "llama" else {}))
    (block,) = blueprint_of(model_type).mlps
    mlp_class = getattr(
        __import__(f"transformers.models.{model_type}.modeling_{model_type}", fromlist=[block.owner]),
        block.owner,
    )
    torch.manual_seed(0)
    reference = mlp_class(config).eval()
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter.uniform_(-0.5, 0.5)
    x = torch.randn(3, 5, config.hidden_size)
    expected = reference(x)

    size = config.intermediate_size // tp
    gate, up, down = (getattr(reference, name) for name in (block.gate, block.up, block.down))
    total = torch.zeros_like(expected)
    for rank in range(tp):
        rows = slice(rank * size, (rank + 1) * size)
        local = build(model_type, block.owner, tp, config=config, trn_config=trn_config(tp))
        assert local.split_size == size
        (spec,) = local.specs.specs
        assert spec.kwargs["linear_names"] == [block.gate, block.up]
        assert spec.kwargs["original_dims"] == [config.intermediate_size] * 2
        assert spec.kwargs["bias"] == (gate.bias is not None)
        args = local.gate_up_proj.args
        assert args[:2] == (config.hidden_size, 2 * config.intermediate_size)
        assert local.gate_up_proj.kwargs["bias"] == (gate.bias is not None)

        fused = torch.nn.Linear(config.hidden_size, 2 * size, bias=gate.bias is not None)
        partial_down = torch.nn.Linear(size, config.hidden_size, bias=False)
        with torch.no_grad():
            fused.weight.copy_(torch.cat([gate.weight[rows], up.weight[rows]]))
            if gate.bias is not None:
                fused.bias.copy_(torch.cat([gate.bias[rows], up.bias[rows]]))
            partial_down.weight.copy_(down.weight[:, rows])
        local.gate_up_proj, local.down_proj = fused, partial_down
        with torch.no_grad():
            total += local.forward(x)
    if down.bias is not None:
        total += down.bias.detach()
    torch.testing.assert_close(total, expected.detach(), rtol=1e-5, atol=1e-6)


# --- NXS021 -----------------------------------------------------------------------------------------


def expected_plan(heads: int, kv_heads: int, tp: int, fuse_qkv: bool, multiplier: int | None) -> dict:
    """The contributing guide's choice, written out independently of the generated code."""
    gqa = kv_heads < tp or kv_heads % tp != 0
    m = (multiplier if multiplier is not None else max(1, tp // kv_heads)) if gqa else 1
    variant = "gqa" if gqa else "fused" if fuse_qkv and heads == kv_heads else "separate"
    return {
        "variant": variant,
        "kv_size_multiplier": m,
        "num_heads": heads // tp,
        "num_key_value_heads": kv_heads * m // tp,
        "num_key_value_groups": (heads // tp) // (kv_heads * m // tp),
    }


CASES = [
    # heads, kv heads, tp, fuse_qkv, kv_size_multiplier
    (4, 4, 1, False, None),
    (4, 4, 2, True, None),
    (4, 4, 4, True, None),
    (4, 4, 2, False, None),
    (4, 2, 2, True, None),
    (4, 2, 4, False, None),
    (4, 1, 2, False, None),
    (4, 1, 4, True, None),
    (8, 2, 4, False, 4),
    (6, 3, 2, False, 2),
]


@pytest.mark.parametrize("heads, kv_heads, tp, fuse_qkv, multiplier", CASES)
def test_attention_variant_and_per_rank_heads_follow_the_contributing_guide(
    target: str, heads: int, kv_heads: int, tp: int, fuse_qkv: bool, multiplier: int | None
) -> None:
    (geometry,) = blueprint_of(target).attention
    extra = {"head_dim": 8} if blueprint_of(target).features.explicit_head_dim else {}
    config = tiny_config(target, heads, kv_heads, **extra)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    attention = build(
        target,
        geometry.owner,
        tp,
        config=config,
        trn_config=trn_config(tp, fuse_qkv, multiplier),
        layer_idx=0,
    )
    plan = expected_plan(heads, kv_heads, tp, fuse_qkv, multiplier)
    for name in ("kv_size_multiplier", "num_heads", "num_key_value_heads", "num_key_value_groups"):
        assert getattr(attention, name) == plan[name], name
    q_site = blueprint_of(target).site(f"{geometry.path}.{geometry.q}")
    bias = q_site.bias.evaluate(config)
    layer = vars(attention).get("qkv_proj")
    if plan["variant"] == "gqa":
        assert type(layer).__name__ == "GQAQKVColumnParallelLinear"
        assert layer.args == (config.hidden_size, [heads * head_dim, kv_heads * head_dim])
        assert layer.kwargs["kv_size_multiplier"] == plan["kv_size_multiplier"]
        assert layer.kwargs["fuse_qkv"] is fuse_qkv and layer.kwargs["bias"] == bias
        (spec,) = attention.specs.specs
        assert type(spec).__name__ == "GQAQKVColumnParallelLinearSpec"
        assert spec.kwargs["num_attention_heads"] == heads and spec.kwargs["num_key_value_heads"] == kv_heads
        assert spec.kwargs["kv_size_multiplier"] == plan["kv_size_multiplier"]
        assert spec.kwargs["bias"] == bias
        assert (spec.kwargs["query_projection_name"], spec.kwargs["output_projection_name"]) == (
            geometry.q,
            geometry.o,
        )
    elif plan["variant"] == "fused":
        assert type(layer).__name__ == "ColumnParallelLinear"
        assert layer.args == (config.hidden_size, 3 * heads * head_dim) and layer.kwargs["stride"] == 3
        assert layer.kwargs["bias"] == bias
        assert attention.split_size == heads * head_dim // tp
        (spec,) = attention.specs.specs
        assert spec.kwargs["linear_names"] == [geometry.q, geometry.k, geometry.v]
        assert spec.kwargs["original_dims"] == [heads * head_dim] * 3
    else:
        assert layer is None and attention.specs.specs == []
        for name, out in ((geometry.q, heads), (geometry.k, kv_heads), (geometry.v, kv_heads)):
            projection = vars(attention)[name]
            assert type(projection).__name__ == "ColumnParallelLinear"
            assert projection.args == (config.hidden_size, out * head_dim)
            assert projection.kwargs["bias"] == bias and projection.kwargs["gather_output"] is False
    output = vars(attention)[geometry.o]
    assert type(output).__name__ == "RowParallelLinear"
    assert output.kwargs["input_is_parallel"] is True


FUSED_AT_FORWARD = (
    "self.trn_config.fuse_qkv and self.num_heads == self.num_key_value_heads and self.kv_size_multiplier == 1"
)


def test_forward_computes_projections_by_variant(target: str) -> None:
    (geometry,) = blueprint_of(target).attention
    forward = method(definition_after(target, "NXS021", geometry.owner), "forward")
    (dispatch,) = [
        node
        for node in forward.body
        if isinstance(node, ast.If)
        and ast.dump(node.test) == ast.dump(ast.parse(FUSED_AT_FORWARD, mode="eval").body)
    ]
    assert [ast.unparse(s) for s in dispatch.body] == [
        "query_states, key_states, value_states = self.qkv_proj(hidden_states).split(self.split_size, dim=-1)"
    ]
    (gqa,) = dispatch.orelse
    assert ast.unparse(gqa.test) == "self.qkv_linear"
    assert [ast.unparse(s) for s in gqa.body] == [
        "query_states, key_states, value_states = self.qkv_proj(hidden_states)"
    ]
    assert [ast.unparse(s) for s in gqa.orelse] == [
        f"query_states = self.{geometry.q}(hidden_states)",
        f"key_states = self.{geometry.k}(hidden_states)",
        f"value_states = self.{geometry.v}(hidden_states)",
    ]
    text = ast.unparse(forward)
    assert text.count(f"self.{geometry.q}(") == 1  # the source's chained call now reads the computed tensor
    assert "query_states.view(hidden_shape)" in text


def test_gqa_bias_is_flagged_with_deviation_nxd_09_only_when_it_can_be_true(target: str) -> None:
    (geometry,) = blueprint_of(target).attention
    text = definition_source(module_after(target, "NXS021"), geometry.owner)
    bias = blueprint_of(target).site(f"{geometry.path}.{geometry.q}").bias.source
    assert ("NXD-09" in text) == (bias != "False"), bias


def test_source_group_count_is_replaced_by_the_per_rank_one(target: str) -> None:
    (geometry,) = blueprint_of(target).attention  # set last, after every layer is built
    init = method(definition_after(target, "NXS021", geometry.owner), "__init__")
    (groups,) = self_assignments(init, "num_key_value_groups")
    assert ast.unparse(groups.value) == "self.num_heads // self.num_key_value_heads"
    counts = [
        s
        for s in init.body
        if isinstance(s, ast.Assign) and ast.unparse(s.targets[0]).startswith("self.num_")
    ]
    assert counts[-1] is groups and init.body.index(groups) > init.body.index(
        self_assignments(init, "o_proj")[0]
    )


def test_per_head_norm_gradients_are_summed_over_tensor_parallel_ranks(target: str) -> None:
    (geometry,) = blueprint_of(target).attention
    init = ast.unparse(method(definition_after(target, "NXS021", geometry.owner), "__init__"))
    hook = "parameter.register_hook(reduce_from_tensor_model_parallel_region)"
    if blueprint_of(target).features.qk_norm == "per_head":
        assert (
            f"for parameter in (*self.{geometry.q_norm}.parameters(), *self.{geometry.k_norm}.parameters()):"
            in init
        )
        assert hook in init
    else:
        assert hook not in init
