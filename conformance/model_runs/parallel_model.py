"""The package's causal LM on this rank, built as optimum-neuron's training host builds it.

`load_parallel` is `<X>ForCausalLM.from_pretrained(checkpoint, TrainingNeuronConfig(...), ...)` as one
`rank_step` marked as the model's construction: a clear refusal there is UNSUPPORTED, anything else that
raises is a FAIL (`conformance.harness.job_errors`).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import torch

from conformance.harness.rank_steps import rank_step


def training_config(tp_size: int, **options: Any) -> Any:
    """The active host's `TrainingNeuronConfig(tensor_parallel_size=tp_size, **options)`."""
    from conformance.backends import active

    return active().host_module("config").TrainingNeuronConfig(tensor_parallel_size=tp_size, **options)


def load_parallel(
    package: ModuleType,
    checkpoint: str,
    tp_size: int,
    *,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = "eager",
    **options: Any,
) -> tuple[torch.nn.Module, Any, dict[str, Any]]:
    """(model, its TrainingNeuronConfig, from_pretrained's loading info), on every rank together."""
    from conformance.model_package import causal_lm_class

    def build() -> tuple[torch.nn.Module, Any, dict[str, Any]]:
        trn_config = training_config(tp_size, **options)
        model_cls = causal_lm_class(package, checkpoint)
        model, info = model_cls.from_pretrained(
            checkpoint,
            trn_config,
            attn_implementation=attn_implementation,
            dtype=dtype,
            output_loading_info=True,
        )
        return model, trn_config, info

    return rank_step(f"from_pretrained at T={tp_size}", build, construction=True)
