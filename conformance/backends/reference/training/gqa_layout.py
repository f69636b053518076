"""Where GQA heads live on the tensor-parallel ranks of NxD's `GQAQKVColumnParallelLinear`.

With `T` ranks, `H` query heads, `KV` key/value heads and a kv size multiplier `m`, the layer stores K/V
tiled `m` times (`[K_0 .. K_{KV-1}, K_0 .., ...]`) and gives rank `r` the global K/V slots
`r*KVr .. (r+1)*KVr - 1` with `KVr = KV*m/T`; slot `s` holds KV head `s mod KV`, replica `s div KV`.
Each local KV slot serves `Gr = G/m` consecutive local query slots (`G = H/KV`). optimum-neuron therefore
permutes the query rows (and the output projection's columns) so that every query head sits on a rank
next to its own KV head: replica `k` of KV head `h` serves the queries `h*G + k*Gr .. h*G + (k+1)*Gr - 1`.

Pure functions of the shape, no parallel state: the training host's specs call them with the rank.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class GQAHeadLayout:
    """The per-rank head counts of a GQA layer; construction validates the shape."""

    tp_size: int
    num_attention_heads: int
    num_key_value_heads: int
    kv_size_multiplier: int

    def __post_init__(self) -> None:
        T, H, KV, m = (
            self.tp_size,
            self.num_attention_heads,
            self.num_key_value_heads,
            self.kv_size_multiplier,
        )
        problems = []
        if min(T, H, KV, m) < 1:
            problems.append("every size must be at least 1")
        else:
            if H % KV:
                problems.append(f"num_attention_heads {H} is not a multiple of num_key_value_heads {KV}")
            if H % T:
                problems.append(f"num_attention_heads {H} is not divisible by the tensor parallel size {T}")
            if (KV * m) % T:
                problems.append(
                    f"num_key_value_heads x kv_size_multiplier = {KV * m} is not divisible by the tensor "
                    f"parallel size {T}"
                )
            elif (H // KV) % m:
                problems.append(f"the query group size {H // KV} is not divisible by kv_size_multiplier {m}")
        if problems:
            raise ValueError(
                f"invalid GQA layout (tp_size={T}, num_attention_heads={H}, num_key_value_heads={KV}, "
                f"kv_size_multiplier={m}): {'; '.join(problems)}. Choose kv_size_multiplier so that "
                "kv heads x multiplier is a multiple of tp_size and divides the query group size."
            )

    @property
    def query_heads_per_rank(self) -> int:
        return self.num_attention_heads // self.tp_size

    @property
    def kv_heads_per_rank(self) -> int:
        """KV heads per rank after the `kv_size_multiplier` replication."""
        return self.num_key_value_heads * self.kv_size_multiplier // self.tp_size

    @property
    def query_group_size(self) -> int:
        return self.num_attention_heads // self.num_key_value_heads

    @property
    def query_group_size_per_rank(self) -> int:
        """Queries served by one local KV slot (`G / m`)."""
        return self.query_group_size // self.kv_size_multiplier

    def query_indices_for_rank(self, tp_rank: int) -> torch.Tensor:
        """Original query head of each local query slot of `tp_rank` (LongTensor of length `H/T`)."""
        if not 0 <= tp_rank < self.tp_size:
            raise ValueError(f"tp_rank {tp_rank} is outside [0, {self.tp_size})")
        KV, G, Gr, KVr = (
            self.num_key_value_heads,
            self.query_group_size,
            self.query_group_size_per_rank,
            self.kv_heads_per_rank,
        )
        kv_slots = tp_rank * KVr + torch.arange(KVr)
        first_query = (kv_slots % KV) * G + (kv_slots // KV) * Gr
        return (first_query[:, None] + torch.arange(Gr)[None, :]).reshape(-1)

    def query_indices(self) -> torch.Tensor:
        """Original query head of every global slot `g = r * H/T + j`, ranks in order (a permutation)."""
        return torch.cat([self.query_indices_for_rank(r) for r in range(self.tp_size)])

    def inverse_query_indices(self) -> torch.Tensor:
        """The slot holding each original query head: gathering slots with it restores the original order."""
        return torch.argsort(self.query_indices())


def gather_heads(
    weight: torch.Tensor, num_heads: int, indices: torch.Tensor, heads_axis: int
) -> torch.Tensor:
    """Reorder the head blocks of `weight` along `heads_axis` (0: rows, 1: columns): block j <- indices[j].

    `weight.shape[heads_axis]` is `num_heads * head_dim`; the result has `len(indices) * head_dim` there.
    Works for 1-D tensors (biases) with `heads_axis=0`.
    """
    if weight.shape[heads_axis] % num_heads:
        raise ValueError(
            f"dimension {heads_axis} of size {weight.shape[heads_axis]} is not a multiple of "
            f"{num_heads} heads"
        )
    moved = weight.movedim(heads_axis, 0)
    rest = moved.shape[1:]
    blocks = moved.reshape(num_heads, moved.shape[0] // num_heads, *rest)
    picked = blocks[indices.to(blocks.device)].reshape(-1, *rest)
    return picked.movedim(0, heads_axis).contiguous()
