"""NXS011: norms over the hidden stream run on sequence shards and say so on their weights.

Under sequence parallelism a hidden-stream norm sees `(S/T, B, D)`: its math is unchanged, but each rank
computes only part of its weight gradient, so the weight carries `sequence_parallel_enabled` and NxD
all-reduces that gradient over the TP group. The norm class takes the flag (default off) and marks every
parameter it creates; each hidden-scope construction passes `trn_config.sequence_parallel_enabled`.
Per-head norms (q/k norms) act after the projections, on full sequences and local heads, so they keep
the default (the sum of their partial gradients over the ranks' heads is NXS021's, with the attention).
A torch `LayerNorm` becomes NxD's, which takes the same flag; other torch norms over the hidden stream
are refused in analysis (R020). A local subclass of a torch norm with its own forward (a weight-plus-one
LayerNorm) creates no parameter itself: it marks every parameter its base created, after the base's
`__init__`. The optional linears of the class that loops over the layers (`if c: self.project_in =
nn.Linear(...)` / `else: ... = None`, left replicated) run on the sequence-sharded stream as well: their
parameters carry the flag too, as do the replicated linears of a head transform (the causal LM's
dense + activation + norm before the vocabulary projection, which gathers the sequence itself). The inserted code comes from templates/code/sequence_parallel_norms.py.
"""

from __future__ import annotations

import libcst as cst

from ..blueprint import Blueprint, LayerKind, NormScope, NormSite, Role
from ..syntax import (
    assigned_self_attribute,
    code,
    find_method,
    rewrite_assigned_call,
    with_arguments,
    with_method,
    with_statements_after,
)
from . import templates
from .base import Rule, stored_example, with_todo

FLAG = "sequence_parallel_enabled"
PARAMETER_CONSTRUCTOR = "torch.nn.Parameter"
TORCH_TO_NXD_NORMS = {
    "torch.nn.LayerNorm": ("neuronx_distributed.parallel_layers.layer_norm", "LayerNorm"),
}
TEMPLATES = "sequence_parallel_norms"


def hidden_norms(blueprint: Blueprint) -> list[NormSite]:
    """Norm sites over the hidden stream."""
    return [norm for norm in blueprint.norms if norm.scope is NormScope.HIDDEN]


def norm_parameters(blueprint: Blueprint, norm_class: str) -> list[str]:
    """Attributes of a local norm class that hold `nn.Parameter`s."""
    try:
        plan = blueprint.class_plan(norm_class)
    except KeyError:
        return []
    return [attribute for attribute, constructor in plan.children if constructor == PARAMETER_CONSTRUCTOR]


def inherits_norm_parameters(blueprint: Blueprint, norm_class: str) -> bool:
    """Whether a local norm class gets its parameters from the torch norm it subclasses (a `nn.LayerNorm`
    subclass with its own forward, like a weight-plus-one form) rather than creating them itself."""
    try:
        plan = blueprint.class_plan(norm_class)
    except KeyError:
        return False
    return plan.torch_norm_base is not None and not norm_parameters(blueprint, norm_class)


def has_sequence_parallel_form(blueprint: Blueprint, norm: NormSite) -> bool | None:
    """Whether the rule can flag a hidden-stream norm: a local norm with parameters (its own or its torch
    base's) or a torch norm with an NxD counterpart (True); a local norm without parameters, which has no
    gradient to sum (None); a torch norm without a counterpart (False: refused in analysis, R020)."""
    if (
        norm.norm_class in TORCH_TO_NXD_NORMS
        or norm_parameters(blueprint, norm.norm_class)
        or inherits_norm_parameters(blueprint, norm.norm_class)
    ):
        return True
    return False if "." in norm.norm_class else None


