"""Signatures of the reference `neuronx_distributed` against upstream NxD 0.18.0.

NxD cannot be installed here, so the oracle is a data table read from upstream's source: for every name
our reference exposes, the parameter names in order, their kinds and defaults. Source:
aws-neuron/neuronx-distributed at commit fbac349b61a3adbb123c2983835af692840ff62f ("Release 2.29",
`_version.py` 0.18.0), paths under `src/neuronx_distributed/`, line numbers of the `def` there; the
signatures that `neuronx-distributed-semantics.md` states (§2.1, §3.1-3.3, §8, §11, §12, §13) agree with
this table. Ours is read with `inspect.signature` after the backend loader has made `neuronx_distributed`
the reference package.

A difference is a failure unless it is in `DEVIATING` (an intended difference, named by its deviation id
in docs/backend-deviations.md) or in `DISCREPANCIES` (a known difference to fix: strict xfail).
"""

from __future__ import annotations

import importlib
import inspect
import types
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from conformance.backends import activate

from .api_surface import REQUIRED, Source, differences, params_of

POSONLY, POS, VAR_POS, KWONLY, VAR_KW = "posonly", "pos", "*args", "kwonly", "**kwargs"

UPSTREAM_FILE = "aws-neuron/neuronx-distributed@fbac349b src/neuronx_distributed/{path}:{line}"

