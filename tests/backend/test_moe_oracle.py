"""The tests' dense MoE against transformers, and NxD's load-balancing loss against transformers'.

transformers' Mixtral block (softmax, top-2, renormalised) and Qwen3-MoE block (norm_topk_prob off) are
independent implementations of the dropless routing the dense oracle of `moe_dense.py` computes; they
agree in outputs, router logits and every gradient. NxD's `load_balancing_loss_func` is transformers'
formula divided by top_k (NxD scales by E / top_k, transformers by E), checked here on random logits.
"""

from __future__ import annotations

import pytest
import torch
from transformers import MixtralConfig, Qwen3MoeConfig
from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock
from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func as hf_balance_loss
from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock

from conformance.backends import activate

from .moe_dense import Routing, dense_moe, make_dense, top_k_margin

E, H, INTER, K = 4, 8, 6, 2


def _mixtral_block(w) -> torch.nn.Module:
    config = MixtralConfig(hidden_size=H, intermediate_size=INTER, num_local_experts=E, num_experts_per_tok=K)
    block = MixtralSparseMoeBlock(config)
    with torch.no_grad():
        block.gate.weight.copy_(w.router)
        for e, expert in enumerate(block.experts):
            expert.w1.weight.copy_(w.gate[e])
            expert.w3.weight.copy_(w.up[e])
            expert.w2.weight.copy_(w.down[e])
    return block


def _qwen3_moe_block(w) -> torch.nn.Module:
    config = Qwen3MoeConfig(
        hidden_size=H, moe_intermediate_size=INTER, num_experts=E, num_experts_per_tok=K, norm_topk_prob=False
    )
    block = Qwen3MoeSparseMoeBlock(config)
    with torch.no_grad():
        block.gate.weight.copy_(w.router)
        for e, expert in enumerate(block.experts):
            expert.gate_proj.weight.copy_(w.gate[e])
            expert.up_proj.weight.copy_(w.up[e])
            expert.down_proj.weight.copy_(w.down[e])
    return block


def _hf_grads(block: torch.nn.Module, kind: str) -> dict[str, torch.Tensor]:
    if kind == "mixtral":
        names = {"gate": "w1", "up": "w3", "down": "w2"}
    else:
        names = {"gate": "gate_proj", "up": "up_proj", "down": "down_proj"}
    grads = {"router": block.gate.weight.grad}
    for ours, theirs in names.items():
        grads[ours] = torch.stack([getattr(expert, theirs).weight.grad for expert in block.experts])
    return grads


@pytest.mark.parametrize(("kind", "normalize"), [("mixtral", True), ("qwen3_moe", False)])
def test_dense_oracle_matches_transformers_blocks(kind: str, normalize: bool) -> None:
    w = make_dense(3, E, H, INTER)
    x = torch.randn(2, 5, H, generator=torch.Generator().manual_seed(4))
    probe = torch.randn(2, 5, H, generator=torch.Generator().manual_seed(5))
    block = _mixtral_block(w) if kind == "mixtral" else _qwen3_moe_block(w)
    hf_x = x.clone().requires_grad_()
    hf_out, hf_logits = block(hf_x)
    (hf_out * probe).sum().backward()

    ours_x = x.clone().requires_grad_()
    out, logits, dropped = dense_moe(ours_x.view(-1, H), w, Routing(top_k=K, normalize=normalize))
    (out.view_as(x) * probe).sum().backward()

    assert top_k_margin(logits, K) > 1e-3, "the test data has a near-tie in routing"
    assert dropped == 0
    torch.testing.assert_close(out.view_as(x), hf_out)
    torch.testing.assert_close(logits, hf_logits)
    torch.testing.assert_close(ours_x.grad, hf_x.grad)
    for name, grad in _hf_grads(block, kind).items():
        torch.testing.assert_close(getattr(w, name).grad, grad, msg=lambda m, name=name: f"{name}: {m}")


def test_dense_oracle_drops_in_token_order_and_renormalises_over_what_is_kept() -> None:
    # 4 tokens, 2 experts, top_k=2: every token picks both experts. Capacity ceil(4 * 2 * 0.5 / 2) = 2 per
    # expert: tokens 0 and 1 keep both experts, tokens 2 and 3 lose both (4 dropped choices).
    w = make_dense(0, 2, H, INTER)
    x = torch.randn(4, H, generator=torch.Generator().manual_seed(1))
    out, _, dropped = dense_moe(x, w, Routing(top_k=2, normalize=True, capacity_factor=0.5))
    full, _, _ = dense_moe(x, w, Routing(top_k=2, normalize=True))
    assert dropped == 4
    torch.testing.assert_close(out[:2], full[:2])
    assert torch.count_nonzero(out[2:]) == 0


def test_load_balancing_loss_is_transformers_divided_by_top_k() -> None:
    activate("reference")
    from neuronx_distributed.modules.moe import load_balancing_loss_func

    gen = torch.Generator().manual_seed(7)
    layers = tuple(torch.randn(10, 8, generator=gen) for _ in range(3))
    for top_k in (1, 2, 3):
        ours = load_balancing_loss_func(torch.cat(layers), num_experts=8, top_k=top_k)
        theirs = hf_balance_loss(layers, num_experts=8, top_k=top_k)
        torch.testing.assert_close(
            ours.float() * top_k, theirs.float(), msg=lambda m, k=top_k: f"top_k={k}: {m}"
        )
    # Its gradient reaches the logits through the probabilities, as transformers' does.
    logits = torch.cat(layers).requires_grad_()
    load_balancing_loss_func(logits, num_experts=8, top_k=2).backward()
    assert logits.grad is not None and torch.count_nonzero(logits.grad) > 0
