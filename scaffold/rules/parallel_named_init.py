"""NXS016 parallel-named-init: a re-draw by parameter name in the source's `_init_weights` becomes the
`init_method` std of the parallel layers it names.

A source may re-draw some weights by name after the per-module init (GPT-2: every `c_proj.weight` from
N(0, (initializer_range / sqrt(2 * n_layer))^2)). Once those layers are NxD parallel linears, the loop
would re-draw each rank's shard from that rank's random stream: a seeded model would then depend on the
tensor-parallel size (and the shifted stream change every later draw). NxD's layers draw their weight
from `init_method` on the full tensor and hand each rank its slice, so the std moves there: each
`self.<attribute> = ColumnParallelLinear(...)` / `RowParallelLinear(...)` the loop names takes
`init_method=partial(_init_normal, <std>)`, the std read with the constructor's config parameter for
`self.config`, and the loop goes. A loop that also names a layer that is no parallel linear stays as the
source writes it (and so does one of another shape: `scaffold.analysis.named_redraws`).

The same re-draw per class (GPTBigCode: `if isinstance(module, (MLP, Attention)):
module.c_proj.weight.data.normal_(...)`) moves the std to that layer of those classes only, where each
builds it as a parallel linear; the re-draw statement goes, the rest of the branch stays.
"""

from __future__ import annotations

import libcst as cst

from ..analysis.named_redraws import ClassRedraw, NamedRedraw, class_redraws, named_redraws, self_config_to
from ..blueprint import ClassKind
from ..syntax import dotted, find_method, self_attribute, with_leading_comment
from . import layer_code, templates
from .base import Rule, stored_example

PARALLEL_LINEARS = frozenset({"ColumnParallelLinear", "RowParallelLinear"})
COMMENT = "# the std of _init_weights' re-draw of {name} (NxD draws the full weight, then slices it)"


class ParallelNamedInit(Rule):
    CODE = "NXS016"
    NAME = "parallel-named-init"
    SUMMARY = (
        "a re-draw by name or by module class in _init_weights (GPT-2's, GPTBigCode's scaled c_proj) becomes "
        "those parallel layers' init_method std"
    )
    ADVICE = (
        "A re-draw whose std is no constant expression of the config, or that also names layers that are not "
        "parallel linears (by class: a branch `isinstance(module, classes)` first in _init_weights, holding only "
        "the re-draw and `_is_hf_initialized` marks), stays in _init_weights (it then draws each rank's shard "
        "from the rank's own stream). "
        "Disable it to keep the source's loop."
    )
    EXAMPLES = (
        stored_example(CODE, "gpt2", "GPT2MLP"),
        stored_example(CODE, "gpt2", "GPT2PreTrainedModel"),
        stored_example(CODE, "gpt_bigcode", "GPTBigCodePreTrainedModel"),
    )

    def visit_Module(self, node: cst.Module) -> None:
        # (class, attribute) -> the std (source terms); class None: every class building the attribute
        self._std: dict[tuple[str | None, str], cst.BaseExpression] = {}
        self._drop: list[cst.For] = []
        self._drop_statements: list[cst.SimpleStatementLine] = []
        self._classes: list[str] = []
        self._in_init: list[bool] = []
        built = _built_attributes(node)
        modules = _imported_modules(node)
        for statement in node.body:
            if not isinstance(statement, cst.ClassDef) or not self._pretrained(statement.name.value):
                continue
            method = find_method(statement, "_init_weights")
            for redraw in named_redraws(method, modules) if method is not None else ():
                named = _named(redraw, built)
                if named and all(built[attribute] for attribute in named):
                    self._std.update(dict.fromkeys(((None, name) for name in named), redraw.std))
                    self._drop.append(redraw.loop)
            for by_class in class_redraws(method, modules) if method is not None else ():
                if _built_by_every_class(node, by_class):
                    self._std.update({(cls, by_class.attribute): by_class.std for cls in by_class.classes})
                    self._drop_statements.append(by_class.statement)

    def _pretrained(self, name: str) -> bool:
        return any(plan.name == name and plan.kind is ClassKind.PRETRAINED for plan in self.blueprint.classes)

    def visit_ClassDef(self, node: cst.ClassDef) -> None:
        self._classes.append(node.name.value)

    def leave_ClassDef(self, original_node: cst.ClassDef, updated_node: cst.ClassDef) -> cst.ClassDef:
        self._classes.pop()
        return updated_node

    def visit_FunctionDef(self, node: cst.FunctionDef) -> bool:
        self._in_init.append(node.name.value == "__init__" and bool(self._classes))
        return self._in_init[-1] or node.name.value == "_init_weights"

    def leave_FunctionDef(
        self, original_node: cst.FunctionDef, updated_node: cst.FunctionDef
    ) -> cst.FunctionDef:
        self._in_init.pop()
        return updated_node

    def leave_For(self, original_node: cst.For, updated_node: cst.For) -> cst.For | cst.RemovalSentinel:
        return cst.RemoveFromParent() if any(original_node is loop for loop in self._drop) else updated_node

    def leave_IndentedBlock(
        self, original_node: cst.IndentedBlock, updated_node: cst.IndentedBlock
    ) -> cst.IndentedBlock:
        if updated_node.body or not original_node.body:
            return updated_node
        return updated_node.with_changes(body=[cst.SimpleStatementLine(body=[cst.Pass()])])

    def leave_SimpleStatementLine(
        self, original_node: cst.SimpleStatementLine, updated_node: cst.SimpleStatementLine
    ) -> cst.BaseStatement | cst.RemovalSentinel:
        if any(original_node is statement for statement in self._drop_statements):
            return cst.RemoveFromParent()
        if not self._in_init or not self._in_init[-1] or len(updated_node.body) != 1:
            return updated_node
        assign = updated_node.body[0]
        if not isinstance(assign, cst.Assign) or len(assign.targets) != 1:
            return updated_node
        attribute = self_attribute(assign.targets[0].target)
        call = assign.value
        std = self._std.get((self._classes[-1], attribute or "")) or self._std.get((None, attribute or ""))
        if std is None or not _parallel_call(call):
            return updated_node
        assert isinstance(call, cst.Call)
        config = self._config_of(self._classes[-1])
        value, needed = templates.fill_expression(
            layer_code.LAYERS,
            layer_code.INIT_METHOD,
            self.blueprint.style,
            init_std=self_config_to(std, config).with_changes(lpar=[], rpar=[]),
        )
        self.add_template_imports(needed)
        args = [
            arg.with_changes(value=value)
            if arg.keyword is not None and arg.keyword.value == "init_method"
            else arg
            for arg in call.args
        ]
        line = updated_node.with_changes(body=[assign.with_changes(value=call.with_changes(args=args))])
        return with_leading_comment(line, COMMENT.format(name=f"{attribute}.weight"))

    def _config_of(self, name: str) -> str:
        try:
            return self.config_parameter(name)
        except KeyError:
            return "config"