# "module:qualified name" -> (line of the def in upstream's file of the same path, parameters).
# A parameter is (name, kind) when required, (name, kind, default) otherwise; `self`/`cls` are left out,
# an autograd Function's static `ctx` is kept. Upstream `layers.py` also defines what our
# `layers_utils.py` implements (`LinearWithAsyncCommunication`, `linear_with_async_allreduce`); ours
# re-exports both from `layers`, where they are compared.
EXPECTED: dict[str, tuple[int, list[tuple[Any, ...]]]] = {
    # src/neuronx_distributed/parallel_layers/layers.py
    "parallel_layers.layers:BaseParallelLayer.__init__": (173, [("device", POS, None)]),
    "parallel_layers.layers:BaseParallelLinear.__init__": (538, [("device", POS, None)]),
    "parallel_layers.layers:ColumnParallelLinear.__init__": (
        587,
        [
            ("input_size", POS),
            ("output_size", POS),
            ("bias", POS, True),
            ("gather_output", POS, True),
            ("dtype", POS, torch.float32),
            ("device", POS, None),
            ("stride", POS, 1),
            ("init_method", POS, None),
            ("sequence_parallel_enabled", POS, False),
            ("sequence_dimension", POS, None),
            ("keep_master_weight", POS, False),
            ("skip_bias_add", POS, False),
            ("pad", POS, False),
            ("pad_alignment_size_per_rank", POS, 1),
            ("keep_padded_output", POS, False),
            ("tensor_model_parallel_group", POS, None),
            ("reduce_dtype", POS, torch.float32),
            ("rank_ordering", POS, None),
        ],
    ),
    "parallel_layers.layers:ColumnParallelLinear.set_weight_and_bias_config": (660, []),
    "parallel_layers.layers:ColumnParallelLinear.initialize_weight_and_bias": (673, []),
    "parallel_layers.layers:ColumnParallelLinear.init_weight_cpu": (714, []),
    "parallel_layers.layers:ColumnParallelLinear.forward": (
        725,
        [("input", POS), ("slice_indices", POS, None)],
    ),
    "parallel_layers.layers:ColumnParallelLinear.preshard_hook": (
        770,
        [("model_state_dict", POS), ("prefix", POS)],
    ),
    "parallel_layers.layers:LinearWithAsyncCommunication.forward": (
        438,
        [
            ("ctx", POS),
            ("input", POS),
            ("weight", POS),
            ("bias", POS),
            ("async_grad_allreduce", POS),
            ("sequence_parallel_enabled", POS),
            ("sequence_dimension", POS, 0),
            ("save_for_backward", POS, True),
            ("process_group", POS, None),
            ("reduce_dtype", POS, torch.float32),
        ],
    ),
    "parallel_layers.layers:LinearWithAsyncCommunication.backward": (
        467,
        [("ctx", POS), ("grad_outputs", VAR_POS)],
    ),
    "parallel_layers.layers:ParallelEmbedding.__init__": (
        204,
        [
            ("num_embeddings", POS),
            ("embedding_dim", POS),
            ("padding_idx", POS, None),
            ("max_norm", POS, None),
            ("norm_type", POS, 2.0),
            ("scale_grad_by_freq", POS, False),
            ("sparse", POS, False),
            ("init_method", POS, torch.nn.init.normal_),
            ("device", POS, None),
            ("dtype", POS, torch.float32),
            ("shard_across_embedding", POS, False),
            ("pad", POS, False),
            ("sequence_parallel_enabled", POS, False),
            ("tensor_model_parallel_group", POS, None),
            ("use_spmd_rank", POS, False),
            ("sequence_dimension", POS, None),
            ("tile_cc", POS, False),
            ("rank_ordering", POS, None),
            ("collect_output", POS, True),
        ],
    ),
    "parallel_layers.layers:ParallelEmbedding.init_weight_cpu": (325, []),
    "parallel_layers.layers:ParallelEmbedding.forward": (398, [("input_", POS)]),
    "parallel_layers.layers:ParallelEmbedding.preshard_hook": (
        411,
        [("model_state_dict", POS), ("prefix", POS)],
    ),
    "parallel_layers.layers:RowParallelLinear.__init__": (
        846,
        [
            ("input_size", POS),
            ("output_size", POS),
            ("bias", POS, True),
            ("input_is_parallel", POS, False),
            ("dtype", POS, torch.float32),
            ("device", POS, None),
            ("stride", POS, 1),
            ("init_method", POS, None),
            ("sequence_parallel_enabled", POS, False),
            ("sequence_dimension", POS, None),
            ("keep_master_weight", POS, False),
            ("skip_bias_add", POS, False),
            ("pad", POS, False),
            ("reduce_output", POS, True),
            ("tensor_model_parallel_group", POS, None),
            ("reduce_dtype", POS, torch.float32),
            ("tile_cc", POS, False),
            ("rank_ordering", POS, None),
        ],
    ),
    "parallel_layers.layers:RowParallelLinear.set_weight_and_bias_config": (909, []),
    "parallel_layers.layers:RowParallelLinear.initialize_weight_and_bias": (920, []),
    "parallel_layers.layers:RowParallelLinear.init_weight_cpu": (956, []),
    "parallel_layers.layers:RowParallelLinear.forward": (
        971,
        [("input_", POS), ("slice_indices", POS, None)],
    ),
    "parallel_layers.layers:RowParallelLinear.preshard_hook": (
        1015,
        [("model_state_dict", POS), ("prefix", POS)],
    ),
    "parallel_layers.layers:SPMDRank.__init__": (
        1555,
        [("world_size", POS), ("tensor_model_parallel_size", POS, None)],
    ),
    "parallel_layers.layers:SPMDRank.get_rank": (1568, []),
    "parallel_layers.layers:create_local_weight": (
        87,
        [
            ("full_weight", POS),
            ("partition_dim", POS),
            ("per_partition_size", POS),
            ("stride", POS),
            ("out_weight", POS, None),
        ],
    ),
    "parallel_layers.layers:linear_with_async_allreduce": (
        507,
        [
            ("input", POS),
            ("weight", POS),
            ("bias", POS),
            ("async_grad_allreduce", POS),
            ("sequence_parallel_enabled", POS),
            ("sequence_dimension", POS, 0),
            ("autograd_func_class", POS, Source("LinearWithAsyncCommunication")),
            ("save_for_backward", POS, True),
            ("process_group", POS, None),
            ("reduce_dtype", POS, torch.float32),
        ],
    ),
    # src/neuronx_distributed/parallel_layers/parallel_state.py
    "parallel_layers.parallel_state:arrange_kv_groups": (
        1605,
        [
            ("num_tensor_model_parallel_groups", POS, 1),
            ("tensor_model_parallel_size", POS, 1),
            ("kv_shared_group_size", POS, 1),
            ("sequential_ranks_in_group", POS, False),
            ("hardware_type", POS, Source("hardware.TRN1")),
        ],
    ),
    "parallel_layers.parallel_state:destroy_kv_group": (1524, []),
    "parallel_layers.parallel_state:destroy_model_parallel": (1226, []),
    "parallel_layers.parallel_state:get_aot_mode": (1599, []),
    "parallel_layers.parallel_state:get_context_model_parallel_group": (1146, [("as_list", POS, False)]),
    "parallel_layers.parallel_state:get_context_model_parallel_rank": (1158, []),
    "parallel_layers.parallel_state:get_context_model_parallel_size": (1164, []),
    "parallel_layers.parallel_state:get_data_parallel_group": (867, [("as_list", POS, False)]),
    "parallel_layers.parallel_state:get_data_parallel_rank": (1044, []),
    "parallel_layers.parallel_state:get_data_parallel_replica_groups": (875, []),
    "parallel_layers.parallel_state:get_data_parallel_size": (1037, []),
    "parallel_layers.parallel_state:get_data_parallel_src_rank": (1030, []),
    "parallel_layers.parallel_state:ParallelGroups": (
        105,
        [
            ("tp_groups", POS),
            ("dp_groups", POS),
            ("pp_groups", POS),
            ("ep_model_groups", POS),
            ("ep_data_groups", POS),
            ("cp_groups", POS),
        ],
    ),
    "parallel_layers.parallel_state:get_expert_data_parallel_group": (881, [("as_list", POS, False)]),
    "parallel_layers.parallel_state:get_expert_data_parallel_rank": (1074, []),
    "parallel_layers.parallel_state:get_expert_data_parallel_replica_groups": (889, []),
    "parallel_layers.parallel_state:get_expert_data_parallel_size": (1067, []),
    "parallel_layers.parallel_state:get_expert_model_parallel_group": (853, [("as_list", POS, False)]),
    "parallel_layers.parallel_state:get_expert_model_parallel_rank": (966, []),
    "parallel_layers.parallel_state:get_expert_model_parallel_replica_groups": (861, []),
    "parallel_layers.parallel_state:get_expert_model_parallel_size": (949, []),
    "parallel_layers.parallel_state:get_experts_for_expert_parallel_rank": (
        999,
        [
            ("expert_parallel_rank", POS),
            ("total_number_of_experts", POS),
            ("expert_model_parallel_size", POS),
            ("expert_distribution", POS, None),
        ],
    ),
    "parallel_layers.parallel_state:get_kv_shared_group": (1504, [("as_list", POS, False)]),
    "parallel_layers.parallel_state:get_kv_shared_group_size": (1518, []),
    "parallel_layers.parallel_state:get_pipeline_model_parallel_group": (1081, [("as_list", POS, False)]),
    "parallel_layers.parallel_state:get_pipeline_model_parallel_next_rank": (1212, []),
    "parallel_layers.parallel_state:get_pipeline_model_parallel_prev_rank": (1219, []),
    "parallel_layers.parallel_state:get_pipeline_model_parallel_rank": (1095, []),
    "parallel_layers.parallel_state:get_pipeline_model_parallel_replica_groups": (1089, []),
    "parallel_layers.parallel_state:get_pipeline_model_parallel_size": (1140, []),
    "parallel_layers.parallel_state:get_tensor_model_parallel_group": (839, [("as_list", POS, False)]),
    "parallel_layers.parallel_state:get_tensor_model_parallel_rank": (918, []),
    "parallel_layers.parallel_state:get_tensor_model_parallel_replica_groups": (847, []),
    "parallel_layers.parallel_state:get_tensor_model_parallel_size": (895, []),
    "parallel_layers.parallel_state:get_tensor_model_parallel_src_rank": (929, []),
    "parallel_layers.parallel_state:get_world_group": (833, [("as_list", POS, False)]),
    "parallel_layers.parallel_state:initialize_kv_group": (
        1473,
        [("kv_shared_group_size", POS, 1), ("sequential_ranks_in_group", POS, False)],
    ),
    "parallel_layers.parallel_state:initialize_model_parallel": (
        391,
        [
            ("tensor_model_parallel_size", POS, 1),
            ("pipeline_model_parallel_size", POS, 1),
            ("context_parallel_size", POS, 1),
            ("expert_model_parallel_size", POS, 1),
            ("skip_collective_init", POS, False),
            ("lnc_size", POS, 1),
            ("mesh_only", POS, False),
        ],
    ),
    "parallel_layers.parallel_state:model_parallel_is_initialized": (826, []),
    "parallel_layers.parallel_state:rmsg": (1648, [("msg", POS)]),
    "parallel_layers.parallel_state:set_aot_mode": (1593, [("mode", POS)]),
    "parallel_layers.parallel_state:set_expert_model_parallel_rank": (960, [("rank", POS)]),
    "parallel_layers.parallel_state:set_expert_model_parallel_size": (943, [("world_size", POS)]),
    "parallel_layers.parallel_state:set_tensor_model_parallel_rank": (912, [("rank", POS)]),
    "parallel_layers.parallel_state:set_tensor_model_parallel_size": (906, [("world_size", POS)]),
    # src/neuronx_distributed/parallel_layers/mappings.py
    "parallel_layers.mappings:copy_to_tensor_model_parallel_region": (
        406,
        [("input_", POS), ("process_group", POS, None)],
    ),
    "parallel_layers.mappings:enter_expert_parallel_region": (481, [("x", POS), ("scatter_gather", POS)]),
    "parallel_layers.mappings:exit_expert_parallel_region": (521, [("x", POS), ("scatter_gather", POS)]),
    "parallel_layers.mappings:gather_from_sequence_parallel_region": (
        440,
        [
            ("input_", POS),
            ("sequence_dimension", POS, 0),
            ("to_model_parallel", POS, True),
            ("process_group", POS, None),
            ("tile_cc", POS, False),
        ],
    ),
    "parallel_layers.mappings:gather_from_tensor_model_parallel_region": (
        426,
        [("input_", POS), ("process_group", POS, None)],
    ),
    "parallel_layers.mappings:gather_from_tensor_model_parallel_region_with_dim": (
        471,
        [("input_", POS), ("gather_dim", POS), ("process_group", POS, None)],
    ),
    "parallel_layers.mappings:reduce_from_tensor_model_parallel_region": (
        410,
        [("input_", POS), ("process_group", POS, None)],
    ),
    "parallel_layers.mappings:reduce_scatter_to_sequence_parallel_region": (
        452,
        [("input_", POS), ("sequence_dimension", POS, 0), ("process_group", POS, None), ("dtype", POS, None)],
    ),
    "parallel_layers.mappings:reduce_scatter_to_tensor_model_parallel_region_with_dim": (
        459,
        [("input_", POS), ("partition_dim", POS), ("process_group", POS, None)],
    ),
    "parallel_layers.mappings:scatter_to_sequence_parallel_region": (
        432,
        [("input_", POS), ("sequence_dimension", POS, 0), ("process_group", POS, None)],
    ),
    "parallel_layers.mappings:scatter_to_tensor_model_parallel_region": (
        422,
        [("input_", POS), ("process_group", POS, None)],
    ),
    # src/neuronx_distributed/parallel_layers/loss_functions.py
    "parallel_layers.loss_functions:from_parallel_logits_to_logprobs": (
        206,
        [("vocab_parallel_logits", POS), ("target", POS), ("inference", POS, True)],
    ),
    "parallel_layers.loss_functions:parallel_cross_entropy": (
        217,
        [("vocab_parallel_logits", POS), ("target", POS), ("label_smoothing", POS, 0.0)],
    ),
    # src/neuronx_distributed/parallel_layers/grads.py
    "parallel_layers.grads:allreduce_context_parallel_gradients": (348, [("optimizer", POS)]),
    "parallel_layers.grads:allreduce_sequence_parallel_gradients": (330, [("optimizer", POS)]),
    "parallel_layers.grads:bucket_allreduce_gradients": (
        259,
        [("grads_list", POS), ("reduce_over_ep_group", POS, False)],
    ),
    "parallel_layers.grads:clip_grad_norm": (
        192,
        [
            ("parameters", POS),
            ("max_norm", POS),
            ("norm_type", POS, 2),
            ("zero1_optimizer", POS, False),
            ("zero1_optimizer_groups", POS, None),
            ("force_spmd", POS, True),
        ],
    ),
    "parallel_layers.grads:get_grad_norm": (
        41,
        [
            ("parameters", POS),
            ("norm_type", POS, 2),
            ("zero1_optimizer", POS, False),
            ("zero1_optimizer_groups", POS, None),
            ("force_spmd", POS, True),
        ],
    ),
    "parallel_layers.grads:param_is_not_shared": (37, [("param", POS)]),
    # src/neuronx_distributed/parallel_layers/utils.py
    "parallel_layers.utils:EmbeddingUtility.range_from_per_partition_vocab_size": (
        38,
        [("per_partition_vocab_size", POS), ("rank", POS), ("world_size", POS)],
    ),
    "parallel_layers.utils:EmbeddingUtility.range_from_global_vocab_size": (
        44,
        [("global_vocab_size", POS), ("rank", POS), ("world_size", POS)],
    ),
    "parallel_layers.utils:copy_tensor_model_parallel_attributes": (
        85,
        [("destination_tensor", POS), ("source_tensor", POS)],
    ),
    "parallel_layers.utils:divide": (96, [("numerator", POS), ("denominator", POS)]),
    "parallel_layers.utils:get_local_world_size": (246, []),
    "parallel_layers.utils:move_model_to_device": (259, [("model", POS), ("device", POS)]),
    "parallel_layers.utils:ensure_divisibility": (91, [("numerator", POS), ("denominator", POS)]),
    "parallel_layers.utils:param_is_not_tensor_parallel_duplicate": (49, [("param", POS)]),
    "parallel_layers.utils:set_defaults_if_not_set_tensor_model_parallel_attributes": (77, [("tensor", POS)]),
    "parallel_layers.utils:set_tensor_model_parallel_attributes": (
        55,
        [
            ("tensor", POS),
            ("is_parallel", POS),
            ("dim", POS),
            ("stride", POS),
            ("num_partitions", POS, -1),
            ("rank_ordering", POS, None),
        ],
    ),
    # src/neuronx_distributed/parallel_layers/layer_norm.py
    "parallel_layers.layer_norm:LayerNorm.__init__": (
        18,
        [
            ("normalized_shape", POS),
            ("eps", POS, 1e-05),
            ("elementwise_affine", POS, True),
            ("bias", POS, True),
            ("device", POS, None),
            ("dtype", POS, None),
            ("sequence_parallel_enabled", POS, False),
        ],
    ),
    "parallel_layers.layer_norm:LayerNorm.forward": (42, [("input", POS)]),
    # src/neuronx_distributed/modules/qkv_linear.py
    "modules.qkv_linear:GQAQKVColumnParallelLinear.__init__": (
        420,
        [
            ("input_size", POS),
            ("output_sizes", POS),
            ("bias", POS, True),
            ("gather_output", POS, True),
            ("dtype", POS, torch.float32),
            ("device", POS, None),
            ("init_method", POS, None),
            ("sequence_parallel_enabled", POS, False),
            ("keep_master_weight", POS, False),
            ("kv_size_multiplier", POS, 1),
            ("fuse_qkv", POS, True),
            ("reduce_dtype", POS, torch.float32),
        ],
    ),
    "modules.qkv_linear:GQAQKVColumnParallelLinear.forward": (634, [("input", POS)]),
    # src/neuronx_distributed/modules/rms_norm.py
    "modules.rms_norm:RMSNorm.__init__": (
        37,
        [
            ("normalized_shape", POS),
            ("eps", POS, 1e-05),
            ("sequence_parallel_enabled", POS, False),
            ("kwargs", VAR_KW),
        ],
    ),
    "modules.rms_norm:RMSNorm.reset_parameters": (64, []),
    "modules.rms_norm:RMSNorm.forward": (68, [("input", POS)]),
    "modules.rms_norm:RMSNorm.extra_repr": (71, []),
    "modules.rms_norm:manual_rms_norm": (
        10,
        [("input", POS), ("normalized_shape", POS), ("weight", POS), ("eps", POS)],
    ),
    # src/neuronx_distributed/kernels/flash_attn.py
    "kernels.flash_attn:nki_flash_attn_func": (
        162,
        [
            ("q", POS),
            ("k", POS),
            ("v", POS),
            ("lnc", POS, 1),
            ("dropout_p", POS, 0.0),
            ("softmax_scale", POS, None),
            ("causal", POS, True),
            ("mixed_precision", POS, True),
            ("seed", POS, None),
            ("hardware_type", POS, None),
            ("transpose_nki_inputs", POS, True),
        ],
    ),
    # src/neuronx_distributed/trainer/checkpoint.py
    "trainer.checkpoint:save_checkpoint": (
        654,
        [
            ("checkpoint_dir_str", POS),
            ("tag", POS),
            ("model", POS, None),
            ("optimizer", POS, None),
            ("scheduler", POS, None),
            ("user_content", POS, None),
            ("num_workers", POS, 8),
            ("use_xser", POS, False),
            ("num_kept_ckpts", POS, None),
            ("async_save", POS, False),
            ("zero1_optimizer", POS, False),
            ("use_zero1_dcp", POS, False),
            ("avoid_saving_lower_precision_weights", POS, False),
        ],
    ),
}


