"""The MoE judgements on hand-made inputs: routing figures and their reasons, NxD's capacity rule, which
variant of the auxiliary loss a loss difference matches, the overfit curve cut at a training-time router
near-tie, and the data-parallel split of the fixed batch. Every expected value is written out by hand."""

from __future__ import annotations

import pytest
import torch

from conformance.checks.overfit import judge_run
from conformance.comparisons.routing import (
    ExpertLayout,
    auxiliary_loss_diagnosis,
    compare_routing,
    dropped_choices,
)
from conformance.model_runs.data_parallel import row_shares
from conformance.model_runs.fixed_batch import data_parallel_rows, fixed_batch
from conformance.model_runs.training_loop import TrainingJob, TrainingRun
from conformance.model_runs.transformers_reference import LossTerms

# 4 tokens (batch 1 x sequence 4), 4 experts, top 2.
REFERENCE = torch.tensor(
    [[3.0, 2.0, 0.0, -1.0], [0.0, 1.0, 2.0, 3.0], [1.0, 0.0, 2.0, 0.5], [2.0, 2.5, 0.0, 0.0]]
)
EVERYWHERE = torch.ones(1, 4, dtype=torch.bool)
DROPLESS = ExpertLayout(num_experts=4, top_k=2, capacity_factor=None)


def test_routing_figures_of_a_model_that_routes_like_transformers() -> None:
    found = compare_routing([REFERENCE], [REFERENCE + 1e-7], 2, EVERYWHERE, DROPLESS, 0, 1e-5)
    assert found.reasons == [] and found.notes == []
    assert found.router_margin == pytest.approx(0.5)  # token 2: 1.0 (2nd) - 0.5 (3rd)
    # choices: {0, 1}, {3, 2}, {2, 0}, {1, 0}
    assert found.tokens_per_expert == [[3, 2, 2, 1]]
    assert found.tokens_routed_differently == 0
    assert (
        found.line()
        == "margin 0.5; tokens/expert L0 [3, 2, 2, 1]; dropped 0 (dropless); routed differently 0"
    )


def test_a_token_routed_elsewhere_is_a_reason_and_other_logits_alone_another() -> None:
    swapped = REFERENCE.clone()
    swapped[1] = torch.tensor([3.0, 2.0, 1.0, 0.0])  # token 1 picks {0, 1} instead of {3, 2}
    found = compare_routing([REFERENCE], [swapped], 2, EVERYWHERE, DROPLESS, 0, 1e-5)
    assert found.tokens_routed_differently == 1
    assert found.reasons == [
        "1 compared token(s) are routed to other experts than transformers' (layer 0: 1) although its router "
        "margin is 0.5: the router, its input or the top-k choice differ"
    ]
    shifted = compare_routing([REFERENCE], [REFERENCE + 0.25], 2, EVERYWHERE, DROPLESS, 0, 1e-5)
    assert shifted.tokens_routed_differently == 0
    assert shifted.reasons[0].startswith("the router logits differ from transformers' (max |d| 0.25 > 1e-05)")
    missing = compare_routing([REFERENCE], None, 2, EVERYWHERE, DROPLESS, 0, 1e-5)
    assert missing.reasons == [] and "returns no router_logits" in missing.notes[0]


def test_nxd_capacity_rule_drops_choices_beyond_capacity() -> None:
    # 4 tokens x top 2 = 8 choices over 4 experts; capacity factor 0.5: C = ceil(4 * 2 * 0.5 / 4) = 1.
    # Experts 0, 1, 2, 3 are chosen 3, 2, 2, 1 times: 2 + 1 + 1 + 0 = 4 choices dropped.
    assert dropped_choices([REFERENCE], ExpertLayout(4, 2, 0.5)) == 4
    assert dropped_choices([REFERENCE], ExpertLayout(4, 2, 1.0)) == 1  # C = 2: expert 0 loses one
    assert dropped_choices([REFERENCE], DROPLESS) == 0
    note = compare_routing([REFERENCE], [REFERENCE], 2, EVERYWHERE, ExpertLayout(4, 2, 0.5), 4, 1e-5).notes
    assert note == [
        "NxD's capacity factor 0.5 dropped 4 token choice(s); transformers drops none, so the outputs of those tokens differ by design"
    ]


