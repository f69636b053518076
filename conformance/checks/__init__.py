"""Conformance checks (DESIGN §5): each runs a model package on the active backend and returns results
with figures, whether the check passes or not.

- `parity`: logits, loss and consolidated gradients against transformers, per TP size, SP and attention
  variant (`check_parity`, `check_parity_cases`).
- `gradient_consolidation`: per-rank gradients back to transformers names.
"""
