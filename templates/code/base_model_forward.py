"""Templates of NXS012 (base-model-forward), filled by `scaffold.rules.templates`.

`sequence_length`, `inputs_embeds`, `causal_mask` and `position_embeds` stand for the forward's own names:
the rule renames them.
"""

import torch
from neuronx_distributed.parallel_layers.mappings import scatter_to_sequence_parallel_region

from ..config import TrainingNeuronConfig
from ..masking_utils import create_causal_mask
from ..training_utils import checkpoint_with_kwargs


def sliding_window_mask_helper():
    """The local helper that stands for transformers' sliding-window mask, defined before the base model."""

    def _create_sliding_window_causal_mask(
        config, trn_config: TrainingNeuronConfig, **kwargs
    ) -> torch.Tensor | None:
        """The host's causal mask, limited to the last `config.sliding_window` keys of each query.

        transformers' sliding-window mask lets query i attend to key j when i - sliding_window < j <= i; the
        host builds the causal and padding part, the window is applied here.
        """
        mask = create_causal_mask(config=config, trn_config=trn_config, **kwargs)
        if mask is None:
            return None
        queries = torch.arange(mask.shape[-2], device=mask.device)[:, None]
        keys = torch.arange(mask.shape[-1], device=mask.device)[None, :]
        return mask.masked_fill(queries - keys >= config.sliding_window, torch.finfo(mask.dtype).min)


def sequence_length(self, sequence_length, inputs_embeds):
    """Before the first read of the sequence length off the embeddings' dim 1."""
    # (B, S, D), or (S/T, B, D) under sequence parallelism
    sequence_length = (
        inputs_embeds.size(0) * self.trn_config.tensor_parallel_size
        if self.trn_config.sequence_parallel_enabled
        else inputs_embeds.size(1)
    )
    return sequence_length


def batch_size(self, batch_size, inputs_embeds):
    """After the sequence length, where the forward unpacked the batch size off the embeddings' shape and
    reads it later."""
    batch_size = inputs_embeds.size(1) if self.trn_config.sequence_parallel_enabled else inputs_embeds.size(0)
    return batch_size


def positions_in_stream_layout(self, position_embeds):
    """After the lookup of learned positions `(B, S, D)`, replicated on every rank: under sequence
    parallelism the hidden stream they are added to is `(S/T, B, D)`, so each rank keeps its own positions
    (the backward gathers the shards' gradients, so every rank's table gets the whole gradient)."""
    if self.trn_config.sequence_parallel_enabled:  # (B, S, D) -> the stream's (S/T, B, D)
        position_embeds = scatter_to_sequence_parallel_region(position_embeds.transpose(0, 1).contiguous())
    return position_embeds


def stream_view_without_sequence_parallel(self):
    """A view of the hidden stream to `(-1, sequence_length, D)`, which is the identity on the stream's
    `(B, S, D)`: under sequence parallelism the stream is `(S/T, B, D)`, which that view would scramble, so it
    runs without sequence parallelism only (the rule puts the source's statement in the body)."""
    if not self.trn_config.sequence_parallel_enabled:  # a (B, S, D) view; SP has (S/T, B, D)
        pass


def mask_unless_recomputed(self, causal_mask, mask):
    """A mask built by a statement of its own: none when the attention recomputes a causal one."""
    if self.trn_config.recompute_causal_mask:
        causal_mask = None
    else:
        causal_mask = {mask}
    return causal_mask


def mask_value_unless_recomputed(self, mask):
    """A mask built inside another expression: none when the attention recomputes a causal one."""
    return None if self.trn_config.recompute_causal_mask else {mask}


def checkpoint_switch(self):
    """A decoder-layer call, checkpointed while training with checkpointing on (the rule puts the
    checkpointed statement in the first branch and the source's in the second)."""
    if self.gradient_checkpointing and self.training:
        pass
    else:
        pass


def checkpointed(layer):
    """The checkpointed call of a decoder layer (the source call's arguments follow the layer)."""
    return checkpoint_with_kwargs({layer})


def checkpointing_from_trn_config(self, trn_config):
    """transformers' `self.gradient_checkpointing = False` (or the line added before `post_init()`)."""
    self.gradient_checkpointing = trn_config.gradient_checkpointing
