"""Conformance of mixture-of-experts packages: broken copies of the generated Mixtral and Qwen3-MoE fail
with a reason that names the cause, and the generated Mixtral passes end to end with expert parallelism.

The packages are what `scaffold new-model <type>` writes (the `generated` fixture), edited in one place each.
The oracle of every verdict is transformers on the same catalogue checkpoint, inside the checks; the tests
assert the verdicts and the causes the reasons name:

(a) the auxiliary loss computed NxD's way (its `load_balancing_loss_func`: divided by top_k, no padding mask)
    fails parity on the loss while the logits agree, and the reason names that variant of the loss;
(b) gate and up swapped where the spec loads the experts fails the round trip (w1 and w3 come back swapped)
    and parity (the first sparse block departs);
(c) a router under SP whose weight lost its `sequence_parallel_enabled` mark fails the replicas check, which
    names the router and the fix; a router marked `expert_model_parallel` drifts apart between the EP ranks
    (which are data-parallel ranks), which the replicas check names too;
(d) the top-k normalisation dropped fails parity where the config asks for it (`norm_topk_prob=True`), and
    the same copy passes where it does not (the catalogue's `features` variant is what exposes it).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from conformance.checks import RunSettings
from conformance.checks.parity import CHECK as PARITY
from conformance.checks.parity import ParityConfig
from conformance.checks.replicas import CHECK as REPLICAS
from conformance.checks.replicas import ReplicasConfig
from conformance.checks.round_trip import CHECK as ROUND_TRIP
from conformance.checks.round_trip import RoundTripConfig
from conformance.results import Status

SPEC_MODULE = "moe_expert_weights.py"

NXD_AUXILIARY_LOSS = (
    "            aux_loss = load_balancing_loss_func(\n"
    "                outputs.router_logits,\n"
    "                self.num_experts,\n"
    "                self.num_experts_per_tok,\n"
    "                attention_mask,\n"
    "            )",
    "            from neuronx_distributed.modules.moe import load_balancing_loss_func as nxd_balance\n\n"
    "            aux_loss = nxd_balance(torch.cat(outputs.router_logits), self.num_experts, self.num_experts_per_tok)",
)
GATE_UP_SWAPPED_ON_LOAD = (
    "torch.cat([gate[..., columns], up[..., columns]], dim=-1)",
    "torch.cat([up[..., columns], gate[..., columns]], dim=-1)",
)
ROUTER_WITHOUT_SP_MARK = (
    "        init_method(self.router.linear_router.weight.data)\n",
    "        init_method(self.router.linear_router.weight.data)\n"
    "        self.router.linear_router.weight.sequence_parallel_enabled = False\n",
)
ROUTER_MARKED_AS_EXPERT = (
    ROUTER_WITHOUT_SP_MARK[0],
    ROUTER_WITHOUT_SP_MARK[0] + "        self.router.linear_router.weight.expert_model_parallel = True\n",
)
NORMALISATION_DROPPED = (
    "normalize_top_k_affinities=config.norm_topk_prob,",
    "normalize_top_k_affinities=False,",
)

BrokenMoe = Callable[..., Path]


@pytest.fixture
def settings(checkpoint_cache: Path) -> RunSettings:
    return RunSettings(cache_dir=checkpoint_cache)


def test_auxiliary_loss_computed_the_nxd_way_fails_parity_naming_the_loss(
    broken_copy: BrokenMoe, settings: RunSettings
) -> None:
    package = broken_copy("mixtral", [NXD_AUXILIARY_LOSS])
    (result,) = PARITY.run(package, [ParityConfig("mixtral/gqa", 2, True)], settings)
    assert result.status is Status.FAIL
    assert result.figures["logits_max_abs_diff"] <= 1e-5  # the forward is right: only the loss is off
    assert result.reasons[0].startswith("the loss differs from transformers' by ")
    assert "while the logits agree: the auxiliary load-balancing loss is off" in result.reasons[0]
    assert result.reasons[0].endswith(
        "the model's auxiliary loss is transformers' taken over every token and divided by top_k = 2"
    )
    assert any(reason.startswith("loss differs: |delta| 0.02") for reason in result.reasons)
    assert "model.layers.0.block_sparse_moe.gate.weight" in result.figures["gradients_out_of_bound"]


def test_gate_and_up_swapped_in_the_spec_fail_round_trip_and_parity(
    broken_copy: BrokenMoe, settings: RunSettings
) -> None:
    package = broken_copy("mixtral", [GATE_UP_SWAPPED_ON_LOAD], file=SPEC_MODULE)
    (trip,) = ROUND_TRIP.run(package, [RoundTripConfig("mixtral/gqa", 2)], settings)
    assert trip.status is Status.FAIL
    swapped = {
        f"model.layers.{i}.block_sparse_moe.experts.{e}.{w}.weight"
        for i in range(2)
        for e in range(4)
        for w in ("w1", "w3")
    }
    assert set(trip.figures["tensors_differing"]) == swapped
    (parity,) = PARITY.run(package, [ParityConfig("mixtral/gqa", 1)], settings)
    assert parity.status is Status.FAIL
    assert parity.figures["first_divergent_module"] == "model.layers.0.block_sparse_moe"
    assert parity.reasons[0].startswith(
        "the forward first departs from transformers at model.layers.0.block_sparse_moe"
    )
    assert "the experts' gate/up/down layout" in parity.reasons[0]


def test_a_router_under_sp_without_its_mark_fails_replicas_naming_the_router(
    broken_copy: BrokenMoe, settings: RunSettings
) -> None:
    package = broken_copy("mixtral", [ROUTER_WITHOUT_SP_MARK])
    (result,) = REPLICAS.run(package, [ReplicasConfig("mixtral/gqa", 2, True)], settings)
    assert result.status is Status.FAIL
    routers = {f"model.layers.{i}.block_sparse_moe.router.linear_router.weight" for i in range(2)}
    assert set(result.figures["first_gradient_step_differing"]) == routers
    reason = next(
        r
        for r in result.reasons
        if r.startswith("model.layers.0.block_sparse_moe.router.linear_router.weight ")
    )
    assert "per-rank partial gradient never summed" in reason
    assert "applied to the rank's sequence shard under SP" in reason
    assert "mark it sequence_parallel_enabled" in reason


def test_a_shared_router_marked_as_an_expert_drifts_between_expert_parallel_ranks(
    broken_copy: BrokenMoe, settings: RunSettings
) -> None:
    # optimum-neuron averages an `expert_model_parallel` gradient only over the ranks holding the same
    # experts: the router, which every EP rank holds and trains on its own rows, then drifts apart.
    package = broken_copy("mixtral", [ROUTER_MARKED_AS_EXPERT])
    (result,) = REPLICAS.run(package, [ReplicasConfig("mixtral/gqa", 1, ep_size=2)], settings)
    assert result.status is Status.FAIL
    routers = {f"model.layers.{i}.block_sparse_moe.router.linear_router.weight" for i in range(2)}
    assert set(result.figures["data_parallel_spread"]) == routers
    assert result.figures["data_parallel_differing"] == 2
    reason = next(
        r
        for r in result.reasons
        if r.startswith("model.layers.1.block_sparse_moe.router.linear_router.weight ")
    )
    assert "is not the same on every data-parallel (expert-parallel) rank after 3 optimizer steps" in reason
    assert "from step 1 its gradient differs between the data-parallel ranks" in reason
    assert "a shared parameter marked expert_model_parallel" in reason


def test_dropped_top_k_normalisation_fails_parity_where_the_config_asks_for_it(
    broken_copy: BrokenMoe, settings: RunSettings
) -> None:
    package = broken_copy("qwen3_moe", [NORMALISATION_DROPPED])
    normalised, plain = PARITY.run(
        package,
        [ParityConfig("qwen3_moe/features", 2, True), ParityConfig("qwen3_moe/gqa", 2, True)],
        settings,
    )
    assert normalised.status is Status.FAIL
    # qwen3_moe's layer 0 is a dense MLP (decoder_sparse_step 2): the sparse block of layer 1 departs first.
    assert normalised.figures["first_divergent_module"] == "model.layers.1.mlp"
    assert "the top-k choice and the normalisation of the chosen affinities" in normalised.reasons[0]
    assert any(reason.startswith("logits differ") for reason in normalised.reasons)
    assert plain.status is Status.PASS, plain.reasons  # norm_topk_prob=False: the break does not show


@pytest.mark.slow
def test_the_quick_profile_of_the_generated_mixtral_passes_with_expert_parallelism(
    generated: Callable[[str], Path], settings: RunSettings
) -> None:
    """End to end, as `python -m conformance mixtral` runs it on the package `scaffold new-model` writes:
    every row PASS (dropout SKIPs: the config has none), EP=2 in parity, round trip, topology and replicas,
    and the routing figures beside parity's."""
    from conformance.reports.markdown import render_markdown
    from conformance.runner import run_model

    run = run_model("mixtral", generated("mixtral"), settings=settings)
    not_passing = {
        result.label: (result.status, result.reasons)
        for result in run.results
        if result.status is not Status.PASS and not result.label.startswith("dropout")
    }
    assert not not_passing
    expert_parallel = {result.check for result in run.results if "EP=2" in result.label}
    assert expert_parallel == {"parity", "round_trip", "topology_change", "replicas"}
    parity = [result for result in run.results if result.check == "parity"]
    for result in parity:
        assert result.figures["tokens_routed_differently"] == 0
        assert result.figures["dropped_choices"] == 0 and result.figures["capacity_factor"] is None
        assert result.figures["router_margin"] >= 1e-3
        assert "routing" in result.key_figures
    # A seeded init's zero padding embedding ties every expert on left padding, routing nothing there:
    # the margin is read on the other tokens (it read 0.0 on every row before).
    for result in run.results:
        if result.check == "topology_change":
            assert 0.0 < result.figures["router_margin"] < float("inf")
    assert "routing=margin " in render_markdown(run)
    assert not any(line.startswith("expert-parallel sizes") for line in run.not_tested)
