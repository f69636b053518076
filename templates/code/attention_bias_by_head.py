"""Templates of NXS031 (attention-bias-by-head), filled by `scaffold.rules.templates`.

`alibi` stands for the layer stack's name for the bias, `num_heads` for the head count it is built
from, `attention_mask` for the padding mask it reads, `attn_weights` for the attention's name for its
scores: the rule renames them.
"""

import torch


def padding_ignored(self, attention_mask):
    """Before the statement of the layer stack's forward that builds the bias, where it reads the padding
    mask: optimum-neuron ignores that mask under `recompute_causal_mask`, and so must the bias."""
    if self.trn_config.recompute_causal_mask and attention_mask is not None:
        # The padding mask is ignored (trn_config.recompute_causal_mask): the bias sees every position.
        attention_mask = torch.ones_like(attention_mask)
    return attention_mask


def bias_of_rank_heads(self, alibi, num_heads, heads_of_rank, message):
    """After the statement of the layer stack's forward that builds the bias."""
    if self.config._attn_implementation == "flash_attention_2":
        raise NotImplementedError({message})
    # One slice per head: each tensor-parallel rank keeps those of the heads it computes.
    alibi = heads_of_rank(alibi, num_heads)
    return alibi


def causal_mask_when_none(attention_mask, attn_weights):
    """The `else` added to the attention's `if <mask> is not None:` block."""
    if attention_mask is not None:
        pass
    else:
        # No mask was built (trn_config.recompute_causal_mask): mask the future keys here.
        future = torch.ones(attn_weights.shape[-2:], dtype=torch.bool, device=attn_weights.device).triu(
            diagonal=1
        )
        attn_weights = attn_weights.masked_fill(future, torch.finfo(attn_weights.dtype).min)
    return attn_weights
