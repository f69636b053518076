"""Templates of NXS023 (neuron-flash-attention), filled by `scaffold.rules.templates`.

`attn_weights` stands for the eager function's name for the attention scores, `attention_interface`
for the forward's name for the attention function: the rule renames them.
"""

import torch
from neuronx_distributed.kernels.flash_attn import nki_flash_attn_func
from torch import nn


def flash_attention_function(repeat_kv):
    """The Neuron flash path, defined after the eager attention function. The rule drops the
    `sliding_window` and `softcap` parameters and checks where the attention passes neither, and expands
    the K/V heads with `repeat_interleave` in a file without `repeat_kv`."""

    def neuron_flash_attention_forward(
        module: nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        scaling: float,
        dropout: float = 0.0,
        causal: bool = False,
        sliding_window: int | None = None,
        softcap: float | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, None]:
        """`flash_attention_2` on Neuron: NxD's NKI kernel, causal, returning the eager layout (B, S, h, d).

        q, k, v come in as (B, h, S, d). The kernel masks the future itself, whether no mask was built
        (`causal`) or the host built the causal `attention_mask`, which it does not read (padding is not
        masked). It needs a sequence length that is a multiple of 2048; dropout runs on its output.
        """
        if not causal and attention_mask is None:
            raise NotImplementedError("the NKI flash-attention kernel is causal; use eager attention")
        if sliding_window is not None and sliding_window < query.shape[-2]:
            raise NotImplementedError(
                "the NKI flash-attention kernel has no sliding window; use eager attention when the "
                "window is shorter than the sequence"
            )
        if softcap is not None:
            raise NotImplementedError(
                "the NKI flash-attention kernel has no softcapping; use eager attention"
            )
        key = repeat_kv(key, module.num_key_value_groups)
        value = repeat_kv(value, module.num_key_value_groups)
        transpose = module.trn_config.transpose_nki_inputs
        if transpose:
            # The kernel's native layout: (B, h, d, S).
            query, key, value = query.transpose(2, 3), key.transpose(2, 3), value.transpose(2, 3)
        attn_output = nki_flash_attn_func(
            query,
            key,
            value,
            dropout_p=0.0,
            softmax_scale=scaling,
            causal=True,
            mixed_precision=True,
            transpose_nki_inputs=transpose,
        )
        attn_output = nn.functional.dropout(attn_output, p=dropout, training=module.training)
        return attn_output.transpose(1, 2).contiguous(), None


def kv_heads_repeated(module, key, value):
    """K/V heads expanded to every query head in a file without `repeat_kv`."""
    key = key.repeat_interleave(module.num_key_value_groups, dim=1)
    value = value.repeat_interleave(module.num_key_value_groups, dim=1)
    return key, value


def eager_attention_parameters(causal: bool = False, sliding_window: int | None = None):
    """The parameters added to the eager attention function (`sliding_window` only where the attention
    passes a window)."""


def causal_mask_recomputed(attention_mask, causal, attn_weights):
    """The `elif` added to the eager function's `if <mask> is not None:` block."""
    if attention_mask is not None:
        pass
    elif causal:
        # No mask was built (trn_config.recompute_causal_mask): mask the future keys here.
        future = torch.ones(attn_weights.shape[-2:], dtype=torch.bool, device=attn_weights.device).triu(
            diagonal=1
        )
        attn_weights = attn_weights.masked_fill(future, torch.finfo(attn_weights.dtype).min)
    return attn_weights


def sliding_window_applied(sliding_window, attn_weights):
    """After the mask block of the eager function, where the attention passes a window."""
    if sliding_window is not None:
        # Keys `sliding_window` or more positions back are outside the window (transformers applies
        # it through its mask; the training host's mask has no window).
        expired = torch.ones(attn_weights.shape[-2:], dtype=torch.bool, device=attn_weights.device).tril(
            diagonal=-sliding_window
        )
        attn_weights = attn_weights.masked_fill(expired, torch.finfo(attn_weights.dtype).min)
    return attn_weights


def flash_switch(self, attention_interface, neuron_flash_attention_forward):
    """Replaces the forward's choice among transformers' attention functions."""
    if self.config._attn_implementation == "flash_attention_2":
        attention_interface = neuron_flash_attention_forward
    return attention_interface