@dataclass(frozen=True)
class Deviating:
    """An intended difference: the deviation that explains it, why, and exactly the differences it allows."""

    deviation: str
    reason: str
    allowed: frozenset[str]


DEVIATING: dict[str, Deviating] = {}

# Known differences to fix in the reference backend (strict xfail: the test starts failing once fixed).
DISCREPANCIES: dict[str, str] = {}

# Upstream methods of classes we expose that the reference does not implement (models never call them).
NOT_PROVIDED: dict[str, str] = {
    "parallel_layers.layers:SPMDRank.initialize_expert_indices": "mixture-of-experts inference only (layers.py:1571)",
    "parallel_layers.layers:SPMDRank.get_local_expert_indices": "mixture-of-experts inference only (layers.py:1595)",
    "modules.qkv_linear:GQAQKVColumnParallelLinear.initialize_weight_biases": (
        "upstream's init entry point (qkv_linear.py:515), called from its __init__ only; ours initialises in "
        "__init__ through private helpers"
    ),
}

# Upstream modules of the same package tree that the reference does not provide at all.
NOT_PROVIDED_MODULES: dict[str, str] = {
    "parallel_layers.comm": (
        "XLA collectives (xm.all_reduce, ...) with XLA-style signatures; no model or host module imports it. The "
        "reference's own torch.distributed helpers are private (parallel_layers/_collectives.py)"
    ),
}

