"""What the NKI flash-attention kernel cannot compute, read from a model config (a general rule, no model names).

NxD's `nki_flash_attn_func` is causal attention over the whole sequence: it has no sliding window and no
logit softcapping. A generated model whose config needs either refuses the flash path with an error naming
the feature (the scaffolder emits that guard); on Trainium it would refuse the same way. The parity check
treats such a refusal of a flash-attention case as the expected answer, like a TP size that does not
divide the vocabulary.
"""

from __future__ import annotations

from transformers import PretrainedConfig

SLIDING_WINDOW = "sliding window"
SOFTCAPPING = "softcapping"

# Words a refusal's first line must contain to name each limit.
_NAMED_BY: dict[str, tuple[str, ...]] = {SLIDING_WINDOW: ("sliding", "window"), SOFTCAPPING: ("softcap",)}


def flash_kernel_limits(config: PretrainedConfig, sequence_length: int) -> list[str]:
    """The kernel limits `config` runs into at `sequence_length` (empty when flash attention can run it)."""
    limits = []
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    windowed_layers = layer_types is None or "sliding_attention" in layer_types
    if isinstance(window, int) and window < sequence_length and windowed_layers:
        limits.append(SLIDING_WINDOW)
    if getattr(config, "attn_logit_softcapping", None) is not None:
        limits.append(SOFTCAPPING)
    return limits


def describe(limits: list[str], sequence_length: int) -> str:
    """The expected refusal, in words."""
    return (
        f"the NKI flash-attention kernel has no {' and no '.join(limits)}, which this config uses at sequence "
        f"length {sequence_length}"
    )


def refusal_names_a_limit(first_line: str, limits: list[str]) -> bool:
    """Whether an error's first line names flash attention and one of the limits."""
    text = first_line.lower()
    return "flash" in text and any(all(word in text for word in _NAMED_BY[limit]) for limit in limits)
