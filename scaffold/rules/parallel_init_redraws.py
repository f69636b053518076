"""NXS015 parallel-init-redraws: a re-draw of a tensor-parallel layer's weight in `_init_weights` draws the
full weight, so a seeded model is the same at every tensor-parallel size.

transformers' `_init_weights` may draw a layer's weight again after its constructor: by child attribute
(ModernBERT's `init_weight(module.Wo, std)` under `isinstance(module, <Block>)`), or by parameter name
(GPT-2's `for name, p in module.named_parameters(): if name == "c_proj.weight": p.data.normal_(...)`).
Once that layer is an NxD parallel layer, each rank would draw its slice from its own random stream: the
model would depend on the tensor-parallel size, and the shifted stream every later draw. NxD's layers draw
one full master weight on every rank and keep the rank's slice (`init_method`); the rule does the same for
the source's re-draw, whatever its law or std (read where the source computes it, at run time):

- a statement of `_init_weights` naming `<module>.<attribute>` where some constructor of the file builds
  `self.<attribute>` as a parallel layer runs in `with full_weights(<module>.<attribute>, ...)`;
- the branch of a `named_parameters()` loop that re-draws its parameter runs in
  `with full_parameter(p) as p` (the whole loop body where it has no single branch);
- a statement naming a linear the source splits into parts (NXS027: `init_weight(module.Wi, std)`) is
  repeated for every layer the generated module holds in its place (the parts, or the layer the rules
  fused them into), guarded by `hasattr`, each drawn the same way: each part gets the law the whole
  source linear had.

The helpers (templates/definitions/parallel_redraws.py, inserted once per file) hand the block a master of
the full shape and write back this rank's slice of what the block wrote (NxD's `create_local_weight` via the
host's `create_local_weight_with_padding`); a layer with no tensor-parallel parameter, or on `meta`, is
drawn as it is. A branch on the layer's own class (`isinstance(module, nn.Linear)`) never reaches a
parallel layer (it is no nn.Linear): its draw is the parallel layer's `init_method`, which the layer rules
give the same law. The inserted code comes from templates/code/parallel_init_redraws.py.
"""

from __future__ import annotations

import libcst as cst
import libcst.matchers as m

from ..blueprint import Blueprint, ClassKind
from ..syntax import dotted, find_method, self_attribute, walk, with_method
from . import templates
from .attention_variants import FUSED_NAME as FUSED_QKV
from .base import Rule, stored_example
from .fused_gate_up import FUSED_NAME as FUSED_GATE_UP

TEMPLATES = "parallel_init_redraws"
DEFINITIONS = "parallel_redraws"
PARALLEL_LAYERS = frozenset(
    {"ColumnParallelLinear", "RowParallelLinear", "ParallelEmbedding", "GQAQKVColumnParallelLinear"}
)
CONSTANT_WRITES = frozenset({"zero_", "fill_", "zeros_", "ones_", "constant_"})
FUSED_CHECKPOINT_RULES = frozenset({"NXS027", "NXS004"})  # NXS027 (and what it requires) splits them


