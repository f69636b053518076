"""The fixed batch every check feeds: seeded token ids, and labels with some positions ignored (-100)."""

from __future__ import annotations

import torch

from reference_models.catalogue import PARITY_SEQUENCE_LENGTH

BATCH_SIZE = 2


def fixed_batch(
    vocab_size: int, seq_len: int = PARITY_SEQUENCE_LENGTH, seed: int = 0
) -> dict[str, torch.Tensor]:
    """`input_ids` (B=2, S) from a seeded generator and `labels` = ids with some positions set to -100."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, vocab_size, (BATCH_SIZE, seq_len), generator=generator)
    labels = input_ids.clone()
    labels[0, : seq_len // 4] = -100
    labels[1, -3:] = -100
    return {"input_ids": input_ids, "labels": labels}
