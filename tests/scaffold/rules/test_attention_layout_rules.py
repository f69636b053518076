"""NXS022 (sequence-parallel layout), NXS023 (eager + Neuron flash path) and NXS024 (parallel linears).

The generated attention functions are executed against transformers' own eager attention with masks
built from transformers' mask functions (the independent oracle): the recomputed causal mask, the
sliding window, and the NKI flash path in both input layouts. Layout and layer rewrites are checked on
the five targets; constructs the rules cannot convert are refused, or marked with --allow-unsupported.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import libcst as cst
import pytest
import torch
from transformers import masking_utils

from conformance.backends.reference.neuronx_distributed.kernels import flash_attn
from scaffold.analysis import analyze
from scaffold.analysis.source_fusions import read_module
from scaffold.blueprint import Role
from scaffold.pipeline import apply_rules
from scaffold.rules.base import RuleOptions, definition_source
from scaffold.source import locate

from ..conftest import blueprint_of
from ..synthetic import model_source
from .generated_stages import definition_after, keyword, method, module_after, normalized, self_assignments

SP = "self.trn_config.sequence_parallel_enabled"


# --- NXS022 -----------------------------------------------------------------------------------------


def _sp_branches(function: ast.FunctionDef) -> list[ast.If]:
    return [node for node in function.body if isinstance(node, ast.If) and ast.unparse(node.test) == SP]


def test_attention_forward_is_batch_first_inside_and_sequence_first_at_both_ends(target: str) -> None:
    (geometry,) = blueprint_of(target).attention
    forward = method(definition_after(target, "NXS022", geometry.owner), "forward")
    shape, to_batch_first, to_sequence_first = _sp_branches(forward)
    assert [ast.unparse(s) for s in shape.body] == [
        "input_shape = (hidden_states.shape[1], hidden_states.shape[0] * get_tensor_model_parallel_size())"
    ]
    assert [ast.unparse(s) for s in shape.orelse] == ["input_shape = hidden_states.shape[:-1]"]
    assert [ast.unparse(s) for s in to_batch_first.body] == [
        "query_states, key_states, value_states = "
        "(query_states.transpose(0, 1), key_states.transpose(0, 1), value_states.transpose(0, 1))"
    ]
    assert [ast.unparse(s) for s in to_sequence_first.body] == ["attn_output = attn_output.transpose(0, 1)"]
    body = forward.body
    projections = next(i for i, s in enumerate(body) if "self.qkv_proj(" in ast.unparse(s))
    assert body.index(to_batch_first) == projections + 1  # before any head split, norm or RoPE
    o_call = next(i for i, s in enumerate(body) if f"self.{geometry.o}(" in ast.unparse(s))
    assert body.index(to_sequence_first) == o_call - 1
    # per-head norms and RoPE still read what the source read, in the same order
    after = [ast.unparse(s) for s in body[projections + 2 :]]
    assert after[:3] == [
        ast.unparse(s)
        for s in method(definition_after(target, "NXS021", geometry.owner), "forward").body[3:6]
    ]


# --- NXS023: the generated attention functions against transformers ---------------------------------


def _functions(model_type: str) -> dict[str, Any]:
    module = module_after(model_type, "NXS023")
    source = "\n\n".join(
        definition_source(module, name)
        for name in ("repeat_kv", "eager_attention_forward", "neuron_flash_attention_forward")
    )
    namespace: dict[str, Any] = {
        "torch": torch,
        "nn": torch.nn,
        "nki_flash_attn_func": flash_attn.nki_flash_attn_func,
    }
    exec(compile("from __future__ import annotations\n" + source, model_type, "exec"), namespace)
    return namespace


def _mask(function: Any, length: int) -> torch.Tensor:
    """transformers' boolean mask function over a (length, length) grid, as an additive (1, 1, S, S) mask."""
    positions = torch.arange(length)
    zero = torch.tensor(0)
    allowed = function(zero, zero, positions[:, None], positions[None, :]).expand(length, length)
    return torch.zeros(length, length).masked_fill(~allowed, torch.finfo(torch.float32).min)[None, None]