class ParallelInitRedraws(Rule):
    CODE = "NXS015"
    NAME = "parallel-init-redraws"
    SUMMARY = (
        "a re-draw of a parallel layer's weight in _init_weights (by child attribute or parameter name) draws "
        "the full weight and keeps each rank's slice"
    )
    ADVICE = (
        "A re-draw that reaches a parallel layer another way (through a local variable or a helper that "
        "walks children), or that reads the weight it draws over, draws each rank's slice from the rank's own "
        "stream: wrap it in `with full_weights(layer):` by hand. Disable it to keep the source's statements."
    )
    EXAMPLES = (
        stored_example(CODE, "gpt2", "GPT2PreTrainedModel"),
        stored_example(CODE, "modernbert-decoder", "ModernBertDecoderPreTrainedModel"),
    )

    def visit_Module(self, node: cst.Module) -> None:
        self._parallel = _parallel_attributes(node)
        self._held = held_layers(self.blueprint)
        self._used = False

    def visit_FunctionDef(self, node: cst.FunctionDef) -> bool:
        return False  # the rule rewrites one method of one class: nothing to visit inside a function

    def leave_ClassDef(self, original_node: cst.ClassDef, updated_node: cst.ClassDef) -> cst.ClassDef:
        if not any(
            plan.name == updated_node.name.value and plan.kind is ClassKind.PRETRAINED
            for plan in self.blueprint.classes
        ):
            return updated_node
        method = find_method(updated_node, "_init_weights")
        if method is None or len(method.params.params) < 2:
            return updated_node
        module = method.params.params[1].name.value
        rewriter = _Redraws(self, module)
        rewritten = method.visit(rewriter)
        assert isinstance(rewritten, cst.FunctionDef)
        if not rewriter.changed:
            return updated_node
        self._used = True
        return with_method(updated_node, rewritten)

    def leave_Module(self, original_node: cst.Module, updated_node: cst.Module) -> cst.Module:
        if not self._used:
            return updated_node
        statements, needed = templates.definitions(DEFINITIONS, self.blueprint.style)
        self.add_template_imports(needed)
        body = list(updated_node.body)
        first = next(i for i, s in enumerate(body) if isinstance(s, cst.ClassDef | cst.FunctionDef))
        statements[0] = statements[0].with_changes(  # type: ignore[union-attr]
            leading_lines=[cst.EmptyLine(), cst.EmptyLine()]
        )
        return updated_node.with_changes(body=[*body[:first], *statements, *body[first:]])

    def fill(self, name: str, **fields: cst.BaseExpression | cst.BaseStatement) -> cst.BaseStatement:
        """The one statement of template `name`, its imports scheduled."""
        renames = {"parameter": fields.pop("parameter")} if "parameter" in fields else None
        (statement,), needed = templates.fill_statements(
            TEMPLATES,
            name,
            self.blueprint.style,
            renames=renames,  # type: ignore[arg-type]
            **fields,  # type: ignore[arg-type]
        )
        self.add_template_imports({n for n in needed if n.module != DEFINITIONS})
        return statement


class _Redraws(cst.CSTTransformer):
    """The statements of one `_init_weights` that reach a parallel layer, run on full weights."""

    def __init__(self, rule: ParallelInitRedraws, module: str) -> None:
        super().__init__()
        self.rule = rule
        self.module = module
        self.changed = False
        self._depth = 0

    def visit_FunctionDef(self, node: cst.FunctionDef) -> bool:
        self._depth += 1
        return self._depth == 1  # a nested helper (`def init_weight(module, std)`) draws what it is passed

    def leave_FunctionDef(self, original: cst.FunctionDef, updated: cst.FunctionDef) -> cst.FunctionDef:
        self._depth -= 1
        return updated

    def leave_For(self, original: cst.For, updated: cst.For) -> cst.BaseStatement:
        parameter = _named_parameters_loop(updated)
        if parameter is None:
            return updated
        inner = updated.body.body
        if len(inner) == 1 and isinstance(inner[0], cst.If) and inner[0].orelse is None:
            branch = inner[0]
            if _constant_writes(branch.body):
                return updated
            wrapped = self._in_full(parameter, branch.body)
            body = updated.body.with_changes(body=[branch.with_changes(body=_block(wrapped))])
        elif _constant_writes(updated.body):
            return updated
        else:
            body = _block(self._in_full(parameter, updated.body))
        self.changed = True
        return updated.with_changes(body=body)

    def _in_full(self, parameter: str, suite: cst.BaseSuite) -> cst.BaseStatement:
        with_statement = self.rule.fill("redraw_parameter", parameter=parameter, body=_PLACEHOLDER)
        assert isinstance(with_statement, cst.With)
        return with_statement.with_changes(body=suite)

    def leave_SimpleStatementLine(
        self, original: cst.SimpleStatementLine, updated: cst.SimpleStatementLine
    ) -> cst.BaseStatement:
        if self._depth != 1:
            return updated
        named = _named_children(updated, self.module)
        split = [attribute for attribute in named if attribute in self.rule._held]
        layers = [attribute for attribute in dict.fromkeys(named) if attribute in self.rule._parallel]
        if split:
            return self._repointed(updated, split[0])
        if not layers or not _draws(updated):
            return updated
        self.changed = True
        statement = self.rule.fill(
            "redraw_layers",
            layer=_child(self.module, layers[0]),
            statement=updated.with_changes(leading_lines=()),
        )
        assert isinstance(statement, cst.With)
        if len(layers) > 1:
            item = statement.items[0]
            call = item.item
            assert isinstance(call, cst.Call)
            arguments = [cst.Arg(_child(self.module, attribute)) for attribute in layers]
            statement = statement.with_changes(
                items=[item.with_changes(item=call.with_changes(args=arguments))]
            )
        return statement.with_changes(leading_lines=updated.leading_lines)

    def _repointed(self, statement: cst.SimpleStatementLine, source: str) -> cst.BaseStatement:
        """The statement repeated over the layers held in place of the split source linear `source`."""
        self.changed = True
        replacement, needed = templates.fill_expression(
            TEMPLATES, "part_of", self.rule.blueprint.style, module=cst.Name(self.module)
        )
        self.rule.add_template_imports(needed)
        repointed = m.replace(
            statement,
            m.Attribute(value=m.Name(self.module), attr=m.Name(source)),
            lambda node, _: replacement.deep_clone(),
        )
        names = cst.Tuple([cst.Element(cst.SimpleString(f'"{name}"')) for name in self.rule._held[source]])
        loop = self.rule.fill(
            "init_parts",
            module=cst.Name(self.module),
            parts=names,
            statement=repointed.with_changes(leading_lines=()),  # type: ignore[union-attr]
        )
        return loop.with_changes(leading_lines=statement.leading_lines)