# Public names our modules expose that upstream does not define at the same path.
REFERENCE_ONLY: dict[str, str] = {
    "parallel_layers.layers:param_is_not_tensor_parallel_duplicate": (
        "defined in utils (compared there); upstream layers.py:45 re-exports it too"
    ),
    "parallel_layers.layers_utils:LinearWithAsyncCommunication": "upstream defines it in layers.py (compared there)",
    "parallel_layers.layers_utils:linear_with_async_allreduce": "upstream defines it in layers.py (compared there)",
    "parallel_layers.parallel_state:build_mesh": "reference helper that lays out the (P, D, C, T) rank mesh",
    "parallel_layers.parallel_state:build_expert_mesh": "reference helper that lays out the (P, D_exp, E, T) expert mesh",
    "parallel_layers.parallel_state:get_device": "reference helper: the device collectives run on",
    "kernels.flash_attn:FlashAttentionSequenceLengthError": "the error for the kernel's S % 2048 rule (NXD-18)",
    "kernels.flash_attn:required_sequence_multiple": "the sequence multiple, lowered by an env var for tiny models (NXD-18)",
}

# What upstream's `parallel_layers/__init__.py` exports (0.18.0), and why ours leaves a name out.
PARALLEL_LAYERS_EXPORTS: dict[str, str | None] = {
    "parallel_state": None,
    "load": "legacy checkpoint API (parallel_layers/checkpointing.py): models and the host never use it",
    "save": "legacy checkpoint API (parallel_layers/checkpointing.py): models and the host never use it",
    "clip_grad_norm": None,
    "ColumnParallelLinear": None,
    "ParallelEmbedding": None,
    "RowParallelLinear": None,
    "parallel_cross_entropy": None,
    "copy_to_tensor_model_parallel_region": None,
    "gather_from_tensor_model_parallel_region": None,
    "reduce_from_tensor_model_parallel_region": None,
    "scatter_to_tensor_model_parallel_region": None,
    "initialize_model_parallel": None,
    "get_xla_rng_tracker": "XLA RNG tracker (parallel_layers/random.py): no XLA device here",
    "model_parallel_xla_manual_seed": "XLA RNG tracker (parallel_layers/random.py): no XLA device here",
    "copy_tensor_model_parallel_attributes": None,
    "move_model_to_device": "XLA device placement (parallel_layers/utils.py)",
    "set_defaults_if_not_set_tensor_model_parallel_attributes": None,
    "set_tensor_model_parallel_attributes": None,
    "split_tensor_along_last_dim": "utility no model or host module of the kit imports",
    "PARALLEL_MODULES": "pipeline-parallel tracing list: the reference has no pipeline parallelism",
    "PARALLEL_FUNCTIONS": "pipeline-parallel tracing list: the reference has no pipeline parallelism",
}