def _parallel_call(value: cst.BaseExpression) -> bool:
    """A parallel linear built with an `init_method=` keyword."""
    return (
        isinstance(value, cst.Call)
        and dotted(value.func) in PARALLEL_LINEARS
        and any(arg.keyword is not None and arg.keyword.value == "init_method" for arg in value.args)
    )


def _built_by_every_class(module: cst.Module, redraw: ClassRedraw) -> bool:
    """Whether every class the re-draw names is in the file and builds its layer as a parallel linear."""
    for name in redraw.classes:
        built = _built_attributes(module, name)
        if not built.get(redraw.attribute, False):
            return False
    return True


def _built_attributes(module: cst.Module, only: str | None = None) -> dict[str, bool]:
    """Every `self.<attribute> = ...` of the file's constructors (of class `only`, if given): whether each
    is a parallel linear (all its assignments are)."""
    built: dict[str, bool] = {}
    for statement in module.body:
        if not isinstance(statement, cst.ClassDef) or (only is not None and statement.name.value != only):
            continue
        init = find_method(statement, "__init__")
        if init is None:
            continue

        class Visitor(cst.CSTVisitor):
            def visit_Assign(self, node: cst.Assign) -> None:
                for target in node.targets:
                    attribute = self_attribute(target.target)
                    if attribute is not None:
                        built[attribute] = built.get(attribute, True) and _parallel_call(node.value)

            def visit_AnnAssign(self, node: cst.AnnAssign) -> None:
                attribute = self_attribute(node.target)
                if attribute is not None:
                    built[attribute] = False

        init.visit(Visitor())
    return built


def _named(redraw: NamedRedraw, built: dict[str, bool]) -> list[str]:
    """The attributes whose weight the loop re-draws (sorted)."""
    if redraw.suffix:
        return sorted(attribute for attribute in built if attribute.endswith(redraw.attribute))
    return [redraw.attribute] if redraw.attribute in built else []


def _imported_modules(module: cst.Module) -> frozenset[str]:
    """The names the file binds by `import x` / `import x as y` at its top level."""
    names: set[str] = set()
    for statement in module.body:
        if isinstance(statement, cst.SimpleStatementLine):
            for small in statement.body:
                if isinstance(small, cst.Import):
                    for alias in small.names:
                        bound = alias.asname.name if alias.asname is not None else alias.name
                        text = dotted(bound)
                        if text is not None:
                            names.add(text.split(".")[0])
    return frozenset(names)
