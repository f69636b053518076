"""NXS026 tensor-parallel-attention-norms: q/k norms whose weight runs over the heads are sharded with them.

Two kinds of norm of a query or key projection hold one weight entry per column of that projection, so
under tensor parallelism each rank keeps only its heads' part (analysis tells them apart, `NormScope`):

- a full-width norm (`FULL_WIDTH`, olmo2's `q_norm = RMSNorm(num_heads * head_dim)` applied before the
  split into heads) reduces over every column: it becomes the package's `ColumnParallelRMSNorm`, whose
  statistics are summed over the TP group and whose weight holds the rank's columns;
- a per-head norm with one weight row per head (`HEAD_ROWS`, cohere's `LayerNorm((num_heads, head_dim))`)
  normalises each head alone: it keeps its class, and `shard_by_head` keeps the rank's rows; a class holding
  one norm per head (stablelm's `StableLmLayerNormPerHead`, kind "per_head_list") keeps the rank's norms,
  and a `HeadModulesSpec` renumbers their checkpoint entries (whatever the projection variant).

A key norm counts NxD's replicated K/V heads (`replicas=self.kv_size_multiplier`): its replicated entries
sum their gradients over the kv-shared group. Under NxD's GQA layer the rank's heads are not a contiguous
block of the checkpoint's, so the norm's parameters get a `HeadRowsSpec` there (its own specs otherwise
shard them along dim 0 like a column-parallel bias). Neither needs the sequence-parallel mark: after the
projections every rank holds the full sequence and its own columns. The code comes from
templates/code/attention_norms.py; the package carries tensor_parallel_norms.py and
attention_norm_weights.py (templates/modules). Other full-width norms stay refused (R004).
"""

from __future__ import annotations

import libcst as cst

from ..blueprint import AttentionGeometry, NormScope, NormSite
from ..syntax import (
    assigned_self_attribute,
    find_method,
    rewrite_assigned_call,
    with_method,
    with_statements_after,
)
from . import templates
from .base import Rule, stored_example, with_todo

TEMPLATES = "attention_norms"
PER_HEAD_LIST = "per_head_list"  # the norm kind of a class holding one norm per head (analysis)
SHARDED_SCOPES = (NormScope.FULL_WIDTH, NormScope.HEAD_ROWS)


