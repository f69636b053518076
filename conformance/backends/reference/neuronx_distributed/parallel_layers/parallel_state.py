"""Process groups of the model-parallel mesh, with NxD's names and rank layout.

Global rank of mesh coordinate (pipeline p, data d, context c, tensor t) is
`((p * D + d) * C + c) * T + t`: TP is the fastest-varying axis (NxD's default "LOGIC1" layout). NxD's
strided TP=4 groups on TRN1 are not reproduced (deviation NXD-01). A rank's position inside a group is its
index in the group's sorted member list, as for torch's `new_group`.

Expert parallelism (EP = E) is carved out of data parallelism, as in NxD: the same ranks are laid out a
second time as `[P, D_exp, E, T]` with `D_exp = W / (T * P * E)`, so `d = d_exp * E + e` (with C = 1). The
expert-model-parallel group of a rank holds the E ranks with its (p, d_exp, t); its expert-data-parallel
group the D_exp ranks with its (p, e, t). Expert weights are sharded over the first and replicated (their
gradients averaged) over the second.

Requires `torch.distributed` to be initialised first, as NxD does.
"""

from __future__ import annotations

import contextlib
import itertools
from collections import namedtuple
from typing import Any

import torch
import torch.distributed as dist

from ..utils.utils import hardware

ProcessGroup = Any

_TENSOR_MODEL_PARALLEL_GROUP: ProcessGroup | None = None
_DATA_PARALLEL_GROUP: ProcessGroup | None = None
_PIPELINE_MODEL_PARALLEL_GROUP: ProcessGroup | None = None
_CONTEXT_MODEL_PARALLEL_GROUP: ProcessGroup | None = None
_EXPERT_MODEL_PARALLEL_GROUP: ProcessGroup | None = None
_EXP_DATA_PARALLEL_GROUP: ProcessGroup | None = None
_KV_SHARED_GROUP: ProcessGroup | None = None

_TP_MESH: list[list[int]] | None = None
_DP_MESH: list[list[int]] | None = None
_PP_MESH: list[list[int]] | None = None
_CP_MESH: list[list[int]] | None = None
_EP_MODEL_MESH: list[list[int]] | None = None
_EP_DATA_MESH: list[list[int]] | None = None
_KV_MESH: list[list[int]] | None = None
_KV_SHARED_GROUP_SIZE: int | None = None

_PIPELINE_GLOBAL_RANKS: list[int] | None = None
_MPU_TENSOR_MODEL_PARALLEL_WORLD_SIZE: int | None = None
_MPU_TENSOR_MODEL_PARALLEL_RANK: int | None = None
_MPU_EXPERT_MODEL_PARALLEL_WORLD_SIZE: int | None = None
_MPU_EXPERT_MODEL_PARALLEL_RANK: int | None = None
_AOT_MODE = False

# Every group this module created, so destroy_model_parallel can release them.
_OWNED_GROUPS: list[ProcessGroup] = []


def _new_groups(mesh: list[list[int]]) -> ProcessGroup | None:
    """Create every group of `mesh` (all ranks must take part) and return the caller's own."""
    me = dist.get_rank()
    mine = None
    for ranks in mesh:
        group = dist.new_group(sorted(ranks))
        _OWNED_GROUPS.append(group)
        if me in ranks:
            mine = group
    return mine


ParallelGroups = namedtuple(
    "ParallelGroups",
    ["tp_groups", "dp_groups", "pp_groups", "ep_model_groups", "ep_data_groups", "cp_groups"],
)
"""What `initialize_model_parallel(mesh_only=True)` returns: every group list, as NxD returns it."""