def _qkv(groups: int = 2, length: int = 8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    heads, kv_heads = 2 * groups, 2
    return (
        torch.randn(2, heads, length, 4, generator=generator),
        torch.randn(2, kv_heads, length, 4, generator=generator),
        torch.randn(2, kv_heads, length, 4, generator=generator),
    )


def _module(groups: int = 2, transpose: bool = True) -> SimpleNamespace:
    return SimpleNamespace(
        num_key_value_groups=groups,
        training=False,
        trn_config=SimpleNamespace(transpose_nki_inputs=transpose),
    )


def _transformers_eager(model_type: str) -> Any:
    return importlib.import_module(
        f"transformers.models.{model_type}.modeling_{model_type}"
    ).eager_attention_forward


@pytest.mark.parametrize("model_type", ["llama", "qwen3"])
def test_eager_recomputes_the_causal_mask_when_none_is_given(model_type: str) -> None:
    generated = _functions(model_type)["eager_attention_forward"]
    q, k, v = _qkv()
    expected, expected_weights = _transformers_eager(model_type)(
        _module(), q, k, v, _mask(masking_utils.causal_mask_function, 8), scaling=0.3
    )
    out, weights = generated(_module(), q, k, v, None, scaling=0.3, causal=True)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    torch.testing.assert_close(weights, expected_weights, rtol=0, atol=0)
    # an explicit mask (the host's create_causal_mask) is used as given
    padded = _mask(masking_utils.causal_mask_function, 8).clone()
    padded[..., 6:] = torch.finfo(torch.float32).min
    padded[..., 6:, 6:] = 0.0
    expected, _ = _transformers_eager(model_type)(_module(), q, k, v, padded, scaling=0.3)
    out, _ = generated(_module(), q, k, v, padded, scaling=0.3, causal=False)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


@pytest.mark.parametrize("window", [1, 3, 8])
def test_eager_applies_the_sliding_window_the_source_passes(window: int) -> None:
    generated = _functions("mistral")["eager_attention_forward"]
    q, k, v = _qkv()
    windowed = _mask(masking_utils.sliding_window_causal_mask_function(window), 8)
    expected, _ = _transformers_eager("mistral")(_module(), q, k, v, windowed, scaling=0.5)
    recomputed, _ = generated(_module(), q, k, v, None, scaling=0.5, causal=True, sliding_window=window)
    torch.testing.assert_close(recomputed, expected, rtol=0, atol=0)
    # with a causal-only mask from the host, the window still applies
    host_mask = _mask(masking_utils.causal_mask_function, 8)
    given, _ = generated(_module(), q, k, v, host_mask, scaling=0.5, causal=False, sliding_window=window)
    torch.testing.assert_close(given, expected, rtol=0, atol=0)


def test_models_without_a_window_get_no_window_parameter() -> None:
    assert "sliding_window" not in definition_source(
        module_after("llama", "NXS023"), "eager_attention_forward"
    )


@pytest.mark.parametrize("transpose", [True, False])
@pytest.mark.parametrize("groups", [1, 2])
def test_flash_path_is_causal_attention_in_the_eager_layout(
    groups: int, transpose: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(flash_attn.SEQ_MULTIPLE_ENV, "4")
    flash = _functions("qwen3")["neuron_flash_attention_forward"]
    q, k, v = _qkv(groups)
    expected, _ = _transformers_eager("qwen3")(
        _module(groups), q, k, v, _mask(masking_utils.causal_mask_function, 8), scaling=0.25
    )
    # as the attention calls it: `causal=attention_mask is None`
    out, weights = flash(_module(groups, transpose), q, k, v, None, scaling=0.25, causal=True)
    assert weights is None and out.shape == expected.shape  # (B, S, h, d), like the eager path
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
    # a causal mask built by the host means the same to the kernel
    host_mask = _mask(masking_utils.causal_mask_function, 8)
    given, _ = flash(_module(groups, transpose), q, k, v, host_mask, scaling=0.25, causal=False)
    torch.testing.assert_close(given, expected, rtol=1e-6, atol=1e-6)


def test_flash_path_refuses_non_causal_attention(monkeypatch: pytest.MonkeyPatch) -> None:
    """`causal` is the flash function's own parameter, not swallowed by `**kwargs`: a call that asks for
    attention without a causal mask is refused, since the kernel always masks the future."""
    monkeypatch.setenv(flash_attn.SEQ_MULTIPLE_ENV, "4")
    flash = _functions("qwen3")["neuron_flash_attention_forward"]
    q, k, v = _qkv()
    with pytest.raises(NotImplementedError, match="causal"):
        flash(_module(), q, k, v, None, scaling=0.25, causal=False)


def test_flash_path_refuses_a_window_shorter_than_the_sequence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(flash_attn.SEQ_MULTIPLE_ENV, "1")
    flash = _functions("mistral")["neuron_flash_attention_forward"]
    q, k, v = _qkv()
    with pytest.raises(NotImplementedError, match="sliding window"):
        flash(_module(), q, k, v, None, scaling=0.5, causal=True, sliding_window=4)
    out, _ = flash(
        _module(), q, k, v, None, scaling=0.5, causal=True, sliding_window=8
    )  # covers the sequence: plain causal
    assert out.shape == (2, 8, 4, 4)


def test_attention_picks_eager_or_flash_and_marks_the_call_causal(target: str) -> None:
    (geometry,) = blueprint_of(target).attention
    forward = method(definition_after(target, "NXS023", geometry.owner), "forward")
    text = ast.unparse(forward)
    assert "ALL_ATTENTION_FUNCTIONS" not in text
    assert (
        "if self.config._attn_implementation == 'flash_attention_2':\n"
        "        attention_interface = neuron_flash_attention_forward"
    ) in text
    (call,) = [
        n
        for n in ast.walk(forward)
        if isinstance(n, ast.Call) and ast.unparse(n.func) == "attention_interface"
    ]
    assert keyword(call, "causal") == "attention_mask is None"
    if blueprint_of(target).features.sliding_window is not None:
        assert keyword(call, "sliding_window")  # what the source passes is still passed
    module = module_after(target, "NXS023").code
    assert "from neuronx_distributed.kernels.flash_attn import nki_flash_attn_func" in module
    assert "ALL_ATTENTION_FUNCTIONS" not in module_after(target, "NXS030").code  # its import goes at the end


# --- NXS024 -----------------------------------------------------------------------------------------


def test_remaining_linears_become_the_parallel_layer_of_their_role(target: str) -> None:
    blueprint = blueprint_of(target)
    fused = {(b.owner, name) for b in blueprint.mlps for name in (b.gate, b.up)}
    module = module_after(target, "NXS024")
    checked = 0
    for site in blueprint.sites:
        if site.role not in (Role.COLUMN, Role.ROW) or (site.owner, site.attribute) in fused:
            continue
        init = method(ast.parse(definition_source(module, site.owner)).body[0], "__init__")
        for assignment in self_assignments(init, site.attribute):
            call = assignment.value
            expected = "ColumnParallelLinear" if site.role is Role.COLUMN else "RowParallelLinear"
            assert ast.unparse(call.func) == expected, site.path
            assert [ast.unparse(a) for a in call.args] == [
                normalized(site.in_features.source),
                normalized(site.out_features.source),
            ]
            assert keyword(call, "bias") == normalized(site.bias.source)
            role_keyword = (
                ("gather_output", "False") if site.role is Role.COLUMN else ("input_is_parallel", "True")
            )
            assert keyword(call, role_keyword[0]) == role_keyword[1]
            assert keyword(call, "sequence_dimension") == "0"
            assert keyword(call, "dtype") == "config.dtype"
            assert keyword(call, "init_method") == "init_method"  # bound once per constructor
            checked += 1
    assert checked >= 4  # o_proj, down_proj and the separate q/k/v
    linears = [
        n for n in ast.walk(ast.parse(module.code)) if isinstance(n, ast.Attribute) and n.attr == "Linear"
    ]
    lm_head = blueprint.site(blueprint.backbone.lm_head)
    assert len(linears) <= (lm_head.role is Role.REPLICATED)


# --- refusals on a hand-written model -----------------------------------------------------------------


def _convert(tmp_path: Path, text: str) -> tuple[str, list[str]]:
    """The pipeline's output with `--allow-unsupported`, and the refusals analysis decided, as text."""
    path = tmp_path / "modeling_synthetic.py"
    path.write_text(text)
    blueprint = analyze(locate("llama", path))
    module = apply_rules(blueprint, cst.parse_module(text), options=RuleOptions(allow_unsupported=True))
    return module.code, [f"{r.code} {r.subject} {r.rules} {r.message}" for r in blueprint.refusals]


UNPACKED_SHAPE = """bsz, q_len, width = x.shape
first = self.a(x).view(bsz, q_len, -1, self.size).transpose(1, 2)
second = self.b(x).view(bsz, q_len, -1, self.size).transpose(1, 2)
third = self.c(x).view(bsz, q_len, -1, self.size).transpose(1, 2)
out = kernel(first, second, third)"""


def test_an_unconverted_shape_read_is_refused_or_marked(tmp_path: Path) -> None:
    text = model_source(mixer_forward=UNPACKED_SHAPE)
    converted, refusals = _convert(tmp_path, text)
    assert (
        "R026 Mixer ('NXS022',) Mixer.forward reads the shape of `x` in `bsz, q_len, width = x.shape`"
        in " ".join(refusals)
    )
    # with --allow-unsupported the read is marked where it is, and the rest of the layout converted
    assert "        # TODO(R026): Mixer.forward reads the shape of `x`" in converted
    assert "x = x.transpose(0, 1)" not in converted and "first, second, third = (" in converted


def test_the_older_unpacked_shape_read_is_read_as_the_leading_shape(tmp_path: Path) -> None:
    # `b, s, _ = x.shape` (the width unread) is `b, s = x.shape[:-1]` (analysis.current_forms): converted.
    path = tmp_path / "modeling_synthetic.py"
    path.write_text(model_source(mixer_forward=UNPACKED_SHAPE.replace("width", "_")))
    source = locate("llama", path)
    blueprint = analyze(source)
    assert not any(refusal.code == "R026" for refusal in blueprint.refusals)
    module, _ = read_module(source)  # as the pipeline reads it
    converted = apply_rules(blueprint, module, options=RuleOptions(allow_unsupported=True)).code
    assert "        bsz, q_len = input_shape\n" in converted


def test_attention_without_a_backend_switch_is_refused_or_marked(tmp_path: Path) -> None:
    converted, refusals = _convert(tmp_path, model_source())
    assert any(
        r.startswith("R027 Mixer ('NXS023',) Mixer.forward: the attention function is not picked from")
        for r in refusals
    )
    assert "# TODO(R027): Mixer.forward: the attention function is not picked" in converted
    # the other rules still converted the hand-written names, and the output projection input
    assert "self.qkv_proj = GQAQKVColumnParallelLinear(" in converted
    assert "attn_output = out.transpose(1, 2).reshape(*input_shape, -1)" in converted
    assert "gate, up = self.gate_up_proj(x).split(self.split_size, dim=-1)" in converted
    # the head without a loss (R023) is left to the contributor, marked
    assert "# TODO(R023): LlamaForCausalLM.forward:" in converted
