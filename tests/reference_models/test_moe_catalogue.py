"""The mixture-of-experts catalogue: tiny MoE configs of the public types, divisible at T <= 4 and EP <= 2,
the auxiliary loss on, and no routing near-tie on the checks' fixed batch.

The margin is recomputed here from each variant's built checkpoint with transformers' own router logits
(`output_router_logits=True`, fp32, eval), on the fixed batch with the causal mask only (every position) and
with the padding mask (attended positions): the oracle is transformers, not the builder's seed search. The
helpers are checked on hand-written logits.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from conformance.model_runs.fixed_batch import batch_for
from reference_models import build, variant, variants_for
from reference_models.builder import MANIFEST
from reference_models.catalogue import is_moe, num_experts
from reference_models.routing import MIN_ROUTER_MARGIN, layer_margins, tokens_per_expert, top_k_margins

MOE_TYPES = ("mixtral", "qwen2_moe", "qwen3_moe", "phimoe", "granitemoe", "granitemoeshared")
ALL_MOE_VARIANTS = [entry.key for model_type in MOE_TYPES for entry in variants_for(model_type)]


def test_the_public_moe_types_get_tiny_expert_sizes_and_the_auxiliary_loss() -> None:
    mixtral = variant("mixtral/gqa").config()
    assert (mixtral.num_local_experts, mixtral.num_experts_per_tok, mixtral.intermediate_size) == (4, 2, 96)
    qwen2 = variant("qwen2_moe/gqa").config()
    assert (qwen2.num_experts, qwen2.moe_intermediate_size, qwen2.shared_expert_intermediate_size) == (
        4,
        32,
        48,
    )
    # GraniteMoeShared's shared MLP exists only for a shared_intermediate_size above its default 0.
    assert variant("granitemoeshared/gqa").config().shared_intermediate_size == 48
    for model_type in MOE_TYPES:
        config = variants_for(model_type)[0].config()
        assert is_moe(model_type) and num_experts(config) == 4
        assert config.output_router_logits is True
        assert config.router_aux_loss_coef == 0.02  # not the default 0.001
        assert config.hidden_act == "gelu"  # in NxD's ExpertMLPs table, unlike gelu_pytorch_tanh
    assert not is_moe("llama") and num_experts(variant("llama/gqa").config()) is None
    # Qwen-MoE's sparse step 2: with 2 layers, layer 0 is a dense MLP and layer 1 a sparse block.
    assert variant("qwen3_moe/gqa").config().decoder_sparse_step == 2
    assert variant("qwen3_moe/features").config().norm_topk_prob is True
    # phimoe's router_jitter_noise (default 0.01) is off: in training its sparsemixer samples among the
    # experts within it of the best, which runs that order the tokens differently cannot reproduce.
    phimoe = variant("phimoe/gqa")
    assert phimoe.config().router_jitter_noise == 0.0
    assert "router jitter off" in {c.name: c for c in phimoe.field_choices()}["router_jitter_noise"].rule
    assert variant("mixtral/gqa").config().router_jitter_noise == 0.0  # its default: nothing to turn off


def test_expert_parallel_sizes_must_divide_the_experts() -> None:
    mixtral = variant("mixtral/gqa")
    assert mixtral.unsupported_reason(4, 2) is None
    assert "expert parallel size 8 needs experts divisible by it (the config has 4)" in (
        mixtral.unsupported_reason(1, 8) or ""
    )
    assert "the config has none" in (variant("llama/gqa").unsupported_reason(1, 2) or "")
    assert "moe_intermediate_size 32 is not divisible by 3" in (
        variant("qwen3_moe/gqa").unsupported_reason(3) or ""
    )


def test_margin_helpers_on_hand_written_logits() -> None:
    logits = torch.tensor([[3.0, 1.0, 2.0, 0.5], [0.0, 0.0, 0.0, 0.0], [1.0, 4.0, 3.9, -1.0]])
    # top 2: second largest minus third largest.
    assert top_k_margins(logits, 2).tolist() == pytest.approx([1.0, 0.0, 2.9])
    positions = torch.tensor([[False, False, True]])
    assert layer_margins([logits], 2, positions) == pytest.approx([2.9])
    assert layer_margins([logits], 1) == pytest.approx([0.0])
    # The all-equal row is a zero router input (nothing to route): left out on request only.
    assert layer_margins([logits], 1, skip_zero_inputs=True) == pytest.approx([0.1])
    assert layer_margins([logits], 2, positions, skip_zero_inputs=True) == pytest.approx([2.9])
    assert layer_margins([logits[[1]]], 2, skip_zero_inputs=True) == [float("inf")]
    assert tokens_per_expert([logits[[0, 2]]], 2) == [[1, 1, 2, 0]]


@pytest.mark.parametrize("key", ALL_MOE_VARIANTS)
def test_no_routing_near_tie_on_the_fixed_batch(key: str, checkpoint_cache: Path) -> None:
    entry = variant(key)
    folder = build(entry, checkpoint_cache)
    model = AutoModelForCausalLM.from_pretrained(
        folder, attn_implementation="eager", dtype=torch.float32
    ).eval()
    config = entry.config()
    batch = batch_for(config)
    margins = []
    for honours_padding in (False, True):
        with torch.no_grad():
            output = model(**batch.reference_inputs(honours_padding, labels=False), output_router_logits=True)
        assert output.router_logits, key
        margins += layer_margins(
            output.router_logits, config.num_experts_per_tok, batch.compared_positions(honours_padding)
        )
    assert min(margins) >= MIN_ROUTER_MARGIN, f"{key}: router margins {margins}"
    manifest = (folder / MANIFEST).read_text()
    assert '"model_seed"' in manifest and '"router_margin"' in manifest