_PLACEHOLDER = cst.SimpleStatementLine([cst.Pass()])


def _block(statement: cst.BaseStatement) -> cst.IndentedBlock:
    return cst.IndentedBlock(body=[statement])


def _child(module: str, attribute: str) -> cst.Attribute:
    return cst.Attribute(value=cst.Name(module), attr=cst.Name(attribute))


def _named_children(statement: cst.SimpleStatementLine, module: str) -> list[str]:
    """The attributes `a` of every `<module>.a` the statement reads, in source order."""
    found: list[str] = []

    class Visitor(cst.CSTVisitor):
        def visit_Attribute(self, node: cst.Attribute) -> None:
            if isinstance(node.value, cst.Name) and node.value.value == module:
                found.append(node.attr.value)

    statement.visit(Visitor())
    return found


def _draws(statement: cst.SimpleStatementLine) -> bool:
    """The statement calls something that may draw (an assignment such as GPTBigCode's
    `module.c_proj._is_hf_initialized = True`, or a constant write, draws nothing)."""
    return any(isinstance(node, cst.Call) for node in walk(statement)) and not _constant_writes(statement)


def _constant_writes(node: cst.CSTNode) -> bool:
    """Every call of `node` writes a constant (`zero_()`, `fill_(1.0)`, `nn.init.zeros_`): each rank's slice
    of a constant is the constant's slice, so the statement needs no full weight."""
    calls = [found for found in walk(node) if isinstance(found, cst.Call)]
    return bool(calls) and all(
        (dotted(call.func) or "").rpartition(".")[2] in CONSTANT_WRITES for call in calls
    )


def _named_parameters_loop(loop: cst.For) -> str | None:
    """The parameter variable of `for name, p in <x>.named_parameters(...)`, else None."""
    if not m.matches(
        loop,
        m.For(
            target=m.Tuple([m.Element(m.Name()), m.Element(m.Name())]),
            iter=m.Call(func=m.Attribute(attr=m.Name("named_parameters"))),
        ),
    ):
        return None
    return loop.target.elements[1].value.value  # type: ignore[attr-defined]


def _parallel_attributes(module: cst.Module) -> frozenset[str]:
    """Every attribute some constructor of the file builds as an NxD parallel layer (`self.a = Layer(...)`)."""
    found: set[str] = set()

    class Visitor(cst.CSTVisitor):
        def visit_Assign(self, node: cst.Assign) -> None:
            if isinstance(node.value, cst.Call) and dotted(node.value.func) in PARALLEL_LAYERS:
                for target in node.targets:
                    attribute = self_attribute(target.target)
                    if attribute is not None:
                        found.add(attribute)

    for statement in module.body:
        if isinstance(statement, cst.ClassDef):
            init = find_method(statement, "__init__")
            if init is not None:
                init.visit(Visitor())
    return frozenset(found)


def held_layers(blueprint: Blueprint) -> dict[str, tuple[str, ...]]:
    """Per linear the source splits into parts (and the analysis converts), the layers a generated module
    holds in its place: the parts, then the layer NXS020 or NXS021 fuses them into again."""
    refused = {r.subject for r in blueprint.refusals if FUSED_CHECKPOINT_RULES & set(r.rules)}
    held: dict[str, tuple[str, ...]] = {}
    for fusion in blueprint.fusions:
        if len(fusion.part_names) < 2 or fusion.owner in refused:
            continue
        names = list(fusion.part_names)
        if any(b.owner == fusion.owner and b.gate in fusion.part_names for b in blueprint.mlps):
            names.append(FUSED_GATE_UP)
        if any(g.owner == fusion.owner and g.q in fusion.part_names for g in blueprint.attention):
            names.append(FUSED_QKV)
        known = held.get(fusion.source_name, ())
        held[fusion.source_name] = tuple(dict.fromkeys([*known, *names]))
    return held