# Our modules whose public names must all be accounted for (compared, or listed as reference-only).
OUR_MODULES = (
    "parallel_layers.grads",
    "parallel_layers.layer_norm",
    "parallel_layers.layers",
    "parallel_layers.layers_utils",
    "parallel_layers.loss_functions",
    "parallel_layers.mappings",
    "parallel_layers.parallel_state",
    "parallel_layers.utils",
    "modules.qkv_linear",
    "modules.rms_norm",
    "kernels.flash_attn",
    "trainer.checkpoint",
)


def _module(name: str) -> types.ModuleType:
    activate("reference")
    return importlib.import_module(f"neuronx_distributed.{name}")


def _resolve(key: str) -> tuple[Any, bool]:
    """Our object for a table key, and whether its first parameter (`self`/`cls`) is left out."""
    module_name, qualified = key.split(":")
    owner: Any = _module(module_name)
    *classes, name = qualified.split(".")
    for class_name in classes:
        owner = getattr(owner, class_name)
    if not classes:
        return getattr(owner, name), False
    attribute = inspect.getattr_static(owner, name)
    if isinstance(attribute, staticmethod):
        return attribute.__func__, False
    if isinstance(attribute, classmethod):
        return attribute.__func__, True
    return attribute, True


def _expected_params(key: str) -> list[tuple[str, str, Any]]:
    _, params = EXPECTED[key]
    return [(p[0], p[1], p[2] if len(p) == 3 else REQUIRED) for p in params]


