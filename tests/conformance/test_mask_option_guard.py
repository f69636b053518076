"""A config flag that makes transformers' attention non-causal stops the generated model at construction.

gemma3_text's `use_bidirectional_attention` widens both masks with an `or_mask_function` in transformers;
optimum-neuron's training masks are causal only. NXS014 turns the branch into a NotImplementedError in the
base model's __init__, so the generated model refuses the flag instead of silently training causally. The
oracle for "the flag matters" is transformers itself: its logits change when the flag is on.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import Gemma3ForCausalLM, Gemma3TextConfig

from conformance.tensor_parallel_run import run_tensor_parallel

TINY = dict(
    vocab_size=64,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    sliding_window=4,
)


def _build(package_dir: str, bidirectional: bool) -> str:
    from conformance.model_package import mount
    from conformance.model_runs.parallel_model import training_config

    package, unmount = mount(Path(package_dir))
    try:
        config = Gemma3TextConfig(**TINY, use_bidirectional_attention=bidirectional)
        modeling = importlib.import_module(f"{package.__name__}.modeling_gemma3_text")
        modeling.Gemma3ForCausalLM(config, training_config(1))
        return "built"
    except NotImplementedError as error:
        return f"NotImplementedError: {error}"
    finally:
        unmount()


def test_transformers_attends_both_ways_with_the_flag():
    torch.manual_seed(0)
    causal = Gemma3ForCausalLM(Gemma3TextConfig(**TINY, attn_implementation="eager")).eval()
    both_ways = Gemma3ForCausalLM(
        Gemma3TextConfig(**TINY, use_bidirectional_attention=True, attn_implementation="eager")
    ).eval()
    both_ways.load_state_dict(causal.state_dict())
    ids = torch.arange(8).unsqueeze(0)
    with torch.no_grad():
        assert not torch.allclose(causal(ids).logits[0, 0], both_ways(ids).logits[0, 0])


def test_the_generated_model_refuses_the_flag_at_construction(generated: Callable[[str], Path]) -> None:
    package = generated("gemma3_text")
    (with_flag,) = run_tensor_parallel(_build, 1, str(package), True)
    (without,) = run_tensor_parallel(_build, 1, str(package), False)
    assert without == "built"
    assert with_flag.startswith(
        "NotImplementedError: config.use_bidirectional_attention sets or_mask_function"
    )