def build_mesh(
    world_size: int, tensor_size: int, pipeline_size: int, context_size: int = 1
) -> tuple[list[list[int]], list[list[int]], list[list[int]], list[list[int]]]:
    """The (tp, dp, pp, cp) group lists of NxD's LOGIC1 layout, each ordered as NxD orders them."""
    if world_size % (tensor_size * pipeline_size * context_size) != 0:
        raise RuntimeError(
            f"world size ({world_size}) is not divisible by tensor parallel size ({tensor_size}) x pipeline "
            f"parallel size ({pipeline_size}) x context parallel size ({context_size})"
        )
    T, P, C = tensor_size, pipeline_size, context_size
    D = world_size // (T * P * C)

    def rank(p: int, d: int, c: int, t: int) -> int:
        return ((p * D + d) * C + c) * T + t

    tp = [[rank(p, d, c, t) for t in range(T)] for p, d, c in itertools.product(range(P), range(D), range(C))]
    dp = [[rank(p, d, c, t) for d in range(D)] for p, c, t in itertools.product(range(P), range(C), range(T))]
    pp = [[rank(p, d, c, t) for p in range(P)] for d, c, t in itertools.product(range(D), range(C), range(T))]
    cp = [[rank(p, d, c, t) for c in range(C)] for p, d, t in itertools.product(range(P), range(D), range(T))]
    return tp, dp, pp, cp


def build_expert_mesh(
    world_size: int, tensor_size: int, pipeline_size: int, expert_size: int
) -> tuple[list[list[int]], list[list[int]]]:
    """The (expert-model, expert-data) group lists of NxD's LOGIC1 layout, each ordered as NxD orders them.

    The ranks are laid out as `[P, D_exp, E, T]`: rank `((p * D_exp + x) * E + e) * T + t`. An expert-model
    group runs over e for a fixed (p, x, t), listed in `product(p, x, t)` order; an expert-data group over x
    for a fixed (p, e, t), listed in `product(p, e, t)` order.
    """
    T, P, E = tensor_size, pipeline_size, expert_size
    if world_size % (T * P * E) != 0:
        raise RuntimeError(
            f"world size ({world_size}) is not divisible by tensor parallel size ({T}) x pipeline parallel "
            f"size ({P}) x expert parallel size ({E}): no integer expert data parallel size"
        )
    X = world_size // (T * P * E)

    def rank(p: int, x: int, e: int, t: int) -> int:
        return ((p * X + x) * E + e) * T + t

    model = [
        [rank(p, x, e, t) for e in range(E)] for p, x, t in itertools.product(range(P), range(X), range(T))
    ]
    data = [
        [rank(p, x, e, t) for x in range(X)] for p, e, t in itertools.product(range(P), range(E), range(T))
    ]
    return model, data


def initialize_model_parallel(
    tensor_model_parallel_size: int = 1,
    pipeline_model_parallel_size: int = 1,
    context_parallel_size: int = 1,
    expert_model_parallel_size: int = 1,
    skip_collective_init: bool = False,
    lnc_size: int = 1,
    mesh_only: bool = False,
):
    """Build the TP/DP/PP/expert/CP groups over the default process group (sizes are clamped to the world size).

    With `mesh_only` nothing is created: the `ParallelGroups` lists come back instead.
    """
    global _TENSOR_MODEL_PARALLEL_GROUP, _DATA_PARALLEL_GROUP, _PIPELINE_MODEL_PARALLEL_GROUP
    global _CONTEXT_MODEL_PARALLEL_GROUP, _TP_MESH, _DP_MESH, _PP_MESH, _CP_MESH, _PIPELINE_GLOBAL_RANKS
    global _EXPERT_MODEL_PARALLEL_GROUP, _EXP_DATA_PARALLEL_GROUP, _EP_MODEL_MESH, _EP_DATA_MESH
    if not dist.is_initialized():
        raise RuntimeError("torch.distributed must be initialized before initialize_model_parallel")
    world = dist.get_world_size()
    T = min(tensor_model_parallel_size, world)
    P = min(pipeline_model_parallel_size, world)
    C = min(context_parallel_size, world)
    E = min(expert_model_parallel_size, world)
    tp, dp, pp, cp = build_mesh(world, T, P, C)
    ep_model, ep_data = build_expert_mesh(world, T, P, E)
    if mesh_only:
        return ParallelGroups(tp, dp, pp, ep_model, ep_data, cp)
    if model_parallel_is_initialized():
        raise RuntimeError("model parallel groups are already initialized; call destroy_model_parallel first")
    _TP_MESH, _DP_MESH, _PP_MESH, _CP_MESH = tp, dp, pp, cp
    _EP_MODEL_MESH, _EP_DATA_MESH = ep_model, ep_data
    # NxD's creation order: TP, DP, PP, expert data, expert model, CP.
    _TENSOR_MODEL_PARALLEL_GROUP = _new_groups(tp)
    _DATA_PARALLEL_GROUP = _new_groups(dp)
    _PIPELINE_MODEL_PARALLEL_GROUP = _new_groups(pp)
    _EXP_DATA_PARALLEL_GROUP = _new_groups(ep_data)
    _EXPERT_MODEL_PARALLEL_GROUP = _new_groups(ep_model)
    _CONTEXT_MODEL_PARALLEL_GROUP = _new_groups(cp)
    me = dist.get_rank()
    _PIPELINE_GLOBAL_RANKS = next(g for g in pp if me in g)
    return None