def _cases() -> list[Any]:
    cases = []
    for key in EXPECTED:
        marks = [pytest.mark.xfail(strict=True, reason=DISCREPANCIES[key])] if key in DISCREPANCIES else []
        cases.append(pytest.param(key, marks=marks, id=key))
    return cases


@pytest.mark.parametrize("key", _cases())
def test_signature_matches_upstream(key: str) -> None:
    line, _ = EXPECTED[key]
    path = key.split(":")[0].replace(".", "/") + ".py"
    function, drop_first = _resolve(key)
    found = set(differences(_expected_params(key), params_of(function, drop_first=drop_first)))
    if key in DEVIATING:
        assert found == DEVIATING[key].allowed, f"{key} ({DEVIATING[key].deviation}): differences changed"
        return
    assert not found, f"{key} differs from {UPSTREAM_FILE.format(path=path, line=line)}: {sorted(found)}"


def test_the_allow_lists_name_real_entries() -> None:
    for key in (*DEVIATING, *DISCREPANCIES):
        assert key in EXPECTED, key
    for key in DEVIATING:
        assert key not in DISCREPANCIES, key
    for key, deviation in DEVIATING.items():
        assert deviation.deviation.startswith("NXD-") and deviation.reason and deviation.allowed, key


def _exposed(module: types.ModuleType) -> list[str]:
    """Public callables a module defines itself or lists in `__all__` (not what it merely imports)."""
    exported = set(getattr(module, "__all__", ()))
    return sorted(
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and callable(value)
        and not isinstance(value, types.ModuleType)
        and (name in exported or getattr(value, "__module__", None) == module.__name__)
    )


