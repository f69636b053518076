"""The fixed batch every check feeds: real training data in miniature.

Two rows of S tokens, ids drawn from a seeded generator (never the pad id outside the padding):

- row 0: left padding (`LEFT_PADDING` pad tokens, attention_mask 0), then two packed sequences
  (`FIRST_PACKED` tokens, then the rest) whose `position_ids` restart at 0 where the second begins;
- row 1: one sequence, then `RIGHT_PADDING` pad tokens at the end (attention_mask 0).

`labels` are the ids with -100 where nothing must be learnt: the padding, the first real token after the
left padding (its logits come from a padding position), and the first token of the second packed sequence
(it is not predictable from the first one). The pad id is the config's `pad_token_id`, else its
`eos_token_id` (what tokenizers without a pad token pad with), else 0.

What a model is compared with depends on what it promises to do with the mask:

- it honours the padding mask (eager attention with `recompute_causal_mask=False`, optimum-neuron's
  `create_causal_mask`): transformers gets the same 2-D mask; positions whose query is padding attend to
  nothing and their outputs are unspecified (each library fills such a row its own way), so outputs are
  compared at the attended positions only (`compared_positions`);
- it recomputes a pure causal mask (the default `recompute_causal_mask=True`, documented by optimum-neuron
  as "the attention mask is ignored", and the flash kernel, causal by construction): transformers gets an
  all-ones mask (the causal mask only) and every position is compared.

transformers is always given an explicit 2-D mask: with none (and no cache, as in training), transformers
4.57 infers packed-sequence boundaries from `position_ids` and attends within each sequence only, which
optimum-neuron's masks never do (its `create_causal_mask` takes `position_ids` and ignores them). Both models therefore attend across
the packed sequences of row 0, and `position_ids` reach the rotary embedding of both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from reference_models.catalogue import PARITY_SEQUENCE_LENGTH

BATCH_SIZE = 2
LEFT_PADDING = 3
FIRST_PACKED = 5
RIGHT_PADDING = 5
IGNORED = -100


@dataclass(frozen=True)
class FixedBatch:
    """The tensors of the batch, and the pad id it uses."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    labels: torch.Tensor
    pad_token_id: int

    def model_inputs(self, labels: bool = True) -> dict[str, torch.Tensor]:
        """What the parallel model gets (everything a trainer would pass), as fresh copies: a model that
        updates an input in place (transformers' XGLM adds its position offset to `position_ids`) must
        not change the batch the next forward, or the other model, gets."""
        found = {
            "input_ids": self.input_ids.clone(),
            "attention_mask": self.attention_mask.clone(),
            "position_ids": self.position_ids.clone(),
        }
        if labels:
            found["labels"] = self.labels.clone()
        return found

    def reference_inputs(
        self, honours_padding: bool, labels: bool = True, default_positions: bool = False
    ) -> dict[str, torch.Tensor]:
        """What transformers gets: the padding mask when the compared model honours it, else an all-ones
        mask (the causal mask only); `default_positions` leaves `position_ids` out (diagnosis only)."""
        found = self.model_inputs(labels)
        if not honours_padding:
            found["attention_mask"] = torch.ones_like(self.attention_mask)
        if default_positions:
            del found["position_ids"]
        return found

    def compared_positions(self, honours_padding: bool) -> torch.Tensor:
        """`(B, S)` booleans: where outputs are compared (the attended queries, or everywhere)."""
        if honours_padding:
            return self.attention_mask.bool()
        return torch.ones_like(self.attention_mask, dtype=torch.bool)

    @property
    def padded_tokens(self) -> int:
        return int((self.attention_mask == 0).sum())

    def rows(self, indices: tuple[int, ...]) -> FixedBatch:
        """The batch of the rows `indices` only (a data-parallel rank's share)."""
        index = torch.tensor(indices, dtype=torch.long)
        return FixedBatch(
            self.input_ids[index],
            self.attention_mask[index],
            self.position_ids[index],
            self.labels[index],
            self.pad_token_id,
        )


def data_parallel_rows(dp_rank: int, dp_size: int, batch_size: int = BATCH_SIZE) -> tuple[int, ...]:
    """The rows of the fixed batch data-parallel rank `dp_rank` of `dp_size` trains on (every `dp_size`-th
    row from its own), as a distributed sampler deals them; expert-parallel ranks are data-parallel ranks."""
    if dp_size > batch_size:
        raise ValueError(
            f"the fixed batch has {batch_size} rows: it cannot feed {dp_size} data-parallel ranks"
        )
    return tuple(range(dp_rank, batch_size, dp_size))


def pad_token_id(config: Any) -> int:
    """The id the batch pads with: `pad_token_id`, else `eos_token_id` (the first one), else 0."""
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(config, name, None)
        if isinstance(value, (list, tuple)):
            value = value[0] if value else None
        if isinstance(value, int) and 0 <= value < config.vocab_size:
            return value
    return 0


def fixed_batch(
    vocab_size: int, seq_len: int = PARITY_SEQUENCE_LENGTH, pad_id: int = 0, seed: int = 0
) -> FixedBatch:
    """The batch (see the module docstring) for a vocabulary of `vocab_size`, padded with `pad_id`."""
    if seq_len < LEFT_PADDING + FIRST_PACKED + RIGHT_PADDING:
        raise ValueError(
            f"the fixed batch needs at least {LEFT_PADDING + FIRST_PACKED + RIGHT_PADDING} tokens"
        )
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, vocab_size - 1, (BATCH_SIZE, seq_len), generator=generator)
    input_ids = torch.where(input_ids >= pad_id, input_ids + 1, input_ids)  # every id but the pad id
    attention_mask = torch.ones(BATCH_SIZE, seq_len, dtype=torch.long)
    positions = torch.arange(seq_len)
    position_ids = positions.repeat(BATCH_SIZE, 1)
    labels = input_ids.clone()

    second = LEFT_PADDING + FIRST_PACKED
    attention_mask[0, :LEFT_PADDING] = 0
    position_ids[0, :LEFT_PADDING] = 1  # transformers' convention for left padding (never attended)
    position_ids[0, LEFT_PADDING:second] = positions[:FIRST_PACKED]
    position_ids[0, second:] = positions[: seq_len - second]
    labels[0, : LEFT_PADDING + 1] = IGNORED
    labels[0, second] = IGNORED

    attention_mask[1, seq_len - RIGHT_PADDING :] = 0
    labels[1, seq_len - RIGHT_PADDING :] = IGNORED

    input_ids = input_ids.masked_fill(attention_mask == 0, pad_id)
    return FixedBatch(input_ids, attention_mask, position_ids, labels, pad_id)


def batch_for(model_config: Any, seq_len: int = PARITY_SEQUENCE_LENGTH) -> FixedBatch:
    """The fixed batch of a transformers config (its vocabulary and pad id)."""
    return fixed_batch(model_config.vocab_size, seq_len, pad_token_id(model_config))


def checkpoint_batch(checkpoint: str) -> FixedBatch:
    """The fixed batch of the config a checkpoint folder holds."""
    from transformers import AutoConfig

    return batch_for(AutoConfig.from_pretrained(checkpoint))