def model_parallel_is_initialized() -> bool:
    """True once the TP and DP groups exist."""
    return _TENSOR_MODEL_PARALLEL_GROUP is not None and _DATA_PARALLEL_GROUP is not None


def destroy_model_parallel() -> None:
    """Forget every group, mesh and cached size/rank (the kv group too) and release the groups."""
    global _TENSOR_MODEL_PARALLEL_GROUP, _DATA_PARALLEL_GROUP, _PIPELINE_MODEL_PARALLEL_GROUP
    global _CONTEXT_MODEL_PARALLEL_GROUP, _TP_MESH, _DP_MESH, _PP_MESH, _CP_MESH, _PIPELINE_GLOBAL_RANKS
    global _MPU_TENSOR_MODEL_PARALLEL_WORLD_SIZE, _MPU_TENSOR_MODEL_PARALLEL_RANK
    global _EXPERT_MODEL_PARALLEL_GROUP, _EXP_DATA_PARALLEL_GROUP, _EP_MODEL_MESH, _EP_DATA_MESH
    global _MPU_EXPERT_MODEL_PARALLEL_WORLD_SIZE, _MPU_EXPERT_MODEL_PARALLEL_RANK
    destroy_kv_group()
    _TENSOR_MODEL_PARALLEL_GROUP = _DATA_PARALLEL_GROUP = None
    _PIPELINE_MODEL_PARALLEL_GROUP = _CONTEXT_MODEL_PARALLEL_GROUP = None
    _EXPERT_MODEL_PARALLEL_GROUP = _EXP_DATA_PARALLEL_GROUP = None
    _TP_MESH = _DP_MESH = _PP_MESH = _CP_MESH = _EP_MODEL_MESH = _EP_DATA_MESH = None
    _PIPELINE_GLOBAL_RANKS = None
    _MPU_TENSOR_MODEL_PARALLEL_WORLD_SIZE = _MPU_TENSOR_MODEL_PARALLEL_RANK = None
    _MPU_EXPERT_MODEL_PARALLEL_WORLD_SIZE = _MPU_EXPERT_MODEL_PARALLEL_RANK = None
    while _OWNED_GROUPS:
        group = _OWNED_GROUPS.pop()
        if group is not None and dist.is_initialized():
            with contextlib.suppress(RuntimeError, ValueError):
                dist.destroy_process_group(group)


def _require(group: ProcessGroup | None, what: str) -> ProcessGroup:
    if group is None:
        raise AssertionError(f"{what} group is not initialized; call initialize_model_parallel first")
    return group


def _mesh(mesh: list[list[int]] | None, what: str) -> list[list[int]]:
    if mesh is None:
        raise AssertionError(f"{what} mesh is not initialized; call initialize_model_parallel first")
    return mesh


def _own_members(mesh: list[list[int]]) -> list[int]:
    me = dist.get_rank()
    return sorted(next(g for g in mesh if me in g))


# --- tensor parallel -----------------------------------------------------------------------------------


def get_tensor_model_parallel_group(as_list: bool = False):
    """The caller's TP group, or with `as_list` the whole TP mesh."""
    if as_list:
        return _mesh(_TP_MESH, "tensor model parallel")
    return _require(_TENSOR_MODEL_PARALLEL_GROUP, "tensor model parallel")


def get_tensor_model_parallel_replica_groups() -> list[list[int]]:
    return _mesh(_TP_MESH, "tensor model parallel")