def test_every_exposed_name_is_compared_or_listed() -> None:
    compared = {key.split(":")[0] + ":" + key.split(":")[1].split(".")[0] for key in EXPECTED}
    unaccounted = [
        f"{module_name}:{name}"
        for module_name in OUR_MODULES
        for name in _exposed(_module(module_name))
        if f"{module_name}:{name}" not in compared and f"{module_name}:{name}" not in REFERENCE_ONLY
    ]
    assert not unaccounted, (
        f"public names with no upstream signature in EXPECTED nor REFERENCE_ONLY: {unaccounted}"
    )
    for key in REFERENCE_ONLY:
        module_name, name = key.split(":")
        assert hasattr(_module(module_name), name), f"stale REFERENCE_ONLY entry {key}"


@pytest.mark.parametrize("module_name", list(NOT_PROVIDED_MODULES))
def test_not_provided_modules_are_absent(module_name: str) -> None:
    with pytest.raises(ModuleNotFoundError):
        _module(module_name)


def test_not_provided_methods_are_absent() -> None:
    for key in NOT_PROVIDED:
        module_name, qualified = key.split(":")
        class_name, method = qualified.split(".")
        cls = getattr(_module(module_name), class_name)
        assert inspect.getattr_static(cls, method, None) is None, f"{key} exists now: compare it in EXPECTED"


