"""Render a Blueprint as the `scaffold inspect` report (rich tables; plain text when not a terminal).

The module table has seven columns; below `WIDE` characters they cannot all be read side by side, so a
narrower console gets a compact table of four (module, becomes, spec, line), the source layer under the
module and the role and evidence under what it becomes.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from .blueprint import Blueprint, Expr, Features, Scale
from .targets import attention_variants, plan_rows

WIDE = 150


def render_plan(blueprint: Blueprint, defaults: Any | None = None, width: int = WIDE) -> Group:
    """The whole conversion plan for a console `width` wide; `defaults` (a default config instance) adds
    evaluated values."""
    return Group(
        _header(blueprint),
        _plan_table(blueprint) if width >= WIDE else _compact_plan_table(blueprint),
        *[_attention_table(blueprint, index, defaults) for index in range(len(blueprint.attention))],
        _features_table(blueprint.features, defaults),
        _refusals(blueprint),
    )


def print_plan(blueprint: Blueprint, console: Console, defaults: Any | None = None) -> None:
    """Print the plan to `console`."""
    console.print(render_plan(blueprint, defaults, console.width))


def _header(blueprint: Blueprint) -> Text:
    backbone = blueprint.backbone
    text = Text()
    text.append(f"Conversion plan for {blueprint.model_type}", style="bold")
    text.append(f" (transformers {blueprint.transformers_version})\n")
    text.append(f"source: {blueprint.source_file}\n")
    text.append(
        f"classes: {blueprint.causal_lm_class} -> {blueprint.base_model_class}"
        f" (prefix '{backbone.base_model_prefix}'), layers {backbone.layers} = {backbone.decoder_layer}; "
        f"config {blueprint.config_class}\n"
    )
    kept = ", ".join(plan.name for plan in blueprint.classes)
    text.append(f"kept: {kept}; helpers: {', '.join(blueprint.functions) or 'none'}")
    return text


def _plan_table(blueprint: Blueprint) -> Table:
    table = Table(title="Modules", title_justify="left", show_lines=False)
    table.add_column("module", no_wrap=True)
    for column in ("source layer", "role", "becomes", "spec", "evidence"):
        table.add_column(column, overflow="fold")
    table.add_column("line", no_wrap=True)
    for row in plan_rows(blueprint):
        style = "red" if "refused" in row.becomes else None
        _row(
            table,
            row.module,
            row.source_layer,
            row.role,
            row.becomes,
            row.spec,
            row.evidence,
            str(row.location.line),
            style=style,
        )
    return table


def _compact_plan_table(blueprint: Blueprint) -> Table:
    table = Table(title="Modules", title_justify="left", show_lines=True)
    table.add_column("module, source layer", overflow="fold", ratio=1)
    table.add_column("becomes, spec, role: evidence", overflow="fold", ratio=1)
    table.add_column("line", no_wrap=True)
    for row in plan_rows(blueprint):
        module = Text(row.module)
        module.append(f"\n{row.source_layer}", style="dim")
        becomes = Text(row.becomes)
        if row.spec != "—":
            becomes.append(f"\nspec: {row.spec}")
        becomes.append(f"\n{row.role}: {row.evidence}", style="dim")
        style = "red" if "refused" in row.becomes else None
        table.add_row(module, becomes, Text(str(row.location.line)), style=style)
    return table


def _attention_table(blueprint: Blueprint, index: int, defaults: Any | None) -> Table:
    geometry = blueprint.attention[index]
    table = Table(title=f"Attention {geometry.path} ({geometry.owner})", title_justify="left")
    table.add_column("quantity")
    table.add_column("expression", overflow="fold")
    table.add_column("default", overflow="fold")
    for name, expr in (
        ("heads", geometry.num_heads),
        ("kv heads", geometry.num_kv_heads),
        ("head_dim", geometry.head_dim),
        ("scaling", geometry.scaling),
        ("sliding_window", geometry.sliding_window),
        ("softcap", geometry.softcap),
    ):
        if expr is not None:
            _row(table, name, str(expr), _evaluated(expr, defaults))
    for condition, projection, spec in attention_variants(geometry):
        _row(table, "variant", f"{projection}  [{spec}]", condition)
    return table


def _features_table(features: Features, defaults: Any | None) -> Table:
    table = Table(title="Features", title_justify="left")
    table.add_column("feature")
    table.add_column("value", overflow="fold")
    table.add_column("default", overflow="fold")
    for name, value in _feature_items(features):
        if isinstance(value, Expr):
            _row(table, name, str(value), _evaluated(value, defaults))
        elif isinstance(value, Scale):
            expr = value.factor
            _row(
                table,
                name,
                f"{value.applies_to} {value.op} {expr}  (line {value.location.line})",
                _evaluated(expr, defaults),
            )
        else:
            _row(table, name, str(value), "")
    return table


def _feature_items(features: Features) -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = [
        ("qkv bias", features.qkv_bias),
        ("o bias", features.o_bias),
        ("mlp bias", features.mlp_bias),
        ("mlp", features.mlp),
        ("activation", features.activation),
        ("q/k norm", features.qk_norm),
        ("norms", ", ".join(features.norm_kinds) or "none"),
        ("attention scaling", features.attention_scaling),
        ("sliding window", features.sliding_window),
        ("attention softcap", features.attention_softcap),
        ("final logit softcap", features.final_logit_softcap),
        ("partial rotary", features.partial_rotary),
        ("rotary embedding", features.rotary),
        ("embedding scale", features.embedding_scale),
        *[("residual scale", scale) for scale in features.residual_scales],
        ("logits scale", features.logits_scale),
        ("tie_word_embeddings (default)", features.tie_word_embeddings),
        ("tied weights", ", ".join(features.tied_weights_keys) or "none"),
        ("explicit head_dim in config", features.explicit_head_dim),
    ]
    return [(name, value) for name, value in items if value is not None]


def _row(table: Table, *cells: str, style: str | None = None) -> None:
    """Add a row of plain text cells: source text such as `x[layer_idx]` must not be read as markup."""
    table.add_row(*(Text(cell) for cell in cells), style=style)


def _evaluated(expr: Expr, defaults: Any | None) -> str:
    if defaults is None or expr.resolved is None:
        return ""
    if expr.variables:
        return f"per {', '.join(expr.variables)}"
    try:
        return repr(expr.evaluate(defaults))
    except Exception as error:  # a default that cannot be computed is shown, not fatal
        return f"({type(error).__name__})"


def _refusals(blueprint: Blueprint) -> Table | Text:
    if not blueprint.refusals:
        return Text("Refusals: none", style="green")
    table = Table(title=f"Refusals ({len(blueprint.refusals)})", title_justify="left", title_style="bold red")
    table.add_column("code")
    table.add_column("where")
    table.add_column("what", overflow="fold")
    for refusal in blueprint.refusals:
        _row(table, refusal.code, str(refusal.location), refusal.message, style="red")
    return table