class SequenceParallelNorms(Rule):
    CODE = "NXS011"
    NAME = "sequence-parallel-norms"
    SUMMARY = (
        "hidden-stream norms take sequence_parallel_enabled and mark their weights; per-head norms do not"
    )
    ADVICE = (
        "A torch norm without an NxD counterpart is refused (R020). Disable the rule only for models trained "
        "without sequence parallelism."
    )
    REQUIRES = ("NXS004",)
    EXAMPLES = (
        stored_example(CODE, "qwen3", "Qwen3RMSNorm"),
        stored_example(CODE, "qwen3", "Qwen3DecoderLayer"),
    )

    def visit_Module(self, node: cst.Module) -> None:
        self._shadowing: set[str] = set()  # torch norms the source imports under the NxD norm's name

    def visit_FunctionDef(self, node: cst.FunctionDef) -> bool:
        return False  # the rule rewrites whole classes: nothing to visit inside a method

    def leave_Module(self, original_node: cst.Module, updated_node: cst.Module) -> cst.Module:
        """A source that imports the torch norm by its bare name (`from torch.nn import LayerNorm`) would
        shadow the NxD norm the constructions now name: that import goes."""
        if not self._shadowing:
            return updated_node
        body: list[cst.BaseStatement] = []
        for statement in updated_node.body:
            small = statement.body[0] if isinstance(statement, cst.SimpleStatementLine) else None
            if (
                isinstance(small, cst.ImportFrom)
                and small.module is not None
                and code(small.module) == "torch.nn"
                and not isinstance(small.names, cst.ImportStar)
            ):
                kept = [a for a in small.names if a.asname is not None or code(a.name) not in self._shadowing]
                if not kept:
                    continue
                if len(kept) != len(small.names):
                    kept[-1] = kept[-1].with_changes(comma=cst.MaybeSentinel.DEFAULT)
                    statement = statement.with_changes(body=[small.with_changes(names=kept)])  # type: ignore[union-attr]
            body.append(statement)
        return updated_node.with_changes(body=body)

    def leave_ClassDef(self, original_node: cst.ClassDef, updated_node: cst.ClassDef) -> cst.ClassDef:
        name = updated_node.name.value
        norms = hidden_norms(self.blueprint)
        built_here = [
            norm for norm in norms if norm.owner == name and has_sequence_parallel_form(self.blueprint, norm)
        ]
        is_norm_class = any(norm.norm_class == name for norm in norms) and (
            norm_parameters(self.blueprint, name) or inherits_norm_parameters(self.blueprint, name)
        )
        optional = self._stream_optional_linears(name)
        if not built_here and not is_norm_class and not optional:
            return updated_node
        refusal = self.refusal_for(name)
        if refusal is not None:
            return with_todo(updated_node, refusal)
        if is_norm_class:
            updated_node = self._flag_norm_class(
                updated_node,
                norm_parameters(self.blueprint, name),
                inherited=inherits_norm_parameters(self.blueprint, name),
            )
        if built_here or optional:
            init = find_method(updated_node, "__init__")
            assert init is not None, "checked in analysis (R017)"
            for norm in built_here:
                init = self._pass_flag(init, norm)
            init = self._mark_optional_linears(init, optional)
            updated_node = with_method(updated_node, init)
        return updated_node

    def _stream_optional_linears(self, name: str) -> tuple[str, ...]:
        """The optional linears (left replicated) of the class that loops over the layers: its forward runs
        them on the sequence-sharded stream (OPT's `project_in`/`project_out`), like its norms; and the
        replicated linears of a head transform (applied by the causal LM to the hidden stream before the
        vocabulary projection, which gathers the sequence itself)."""
        backbone = self.blueprint.backbone
        head = tuple(
            site.attribute
            for site in self.blueprint.sites
            if site.owner == name
            and site.kind is LayerKind.LINEAR
            and site.role is Role.REPLICATED
            and site.path.partition(".")[0] in backbone.head_transforms
        )
        if name != backbone.stack_class:
            return tuple(dict.fromkeys(head))
        try:
            return tuple(dict.fromkeys(self.blueprint.class_plan(name).optional_linears + head))
        except KeyError:
            return tuple(dict.fromkeys(head))

    def _mark_optional_linears(self, init: cst.FunctionDef, attributes: tuple[str, ...]) -> cst.FunctionDef:
        """After each `self.<attribute> = <linear>`: its parameters carry the flag, so that NxD sums their
        partial gradients over the TP group under sequence parallelism."""
        if not attributes:
            return init
        style = self.blueprint.style
        flag, needed = templates.fill_expression(TEMPLATES, "flag_argument", style)
        self.add_template_imports(needed)

        def marked(statement: cst.BaseStatement) -> list[cst.BaseStatement]:
            attribute = assigned_self_attribute(statement)
            if attribute not in attributes or _assigns_none(statement):
                return []
            module = cst.Attribute(value=cst.Name("self"), attr=cst.Name(attribute))
            statements, _ = templates.fill_statements(
                TEMPLATES, "linear_marked", style, module=module, flag=flag.deep_clone()
            )
            return statements

        return with_statements_after(init, marked)

    def _pass_flag(self, init: cst.FunctionDef, norm: NormSite) -> cst.FunctionDef:
        replacement = TORCH_TO_NXD_NORMS.get(norm.norm_class)
        if replacement is not None:
            self.add_needed_import(*replacement)
            if norm.norm_class.rsplit(".", 1)[-1] == replacement[1]:
                self._shadowing.add(replacement[1])
        flag, needed = templates.fill_expression(TEMPLATES, "flag_argument", self.blueprint.style)
        self.add_template_imports(needed)

        def flagged(call: cst.Call) -> cst.BaseExpression:
            if replacement is not None:
                call = call.with_changes(func=cst.Name(replacement[1]))
            return with_arguments(call, add=[(FLAG, flag.deep_clone())])

        class_name = norm.norm_class.rpartition(".")[2]

        def is_norm(call: cst.Call) -> bool:  # the arm of an optional norm that builds it
            func = call.func
            name = func.attr.value if isinstance(func, cst.Attribute) else getattr(func, "value", None)
            return name == class_name

        result, _ = rewrite_assigned_call(
            init, norm.attribute, flagged, arm=is_norm
        )  # built here: checked in analysis (R017)
        return result

    def _flag_norm_class(self, cls: cst.ClassDef, parameters: list[str], inherited: bool) -> cst.ClassDef:
        """Add the flag parameter to the norm class and mark its parameters: after each one it creates, or
        (`inherited`) all of them after its torch base's `__init__`."""
        init = find_method(cls, "__init__")
        assert init is not None, "checked in analysis (R017)"
        if any(param.name.value == FLAG for param in init.params.params):
            return cls
        (new,), _ = templates.fill_parameters(TEMPLATES, "sequence_parallel_parameter", self.blueprint.style)
        params = list(init.params.params)
        if params and isinstance(params[-1].comma, cst.MaybeSentinel):
            params[-1] = params[-1].with_changes(comma=cst.Comma(whitespace_after=cst.SimpleWhitespace(" ")))
        elif params:
            new = new.with_changes(comma=params[-1].comma)
        params.append(new)
        init = init.with_changes(params=init.params.with_changes(params=params))
        style = self.blueprint.style

        def marked(statement: cst.BaseStatement) -> list[cst.BaseStatement]:
            attribute = assigned_self_attribute(statement)
            if attribute in parameters:
                weight = cst.Attribute(value=cst.Name("self"), attr=cst.Name(attribute))
                return templates.fill_statements(TEMPLATES, "weight_marked", style, weight=weight)[0]
            if inherited and _is_super_init(statement):
                return templates.fill_statements(
                    TEMPLATES, "parameters_marked", style, module=cst.Name("self")
                )[0]
            return []

        # creates a parameter directly: checked in analysis (R017)
        return with_method(cls, with_statements_after(init, marked))


def _is_super_init(statement: cst.BaseStatement) -> bool:
    """`super().__init__(...)` (or `super(Cls, self).__init__(...)`) as a statement of its own."""
    if not isinstance(statement, cst.SimpleStatementLine) or len(statement.body) != 1:
        return False
    expression = statement.body[0]
    if not isinstance(expression, cst.Expr) or not isinstance(expression.value, cst.Call):
        return False
    func = expression.value.func
    return (
        isinstance(func, cst.Attribute)
        and func.attr.value == "__init__"
        and isinstance(func.value, cst.Call)
        and isinstance(func.value.func, cst.Name)
        and func.value.func.value == "super"
    )


def _assigns_none(statement: cst.BaseStatement) -> bool:
    """`self.<attribute> = None`: the arm of an optional layer that builds nothing."""
    if not isinstance(statement, cst.SimpleStatementLine) or len(statement.body) != 1:
        return False
    small = statement.body[0]
    return isinstance(small, cst.Assign) and isinstance(small.value, cst.Name) and small.value.value == "None"