def _export_cases() -> list[Any]:
    cases = []
    for name, why_not in PARALLEL_LAYERS_EXPORTS.items():
        cases.append(pytest.param(name, why_not, id=name))
    return cases


@pytest.mark.parametrize(("name", "why_not"), _export_cases())
def test_parallel_layers_package_exports(name: str, why_not: str | None) -> None:
    """`from neuronx_distributed.parallel_layers import X` works for upstream's exports, or is listed out."""
    exported = hasattr(_module("parallel_layers"), name)
    if why_not is None:
        assert exported, f"neuronx_distributed.parallel_layers does not export {name} as upstream does"
    else:
        assert not exported, f"{name} is exported now: drop its reason ({why_not})"


def test_comparison_detects_each_kind_of_difference() -> None:
    """The comparator is not blind: a changed default, literal type, order, kind or name is reported."""
    key = "parallel_layers.layers:ColumnParallelLinear.__init__"
    function, drop_first = _resolve(key)
    ours = params_of(function, drop_first=drop_first)
    expected = _expected_params(key)
    assert differences(expected, ours) == []
    changed = {
        "dtype": [(n, k, torch.bfloat16 if n == "dtype" else d) for n, k, d in expected],
        "literal type": [(n, k, 1 if n == "bias" else d) for n, k, d in expected],
        "order": [expected[0], expected[2], expected[1], *expected[3:]],
        "kind": [(n, KWONLY if n == "pad" else k, d) for n, k, d in expected],
        "name": [("in_features" if n == "input_size" else n, k, d) for n, k, d in expected],
        "required": [(n, k, REQUIRED if n == "stride" else d) for n, k, d in expected],
    }
    for what, table in changed.items():
        assert differences(table, ours), what
