"""What a profile does not test is computed from its plan: the quick and full profiles of llama list what
their configurations leave out (written out here from the plans' configurations), and a configuration
that starts exercising an option removes that option from the list. The tiny-model traits list the config
fields whose values differ from the config class's defaults (the catalogue's hand-picked traits)."""

from __future__ import annotations

from dataclasses import dataclass

from conformance.coverage import not_tested
from conformance.harness.protocol import CheckConfig, Exercised
from conformance.harness.registry import check_names
from conformance.model_traits import traits
from conformance.profiles import PlannedCheck, plan


def test_the_quick_profile_lists_what_it_leaves_out() -> None:
    found = not_tested("llama", plan("llama", "quick"), check_names())
    assert (
        found
        == [
            "TP sizes 4, 8: no check runs at them",  # quick runs T=1 and T=2 (llama/mqa reaches the GQA layer at 2)
            "the Neuron flash-attention path (attn_implementation=flash_attention_2, transpose_nki_inputs)",
            "pipeline parallelism (PP > 1): no check runs it (the reference backend does not implement it)",
            # fuse_qkv, recompute_causal_mask=False and gradient checkpointing each have a quick parity case
            "attention layouts fused: no configuration reaches them",  # only llama/mha with fuse_qkv does
            "catalogue variants llama/mha, llama/head-dim, llama/odd-vocab, llama/features",
        ]
    )


def test_the_full_profile_leaves_out_less_and_a_check_subset_is_named() -> None:
    assert not_tested("llama", plan("llama", "full"), check_names()) == [
        "pipeline parallelism (PP > 1): no check runs it (the reference backend does not implement it)",
    ]
    parity_only = not_tested("llama", plan("llama", "quick", ["parity"]), check_names())
    assert "training or running in bfloat16" in parity_only
    assert parity_only[-1] == (
        "checks round_trip, topology_change, lora_round_trip, init, overfit, replicas, bf16_smoke, dropout: not run"
    )


@dataclass(frozen=True)
class _CheckpointedConfig(CheckConfig):
    tp_size: int

    def exercised(self) -> Exercised:
        return Exercised(
            (self.tp_size,), (("gradient_checkpointing", True), ("recompute_causal_mask", False))
        )


def test_a_configuration_that_exercises_an_option_removes_it_from_the_list() -> None:
    planned = plan("llama", "quick", ["overfit"])  # trains with the defaults only
    before = not_tested("llama", planned, ["overfit"])
    assert "TrainingNeuronConfig gradient_checkpointing=True" in before
    assert "TrainingNeuronConfig recompute_causal_mask=False" in before
    (check,) = [entry.check for entry in planned]
    extra = PlannedCheck(check, (_CheckpointedConfig("llama/gqa", 2),))
    found = not_tested("llama", [*planned, extra], ["overfit"])
    assert "TrainingNeuronConfig gradient_checkpointing=True" not in found
    assert "TrainingNeuronConfig recompute_causal_mask=False" not in found
    assert "TrainingNeuronConfig fuse_qkv=True" in found


def test_traits_show_the_shape_and_the_fields_the_catalogue_changed() -> None:
    mistral = traits("mistral/head-dim")
    assert (mistral["hidden_size"], mistral["layers"], mistral["heads"], mistral["kv_heads"]) == (64, 2, 4, 2)
    assert (mistral["head_dim"], mistral["vocab_size"], mistral["tied_embeddings"]) == (32, 256, False)
    assert mistral["non_default_fields"]["sliding_window"] == 5  # mistral's trait in the catalogue
    granite = traits("granite/gqa")["non_default_fields"]
    assert (granite["embedding_multiplier"], granite["residual_multiplier"]) == (4.0, 0.5)
    assert not {"hidden_size", "vocab_size", "num_attention_heads", "model_type"} & set(granite)
    assert traits("llama/tied")["tied_embeddings"] is True