def get_tensor_model_parallel_size() -> int:
    global _MPU_TENSOR_MODEL_PARALLEL_WORLD_SIZE
    if _MPU_TENSOR_MODEL_PARALLEL_WORLD_SIZE is None:
        _MPU_TENSOR_MODEL_PARALLEL_WORLD_SIZE = dist.get_world_size(group=get_tensor_model_parallel_group())
    return _MPU_TENSOR_MODEL_PARALLEL_WORLD_SIZE


def set_tensor_model_parallel_size(world_size: int | None) -> None:
    """Override the TP size (NxD uses this for offline sharding); None clears the override."""
    global _MPU_TENSOR_MODEL_PARALLEL_WORLD_SIZE
    _MPU_TENSOR_MODEL_PARALLEL_WORLD_SIZE = world_size


def get_tensor_model_parallel_rank() -> int:
    global _MPU_TENSOR_MODEL_PARALLEL_RANK
    if _MPU_TENSOR_MODEL_PARALLEL_RANK is None:
        _MPU_TENSOR_MODEL_PARALLEL_RANK = dist.get_rank(group=get_tensor_model_parallel_group())
    return _MPU_TENSOR_MODEL_PARALLEL_RANK


def set_tensor_model_parallel_rank(rank: int | None) -> None:
    """Override the TP rank (NxD uses this for offline sharding); None clears the override."""
    global _MPU_TENSOR_MODEL_PARALLEL_RANK
    _MPU_TENSOR_MODEL_PARALLEL_RANK = rank


def get_tensor_model_parallel_src_rank() -> int:
    """Global rank of the first member of the caller's TP group (deviation NXD-02)."""
    return _own_members(get_tensor_model_parallel_replica_groups())[0]


# --- data parallel -------------------------------------------------------------------------------------


def get_data_parallel_group(as_list: bool = False):
    if as_list:
        return _mesh(_DP_MESH, "data parallel")
    return _require(_DATA_PARALLEL_GROUP, "data parallel")


def get_data_parallel_replica_groups() -> list[list[int]]:
    return _mesh(_DP_MESH, "data parallel")


def get_data_parallel_size() -> int:
    return dist.get_world_size(group=get_data_parallel_group())


def get_data_parallel_rank() -> int:
    return dist.get_rank(group=get_data_parallel_group())


def get_data_parallel_src_rank() -> int:
    """Global rank of the first member of the caller's DP group (deviation NXD-02)."""
    return _own_members(get_data_parallel_replica_groups())[0]


# --- pipeline parallel ---------------------------------------------------------------------------------


def get_pipeline_model_parallel_group(as_list: bool = False):
    if as_list:
        return _mesh(_PP_MESH, "pipeline model parallel")
    return _require(_PIPELINE_MODEL_PARALLEL_GROUP, "pipeline model parallel")


def get_pipeline_model_parallel_replica_groups() -> list[list[int]]:
    return _mesh(_PP_MESH, "pipeline model parallel")


def get_pipeline_model_parallel_size() -> int:
    return dist.get_world_size(group=get_pipeline_model_parallel_group())


def get_pipeline_model_parallel_rank() -> int:
    return dist.get_rank(group=get_pipeline_model_parallel_group())


def get_pipeline_model_parallel_next_rank() -> int:
    ranks = _require(_PIPELINE_GLOBAL_RANKS, "pipeline model parallel")
    return ranks[(get_pipeline_model_parallel_rank() + 1) % len(ranks)]


def get_pipeline_model_parallel_prev_rank() -> int:
    ranks = _require(_PIPELINE_GLOBAL_RANKS, "pipeline model parallel")
    return ranks[(get_pipeline_model_parallel_rank() - 1) % len(ranks)]


# --- context parallel ----------------------------------------------------------------------------------


def get_context_model_parallel_group(as_list: bool = False):
    if as_list:
        return _mesh(_CP_MESH, "context model parallel")
    return _require(_CONTEXT_MODEL_PARALLEL_GROUP, "context model parallel")


def get_context_model_parallel_size() -> int:
    return dist.get_world_size(group=get_context_model_parallel_group())


def get_context_model_parallel_rank() -> int:
    return dist.get_rank(group=get_context_model_parallel_group())


# --- expert parallel -----------------------------------------------------------------------------------


