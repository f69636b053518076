"""The 4-D additive attention mask of the eager path (`optimum.neuron.models.training.masking_utils`).

Used only when `trn_config.recompute_causal_mask` is False; by default attention recomputes a pure causal
mask itself and the padding mask is ignored.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from transformers import PretrainedConfig

from .config import TrainingNeuronConfig
from .training_utils import is_logging_process

logger = logging.getLogger(__name__)

_WARNED_FLASH_ATTENTION_2 = False


def create_causal_mask(
    config: PretrainedConfig,
    trn_config: TrainingNeuronConfig,
    input_embeds: torch.Tensor,
    attention_mask: torch.Tensor | None,
    cache_position: torch.Tensor,
    past_key_values: Any | None = None,
    position_ids: torch.Tensor | None = None,
    or_mask_function: Callable | None = None,
    and_mask_function: Callable | None = None,
) -> torch.Tensor | None:
    """A `(B, 1, S, T_k)` additive mask (0 where attended, `finfo(dtype).min` elsewhere), or None.

    - `input_embeds` is `(B, S, D)`, or `(S/T, B, D)` under sequence parallelism (S is recovered as
      `dim0 * T`). dtype and device come from it.
    - `T_k` is the length of a 2-D `attention_mask`, else `S + 1` (the eager attention slices `[..., :S]`).
    - Position `(i, j)` is masked when `j > cache_position[i]`, and where the 2-D mask is 0 (padding).
    - A 4-D `attention_mask` is returned unchanged (taken as already inverted).
    - Under `flash_attention_2` it returns None (the kernel is causal and ignores padding), warning once.
    - `past_key_values`, `or_mask_function` and `and_mask_function` are not supported (RuntimeError).
    """
    global _WARNED_FLASH_ATTENTION_2
    if past_key_values is not None:
        raise RuntimeError("`past_key_values` is not supported for training in optimum-neuron.")
    if or_mask_function is not None or and_mask_function is not None:
        raise RuntimeError(
            "`or_mask_function` and `and_mask_function` are not supported for training in optimum-neuron."
        )
    if config._attn_implementation == "flash_attention_2":
        if not _WARNED_FLASH_ATTENTION_2 and is_logging_process():
            _WARNED_FLASH_ATTENTION_2 = True
            logger.warning(
                "flash_attention_2 computes a causal mask inside the attention kernel; the attention mask passed "
                "to the model is ignored."
            )
        return None

    if trn_config.sequence_parallel_enabled:
        batch_size = input_embeds.shape[1]
        sequence_length = input_embeds.shape[0] * trn_config.tensor_parallel_size
    else:
        batch_size, sequence_length = input_embeds.shape[0], input_embeds.shape[1]
    target_length = attention_mask.shape[-1] if attention_mask is not None else sequence_length + 1
    return _compute_causal_mask(
        attention_mask,
        cache_position,
        batch_size,
        sequence_length,
        target_length,
        input_embeds.dtype,
        input_embeds.device,
    )


def _compute_causal_mask(
    attention_mask: torch.Tensor | None,
    cache_position: torch.Tensor,
    batch_size: int,
    sequence_length: int,
    target_length: int,
    dtype: torch.dtype,
    device: torch.device,
) -> torch.Tensor:
    if attention_mask is not None and attention_mask.dim() == 4:
        return attention_mask
    min_value = torch.finfo(dtype).min
    keys = torch.arange(target_length, device=device)
    masked = keys[None, :] > cache_position.to(device).reshape(-1, 1)
    if sequence_length != 1:
        queries = torch.arange(sequence_length, device=device)
        masked = masked & (keys[None, :] > queries[:, None])
    mask = torch.zeros((sequence_length, target_length), dtype=dtype, device=device)
    mask = mask.masked_fill(masked, min_value)
    mask = mask[None, None, :, :].expand(batch_size, 1, -1, -1).clone()
    if attention_mask is not None:
        length = attention_mask.shape[-1]
        padding = (mask[:, :, :, :length] == 0) & (attention_mask[:, None, None, :].to(device) == 0)
        mask[:, :, :, :length] = mask[:, :, :, :length].masked_fill(padding, min_value)
    return mask
