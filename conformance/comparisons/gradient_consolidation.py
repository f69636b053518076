"""Per-rank gradients of a tensor-parallel model back to one transformers-named gradient dict.

Gradients shard exactly like the weights they belong to, so the host's checkpoint consolidation
(`transformations_utils.to_original_weights` with the model's specs and `create_parameter_metadata`) turns
per-rank gradient dicts into transformers names.

K/V heads replicated by NxD's GQA layer (`kv_size_multiplier` m > 1): the original K (or V) matrix is used
m times, each copy serving a disjoint subset of the query heads, so its true gradient is the sum of what
the m copies receive locally (d L / d W = sum over copies c of d L / d W_c). NxD's GQA layer already
performs that sum in its backward: it all-reduces (SUM) grad_k and grad_v over the kv-shared group (NxD
semantics §10.4), so that the replicas stay identical after an optimizer step. After `loss.backward()`
every replica's `.grad` therefore holds the sum, and consolidation must take ONE replica (what the host's
weight consolidation does, replica 0); summing the replicas again would give m times the gradient.
What can go wrong is a backend or model whose replicas do not receive the all-reduced sum: they then
disagree, and `kv_replica_disagreement` measures that. `replicated_disagreement` does the same for
parameters replicated on every rank (norm weights, row-parallel biases), whose gradients must be full
and equal on every rank once the training loop's sequence-parallel all-reduce has run.
Expert parallelism (EP > 1): the ranks are EP data-parallel groups of T ranks (global rank d T + r for
data-parallel rank d and TP rank r). After the optimizer's data-parallel reductions every data-parallel rank
holds the same gradient of a non-expert parameter, and the expert parameters are split over the EP ranks: the
consolidation reads expert parameters from every (EP rank, TP rank), in that order, and the others from
data-parallel rank 0, as the host's checkpoint consolidation reads the shard files (ON-17);
`data_parallel_disagreement` measures how far the other data-parallel ranks' copies are.
"""

from __future__ import annotations

from typing import Any

import torch

GQA_SPEC = "GQAQKVColumnParallelLinearSpec"
HEAD_ROWS_SPEC = "HeadRowsSpec"  # a generated package's q/k norm parameters under the GQA layer (NXS026)


def _replicas(shards: list[torch.Tensor], multiplier: int) -> list[torch.Tensor]:
    """The `multiplier` copies of a K/V tensor from its rank-ordered shards (tiling: `repeat(m, 1)`)."""
    return list(torch.chunk(torch.cat(shards, dim=0), multiplier, dim=0))


def _gqa_kv_shards(
    sharded: dict[str, list[torch.Tensor]], fqn: str, fields: dict[str, Any]
) -> dict[str, list[torch.Tensor]]:
    """`{transformers name of k_proj/v_proj weight or bias: per-rank shards}` for one GQA spec."""
    prefix = f"{fqn}.{fields['gqa_qkv_projection_name']}"
    originals = {"k": fields["key_projection_name"], "v": fields["value_projection_name"]}
    found: dict[str, list[torch.Tensor]] = {}
    for pn in ("weight", "bias") if fields["bias"] else ("weight",):
        if fields["fuse_qkv"]:
            fused = sharded.get(f"{prefix}.{pn}_qkv")
            if fused is None:
                continue
            q_pp, kv_pp = fields["q_output_size_per_partition"], fields["kv_output_size_per_partition"]
            parts = [shard.split([q_pp, kv_pp, kv_pp], dim=0) for shard in fused]
            found[f"{fqn}.{originals['k']}.{pn}"] = [p[1] for p in parts]
            found[f"{fqn}.{originals['v']}.{pn}"] = [p[2] for p in parts]
        else:
            for key, original in originals.items():
                shards = sharded.get(f"{prefix}.{pn}_{key}")
                if shards is not None:
                    found[f"{fqn}.{original}.{pn}"] = shards
    return found


def kv_replica_disagreement(
    sharded: dict[str, list[torch.Tensor]], specs_metadata: list[dict[str, Any]]
) -> dict[str, float]:
    """Per replicated K/V tensor (transformers name): max |replica c - replica 0| over the replicas; the
    GQA layer's K/V projections and the parameters of key norms that tile with them (`HeadRowsSpec`).

    `sharded` maps parameter names to per-rank tensors (rank order); `specs_metadata` is the
    "model_weight_transformation_specs" section of `create_parameter_metadata`. Only GQA layers with
    m > 1 appear. Zero means the replicas agree, as NxD's kv-group all-reduce makes them.
    """
    spread: dict[str, float] = {}
    for module in specs_metadata:
        for class_name, fields in module["specs"]:
            multiplier = fields.get("kv_size_multiplier", 1)
            if multiplier == 1:
                continue
            fqn = module["module_fully_qualified_name"]
            if class_name == GQA_SPEC:
                replicated = _gqa_kv_shards(sharded, fqn, fields)
            elif class_name == HEAD_ROWS_SPEC and fields["projection"] == "key":
                # a key norm's parameters tile with the K heads they scale
                names = (f"{fqn}.{name}" for name in fields["parameter_names"])
                replicated = {name: sharded[name] for name in names if name in sharded}
            else:
                continue
            for name, shards in replicated.items():
                copies = _replicas(shards, multiplier)
                spread[name] = max(float((copy - copies[0]).abs().max()) for copy in copies)
    return spread