def get_expert_model_parallel_group(as_list: bool = False):
    """The caller's expert-model-parallel group (the ranks that split the experts), or the whole mesh."""
    if as_list:
        return get_expert_model_parallel_replica_groups()
    return _require(_EXPERT_MODEL_PARALLEL_GROUP, "expert model parallel")


def get_expert_model_parallel_replica_groups() -> list[list[int]]:
    return _mesh(_EP_MODEL_MESH, "expert model parallel")


def set_expert_model_parallel_size(world_size: int | None) -> None:
    """Override the EP size (as NxD allows); None clears the override."""
    global _MPU_EXPERT_MODEL_PARALLEL_WORLD_SIZE
    _MPU_EXPERT_MODEL_PARALLEL_WORLD_SIZE = world_size


def get_expert_model_parallel_size() -> int:
    """The EP size, cached on first call like NxD's."""
    global _MPU_EXPERT_MODEL_PARALLEL_WORLD_SIZE
    if _MPU_EXPERT_MODEL_PARALLEL_WORLD_SIZE is None:
        _MPU_EXPERT_MODEL_PARALLEL_WORLD_SIZE = dist.get_world_size(group=get_expert_model_parallel_group())
    return _MPU_EXPERT_MODEL_PARALLEL_WORLD_SIZE


def set_expert_model_parallel_rank(rank: int | None) -> None:
    """Override the EP rank (as NxD allows); None clears the override."""
    global _MPU_EXPERT_MODEL_PARALLEL_RANK
    _MPU_EXPERT_MODEL_PARALLEL_RANK = rank


def get_expert_model_parallel_rank() -> int:
    """The caller's position in its expert-model-parallel group, cached on first call like NxD's."""
    global _MPU_EXPERT_MODEL_PARALLEL_RANK
    if _MPU_EXPERT_MODEL_PARALLEL_RANK is None:
        _MPU_EXPERT_MODEL_PARALLEL_RANK = dist.get_rank(group=get_expert_model_parallel_group())
    return _MPU_EXPERT_MODEL_PARALLEL_RANK


def get_expert_data_parallel_group(as_list: bool = False):
    """The caller's expert-data-parallel group (the ranks holding the same experts), or the whole mesh."""
    if as_list:
        return get_expert_data_parallel_replica_groups()
    return _require(_EXP_DATA_PARALLEL_GROUP, "expert data parallel")


def get_expert_data_parallel_replica_groups() -> list[list[int]]:
    return _mesh(_EP_DATA_MESH, "expert data parallel")


def get_expert_data_parallel_size() -> int:
    return dist.get_world_size(group=get_expert_data_parallel_group())


def get_expert_data_parallel_rank() -> int:
    return dist.get_rank(group=get_expert_data_parallel_group())


def get_experts_for_expert_parallel_rank(
    expert_parallel_rank: int,
    total_number_of_experts: int,
    expert_model_parallel_size: int,
    expert_distribution: list[list[int]] | None = None,
) -> list[int]:
    """The global indices of the experts an EP rank holds: a contiguous block, or its `expert_distribution` row."""
    if total_number_of_experts % expert_model_parallel_size != 0:
        raise AssertionError(
            f"total_number_of_experts: {total_number_of_experts} is not a multiple of "
            f"expert_model_parallel_size: {expert_model_parallel_size}"
        )
    if expert_parallel_rank >= expert_model_parallel_size:
        raise AssertionError(
            f"expert_parallel_rank: {expert_parallel_rank} is not less than "
            f"expert_model_parallel_size: {expert_model_parallel_size}"
        )
    if expert_distribution:
        if len(expert_distribution) != expert_model_parallel_size:
            raise AssertionError(
                f"expert_distribution has {len(expert_distribution)} rows for {expert_model_parallel_size} ranks"
            )
        if {e for row in expert_distribution for e in row} != set(range(total_number_of_experts)):
            raise AssertionError(
                f"expert_distribution does not cover the experts 0..{total_number_of_experts - 1}"
            )
        return list(expert_distribution[expert_parallel_rank])
    per_rank = total_number_of_experts // expert_model_parallel_size
    return list(range(expert_parallel_rank * per_rank, (expert_parallel_rank + 1) * per_rank))


# --- kv-shared groups (GQA K/V replicas) ---------------------------------------------------------------


