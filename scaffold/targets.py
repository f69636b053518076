"""The conversion plan: what each source layer becomes in the generated model (DESIGN §3).

A pure function of the Blueprint, shared by `scaffold inspect` and (later) the rules, so the plan that
is printed is the plan that is applied.
"""

from __future__ import annotations

from dataclasses import dataclass

from .blueprint import AttentionGeometry, Blueprint, LayerKind, LayerSite, Location, NormScope, NormSite, Role

COLUMN = "ColumnParallelLinear(gather_output=False)"
ROW = "RowParallelLinear(input_is_parallel=True)"
EMBEDDING = "ParallelEmbedding"
QKV_VARIANTS = "ColumnParallelLinear or qkv_proj (by attention variant)"
QKV_SPECS = "by attention variant"


@dataclass(frozen=True)
class PlanRow:
    """One module of the conversion plan."""

    module: str
    source_layer: str
    role: str
    becomes: str
    spec: str
    evidence: str
    location: Location


def plan_rows(blueprint: Blueprint) -> list[PlanRow]:
    """One row per layer site, then one per norm, in module order."""
    rows = [_layer_row(blueprint, site) for site in blueprint.sites]
    rows += [_norm_row(norm) for norm in blueprint.norms]
    return rows


def attention_variants(geometry: AttentionGeometry) -> list[tuple[str, str, str]]:
    """The three attention variants of the contributing guide: (condition, projection, spec)."""
    heads, kv = geometry.num_heads.source, geometry.num_kv_heads.source
    return [
        (
            f"when {kv} < tp or {kv} % tp != 0",
            "qkv_proj = GQAQKVColumnParallelLinear",
            "GQAQKVColumnParallelLinearSpec",
        ),
        (
            f"when fuse_qkv and {heads} == {kv}",
            "qkv_proj = ColumnParallelLinear(stride=3)",
            "FusedLinearsSpec",
        ),
        ("otherwise", f"{geometry.q}, {geometry.k}, {geometry.v} = ColumnParallelLinear", "—"),
    ]


def _layer_row(blueprint: Blueprint, site: LayerSite) -> PlanRow:
    becomes, spec = _target(blueprint, site)
    return PlanRow(
        module=site.path,
        source_layer=describe_layer(site),
        role=site.role.value,
        becomes=becomes,
        spec=spec,
        evidence=site.evidence,
        location=site.location,
    )


def _target(blueprint: Blueprint, site: LayerSite) -> tuple[str, str]:
    if site.kind not in (LayerKind.LINEAR, LayerKind.EMBEDDING) or site.role is Role.UNRESOLVED:
        return "— (refused)", "—"
    if site.role is Role.EMBEDDING:
        return EMBEDDING, "—"
    if site.role is Role.LM_HEAD:
        return f"{COLUMN} + vocab-parallel loss", "—"
    if site.role is Role.REPLICATED:
        return "kept (replicated)", "—"
    parent, _, attribute = site.path.rpartition(".")
    for geometry in blueprint.attention:
        if geometry.path == parent and attribute in (geometry.q, geometry.k, geometry.v):
            return QKV_VARIANTS, QKV_SPECS
    for block in blueprint.mlps:
        if block.path == parent and block.gate is not None and attribute in (block.gate, block.up):
            return (
                "gate_up_proj = ColumnParallelLinear(stride=2)",
                f"FusedLinearsSpec({block.gate}, {block.up})",
            )
    return (COLUMN if site.role is Role.COLUMN else ROW), "—"


def _norm_row(norm: NormSite) -> PlanRow:
    if norm.scope is NormScope.HIDDEN:
        becomes = f"{norm.norm_class}(..., sequence_parallel_enabled)"
    elif norm.scope is NormScope.PER_HEAD:
        becomes = f"{norm.norm_class} over head_dim (rank-local)"
    elif norm.scope is NormScope.HEAD_ROWS:
        becomes = f"{norm.norm_class}, rows sharded by head (NXS026)"
    else:
        becomes = "ColumnParallelRMSNorm (NXS026)" if norm.kind == "rms" else "— (refused)"
    return PlanRow(
        module=norm.path,
        source_layer=f"{norm.norm_class}({norm.width.source})",
        role=f"norm/{norm.scope.value}",
        becomes=becomes,
        spec="—",
        evidence=f"{norm.kind} norm" + (f" of {', '.join(norm.normalises)}" if norm.normalises else ""),
        location=norm.location,
    )


def describe_layer(site: LayerSite) -> str:
    """Compact constructor description with sizes as written in the source."""
    name = site.constructor.rsplit(".", 1)[-1]
    if site.kind is LayerKind.EMBEDDING:
        return f"{name}({site.in_features.source}, {site.out_features.source})"
    return f"{name}({site.in_features.source} -> {site.out_features.source}, bias={site.bias.source})"
