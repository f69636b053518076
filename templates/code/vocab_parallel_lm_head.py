"""Templates of NXS013 (vocab-parallel-lm-head), filled by `scaffold.rules.templates`."""

from neuronx_distributed.parallel_layers.parallel_state import get_tensor_model_parallel_size
from neuronx_distributed.parallel_layers.utils import divide


def vocab_size_per_rank(vocab_size):
    """The causal LM's `vocab_size`: the logits one rank computes."""
    return divide({vocab_size}, get_tensor_model_parallel_size())


def logits_to_batch_first(self, logits):
    """Under SP the head returns (S, B, V/T); the loss and the caller read (B, S, V/T). `logits` is
    renamed to the forward's own name for them."""
    if self.trn_config.sequence_parallel_enabled:
        logits = logits.transpose(0, 1).contiguous()
    return logits