def _kv_groups_in(tp_group: list[int], kv_shared_group_size: int, consecutive: bool) -> list[list[int]]:
    """Split one TP group into the groups of ranks holding the same K/V rows.

    With the tile layout (deviation NXD-11) TP rank r holds the rows of replica block r mod (T/m), so the
    ranks sharing rows are strided by T/m; `consecutive` gives consecutive blocks instead.
    """
    T, m = len(tp_group), kv_shared_group_size
    if T % m != 0:
        raise AssertionError(f"kv shared group size {m} must divide the tensor parallel size {T}")
    if consecutive:
        return [tp_group[k * m : (k + 1) * m] for k in range(T // m)]
    stride = T // m
    return [[tp_group[j + k * stride] for k in range(m)] for j in range(stride)]


def arrange_kv_groups(
    num_tensor_model_parallel_groups: int = 1,
    tensor_model_parallel_size: int = 1,
    kv_shared_group_size: int = 1,
    sequential_ranks_in_group: bool = False,
    hardware_type: hardware = hardware.TRN1,
) -> list[list[int]]:
    """The kv-shared groups of every TP group (TP groups are consecutive rank ranges), NxD's signature.

    Strided inside each TP group for the tile layout; consecutive with `sequential_ranks_in_group` or on
    TRN2, whose replicas sit on adjacent ranks.
    """
    T = tensor_model_parallel_size
    consecutive = sequential_ranks_in_group or hardware_type is hardware.TRN2
    return [
        group
        for i in range(num_tensor_model_parallel_groups)
        for group in _kv_groups_in(list(range(i * T, (i + 1) * T)), kv_shared_group_size, consecutive)
    ]


def initialize_kv_group(kv_shared_group_size: int = 1, sequential_ranks_in_group: bool = False) -> None:
    """Create the kv-shared groups once per process (a second call with another size is an error)."""
    global _KV_SHARED_GROUP, _KV_MESH, _KV_SHARED_GROUP_SIZE
    if _KV_SHARED_GROUP_SIZE is not None:
        if _KV_SHARED_GROUP_SIZE != kv_shared_group_size:
            raise AssertionError(
                f"kv shared group already initialized with size {_KV_SHARED_GROUP_SIZE}, "
                f"not {kv_shared_group_size}; call destroy_kv_group first"
            )
        return
    mesh = [
        group
        for tp_group in get_tensor_model_parallel_replica_groups()
        for group in _kv_groups_in(tp_group, kv_shared_group_size, sequential_ranks_in_group)
    ]
    _KV_MESH = mesh
    _KV_SHARED_GROUP = _new_groups(mesh)
    _KV_SHARED_GROUP_SIZE = kv_shared_group_size


def get_kv_shared_group(as_list: bool = False):
    if as_list:
        return _mesh(_KV_MESH, "kv shared")
    return _require(_KV_SHARED_GROUP, "kv shared")


def get_kv_shared_group_size() -> int | None:
    return _KV_SHARED_GROUP_SIZE


def destroy_kv_group() -> None:
    global _KV_SHARED_GROUP, _KV_MESH, _KV_SHARED_GROUP_SIZE
    _KV_SHARED_GROUP = _KV_MESH = _KV_SHARED_GROUP_SIZE = None


# --- misc ----------------------------------------------------------------------------------------------


def get_world_group(as_list: bool = False):
    """The default process group, or with `as_list` its one-group mesh `[[0, ..., W-1]]`."""
    if as_list:
        return [list(range(dist.get_world_size()))]
    return dist.group.WORLD


def rmsg(msg: str) -> str:
    """Prefix a message with this rank's mesh coordinates."""
    return (
        f"[rank_{dist.get_rank()}_pp{get_pipeline_model_parallel_rank()}_tp{get_tensor_model_parallel_rank()}"
        f"_dp{get_data_parallel_rank()}_cp{get_context_model_parallel_rank()}] {msg}"
    )


def set_aot_mode(mode: bool) -> None:
    global _AOT_MODE
    _AOT_MODE = mode


def get_aot_mode() -> bool:
    return _AOT_MODE


def get_device() -> torch.device:
    """The device collectives run on: CUDA under nccl, CPU otherwise."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