@pytest.mark.parametrize(
    ("delta", "variant"),
    [
        (-0.02 * 2.0, "left out"),
        (0.02 * 2.0 * (1 / 2 - 1), "divided by top_k = 2 (NxD's load_balancing_loss_func)"),
        (0.02 * (2.5 - 2.0), "taken over every token, padding included (no attention_mask)"),
        (0.02 * (2.5 / 2 - 2.0), "taken over every token and divided by top_k = 2"),
        (2.0 * (1 - 0.02), "added without router_aux_loss_coef"),
    ],
)
def test_the_auxiliary_loss_variant_a_loss_difference_matches(delta: float, variant: str) -> None:
    terms = LossTerms(aux_loss=2.0, aux_loss_every_token=2.5, coefficient=0.02, top_k=2)
    (reason,) = auxiliary_loss_diagnosis(delta, [terms], 1e-5)
    assert reason.endswith(f"the model's auxiliary loss is transformers' {variant}")
    assert (
        "router_aux_loss_coef 0.02 x load_balancing_loss_func(router_logits, experts, top_k 2, attention_mask) = 0.04"
        in reason
    )


def test_an_unexplained_loss_difference_only_points_at_the_auxiliary_loss_and_a_dense_model_gets_none() -> (
    None
):
    terms = LossTerms(aux_loss=2.0, aux_loss_every_token=2.5, coefficient=0.02, top_k=2)
    (reason,) = auxiliary_loss_diagnosis(0.003, [terms], 1e-5)
    assert reason.endswith("= 0.04)")
    assert auxiliary_loss_diagnosis(0.003, [None], 1e-5) == []


def _run(losses: list[float], reference: list[float], margins: list[float]) -> TrainingRun:
    job = TrainingJob("mixtral/gqa", 2, True, False, len(losses), "float32", "unused", 256)
    return TrainingRun(job, losses, reference, margins)


def test_overfit_curves_are_cut_at_a_training_time_router_near_tie_only() -> None:
    reference = [5.0, 3.0, 1.0, 0.4, 0.1]
    parted = [5.0, 3.0, 1.0, 0.41, 0.11]  # parts at step 3
    near_tie = judge_run(_run(parted, reference, [0.01, 0.01, 5e-5, 0.01, 0.01]))
    assert near_tie.status is None and near_tie.reasons == []  # a PASS
    assert near_tie.figures["steps_compared"] == 3
    assert near_tie.notes[0].startswith(
        "curves compared up to step 2: at step 2 transformers' router came within 5e-05"
    )
    no_tie = judge_run(_run(parted, reference, [0.01] * 5))
    assert no_tie.figures["first_departing_step"] == 3
    assert no_tie.reasons[0].startswith("the loss curve departs from transformers' at step 3")
    dense = judge_run(_run(parted, reference, []))
    assert dense.reasons[0].startswith("the loss curve departs from transformers' at step 3")


def test_data_parallel_ranks_feed_their_own_rows_of_the_fixed_batch() -> None:
    assert row_shares(1, 2) == [(0, 1)]
    assert row_shares(2, 2) == [(0,), (1,)]
    assert data_parallel_rows(1, 2) == (1,)
    with pytest.raises(ValueError, match="cannot feed 4 data-parallel ranks"):
        data_parallel_rows(0, 4)
    batch = fixed_batch(256, pad_id=5)
    second = batch.rows((1,))
    assert torch.equal(second.input_ids[0], batch.input_ids[1]) and second.attention_mask.shape == (1, 16)
    assert second.padded_tokens == 5  # the right-padded row
