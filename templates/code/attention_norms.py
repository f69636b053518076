"""Templates of NXS026 (tensor-parallel-attention-norms), filled by `scaffold.rules.templates`.

`norm` stands for the norm's attribute (`self.q_norm`), `prefix` for its name with a dot (`"q_norm."`),
`heads` for the head count of the projection it normalises.
"""

from .attention_norm_weights import HeadModulesSpec, HeadRowsSpec
from .tensor_parallel_norms import ColumnParallelRMSNorm, shard_by_head


def full_width_norm(width, eps, replicas):
    """A full-width RMS norm: statistics summed over the TP group, weight sharded with the columns."""
    return ColumnParallelRMSNorm({width}, eps={eps}, replicas={replicas})


def head_rows(norm, heads, replicas):
    """After a per-head norm whose weight holds one row per head: the rank keeps its heads' rows."""
    shard_by_head({norm}, {heads}, replicas={replicas})


def gqa_spec(self, norm, prefix, projection, heads, kv_heads):
    """After either: under NxD's GQA layer the rank's heads are not a contiguous block of the checkpoint's."""
    if self.qkv_linear:
        self.specs.add_spec(
            HeadRowsSpec(
                parameter_names=[{prefix} + name for name, _ in {norm}.named_parameters()],
                projection={projection},
                num_attention_heads={heads},
                num_key_value_heads={kv_heads},
                kv_size_multiplier=self.kv_size_multiplier,
            )
        )


def head_modules(self, norm, prefix, heads, replicas, projection, q_heads, kv_heads):
    """After a norm holding one norm per head: the rank keeps its heads' norms, renumbered by a spec."""
    for name in shard_by_head({norm}, {heads}, replicas={replicas}):
        self.specs.add_spec(
            HeadModulesSpec(
                module_list={prefix} + name,
                parameter_names=[parameter for parameter, _ in getattr({norm}, name)[0].named_parameters()],
                projection={projection},
                num_attention_heads={q_heads},
                num_key_value_heads={kv_heads},
                kv_size_multiplier=self.kv_size_multiplier,
                gqa=self.qkv_linear,
            )
        )