class AttentionNorms(Rule):
    CODE = "NXS026"
    NAME = "tensor-parallel-attention-norms"
    SUMMARY = "full-width q/k norms -> ColumnParallelRMSNorm; q/k norms with a row per head sharded by head"
    ADVICE = (
        "A full-width norm that is not an RMS norm of one query or key projection is refused (R004), and so "
        "is a per-head weight of another shape (R015). Disabling it leaves such norms replicated over full "
        "widths the ranks do not hold: the model then fails at its first forward."
    )
    REQUIRES = ("NXS004", "NXS021")
    EXAMPLES = (
        stored_example(CODE, "olmo2", "Olmo2Attention"),
        stored_example(CODE, "cohere", "CohereAttention"),
    )

    def visit_FunctionDef(self, node: cst.FunctionDef) -> bool:
        return False  # the rule rewrites whole classes: nothing to visit inside a method

    def _norms(self, owner: str) -> list[tuple[NormSite, AttentionGeometry, str]]:
        """The owner's sharded norms with their attention and projection ("query" or "key")."""
        found = []
        for norm in self.blueprint.norms:
            if norm.owner != owner or norm.scope not in SHARDED_SCOPES:
                continue
            for geometry in self.blueprint.attention:
                if geometry.path == norm.path.rpartition(".")[0] and norm.normalises in (
                    (geometry.q,),
                    (geometry.k,),
                ):
                    found.append((norm, geometry, "query" if norm.normalises == (geometry.q,) else "key"))
        return found

    def leave_ClassDef(self, original_node: cst.ClassDef, updated_node: cst.ClassDef) -> cst.ClassDef:
        norms = self._norms(updated_node.name.value)
        if not norms:
            return updated_node
        refusal = self.refusal_for(updated_node.name.value)
        if refusal is not None:
            return with_todo(updated_node, refusal)
        init = find_method(updated_node, "__init__")
        assert init is not None, "checked in analysis (R017)"
        for norm, geometry, projection in norms:
            init = self._convert(init, norm, geometry, projection)
        return with_method(updated_node, init)

    def _convert(
        self, init: cst.FunctionDef, norm: NormSite, geometry: AttentionGeometry, projection: str
    ) -> cst.FunctionDef:
        style = self.blueprint.style
        replicas = cst.parse_expression("self.kv_size_multiplier" if projection == "key" else "1")
        if norm.scope is NormScope.FULL_WIDTH:
            assert norm.eps is not None, "checked in analysis (R004)"
            call, needed = templates.fill_expression(
                TEMPLATES,
                "full_width_norm",
                style,
                width=cst.parse_expression(norm.width.source),
                eps=cst.parse_expression(norm.eps.source),
                replicas=replicas,
            )
            self.add_template_imports(needed)
            if projection == "query":  # one copy of each query column: the default
                assert isinstance(call, cst.Call)
                call = _without_last_argument(call)
            init, _ = rewrite_assigned_call(init, norm.attribute, lambda _: call.deep_clone())
        attribute = cst.Attribute(value=cst.Name("self"), attr=cst.Name(norm.attribute))
        after: list[cst.BaseStatement] = []
        if norm.scope is NormScope.HEAD_ROWS and norm.kind == PER_HEAD_LIST:
            heads = geometry.num_heads if projection == "query" else geometry.num_kv_heads
            statements, needed = templates.fill_statements(
                TEMPLATES,
                "head_modules",
                style,
                norm=attribute,
                prefix=cst.SimpleString(f'"{norm.attribute}."'),
                heads=cst.parse_expression(heads.source),
                replicas=replicas,
                projection=cst.SimpleString(f'"{projection}"'),
                q_heads=cst.parse_expression(geometry.num_heads.source),
                kv_heads=cst.parse_expression(geometry.num_kv_heads.source),
            )
            self.add_template_imports(needed)
            return _insert_after_assignment(init, norm.attribute, statements)
        if norm.scope is NormScope.HEAD_ROWS:
            heads = geometry.num_heads if projection == "query" else geometry.num_kv_heads
            statements, needed = templates.fill_statements(
                TEMPLATES,
                "head_rows",
                style,
                norm=attribute,
                heads=cst.parse_expression(heads.source),
                replicas=replicas,
            )
            if projection == "query":
                statements = [_statement_without_last_argument(statement) for statement in statements]
            self.add_template_imports(needed)
            after += statements
        statements, needed = templates.fill_statements(
            TEMPLATES,
            "gqa_spec",
            style,
            norm=attribute,
            prefix=cst.SimpleString(f'"{norm.attribute}."'),
            projection=cst.SimpleString(f'"{projection}"'),
            heads=cst.parse_expression(geometry.num_heads.source),
            kv_heads=cst.parse_expression(geometry.num_kv_heads.source),
        )
        self.add_template_imports(needed)
        after += statements
        return _insert_after_assignment(init, norm.attribute, after)


def _without_last_argument(call: cst.Call) -> cst.Call:
    """`f(a, b, replicas=1)` -> `f(a, b)`."""
    args = list(call.args[:-1])
    args[-1] = args[-1].with_changes(comma=cst.MaybeSentinel.DEFAULT)
    return call.with_changes(args=args)


def _statement_without_last_argument(statement: cst.BaseStatement) -> cst.BaseStatement:
    """`_without_last_argument` of a statement line holding one call."""
    assert isinstance(statement, cst.SimpleStatementLine)
    expression = statement.body[0]
    assert isinstance(expression, cst.Expr) and isinstance(expression.value, cst.Call)
    return statement.with_changes(
        body=[expression.with_changes(value=_without_last_argument(expression.value))]
    )


def _insert_after_assignment(
    init: cst.FunctionDef, attribute: str, statements: list[cst.BaseStatement]
) -> cst.FunctionDef:
    """`init` with `statements` right after the assignment of `self.<attribute>`, in whatever block it is."""

    return with_statements_after(
        init,
        lambda statement: (
            [inserted.deep_clone() for inserted in statements]
            if assigned_self_attribute(statement) == attribute
            else []
        ),
    )