def replicated_disagreement(
    per_rank: list[dict[str, torch.Tensor]], parameters_metadata: dict[str, dict[str, Any]]
) -> dict[str, float]:
    """Per replicated parameter (not tensor-parallel): max |rank r's gradient - rank 0's| over the ranks.

    A replicated parameter must end up with the same, full gradient on every rank. One used only on
    rank-local data (a per-head q/k norm applied to the rank's own heads, a norm inside the sequence-parallel
    region without the `sequence_parallel_enabled` mark) gets a partial gradient per rank instead, which
    nothing sums: the spread is then the size of the missing contributions.
    """
    spread: dict[str, float] = {}
    for name, meta in parameters_metadata.items():
        if meta.get("tensor_model_parallel") or meta.get("expert_model_parallel") or name not in per_rank[0]:
            continue
        first = per_rank[0][name]
        spread[name] = max(float((grads[name] - first).abs().max()) for grads in per_rank)
    return spread


def data_parallel_disagreement(
    per_rank: list[dict[str, torch.Tensor]], parameters_metadata: dict[str, dict[str, Any]], tp_size: int
) -> dict[str, float]:
    """Per non-expert parameter: max |data-parallel rank d's gradient - rank 0's| at the same TP rank, over
    the world's ranks in global order (d T + r). Empty without data parallelism."""
    dp_size = len(per_rank) // tp_size
    spread: dict[str, float] = {}
    if dp_size == 1:
        return spread
    for name, meta in parameters_metadata.items():
        if meta.get("expert_model_parallel") or name not in per_rank[0]:
            continue
        spread[name] = max(
            float((per_rank[d * tp_size + r][name] - per_rank[r][name]).abs().max())
            for d in range(dp_size)
            for r in range(tp_size)
        )
    return spread


def model_parallel_shards(
    per_rank: list[dict[str, torch.Tensor]],
    parameters_metadata: dict[str, dict[str, Any]],
    tp_size: int,
    ep_size: int = 1,
) -> dict[str, list[torch.Tensor]]:
    """`{name: tensors as the specs read them}` from the world's per-rank dicts (global rank order): TP rank
    order of data-parallel rank 0, and for expert-parallel parameters (EP rank, TP rank) order."""
    sharded = {name: [per_rank[r][name] for r in range(tp_size)] for name in per_rank[0]}
    if ep_size == 1:
        return sharded
    for name, meta in parameters_metadata.items():
        if meta.get("expert_model_parallel") and name in sharded:
            sharded[name] = [per_rank[e * tp_size + r][name] for e in range(ep_size) for r in range(tp_size)]
    return sharded


def consolidate_gradients(
    per_rank: list[dict[str, torch.Tensor]],
    metadata: dict[str, Any],
    tp_size: int | None = None,
    ep_size: int = 1,
) -> tuple[dict[str, torch.Tensor], dict[str, float], dict[str, float]]:
    """Transformers-named gradients from per-rank `{parameter name: gradient}` dicts (global rank order: the
    T ranks, or with data parallelism T x D, `tp_size` then given), the K/V replica disagreement
    (`kv_replica_disagreement`) and the replicated-parameter disagreement (`replicated_disagreement`, over
    every rank).

    `metadata` is `create_parameter_metadata(model)` of the model that produced them (any rank: it is the
    same on all). Needs an active backend (the host's consolidation imports `neuronx_distributed`).
    Replicated parameters take rank 0's gradient: run the sequence-parallel gradient all-reduce first, as
    the training loop does, so that every rank holds the full one.
    """
    from conformance.backends import active

    backend = active()
    if backend is None:
        raise RuntimeError(
            "consolidate_gradients needs an active backend: call conformance.backends.activate()"
        )
    transformations = backend.host_module("transformations_utils")
    tp_size = tp_size or len(per_rank)
    sharded = model_parallel_shards(per_rank, metadata["parameters"], tp_size, ep_size)
    specs_metadata = metadata["model_weight_transformation_specs"]
    specs = [transformations.ModelWeightTransformationSpecs.from_metadata(entry) for entry in specs_metadata]
    consolidated = transformations.to_original_weights(specs, sharded, metadata["parameters"])
    return (
        consolidated,
        kv_replica_disagreement(sharded, specs_metadata),
        replicated_disagreement(per_rank, metadata["parameters"]),
    )
