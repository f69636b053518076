"""NXS004: thread `trn_config: TrainingNeuronConfig` through every constructor that needs it.

A closure class needs it when it builds a parallel layer (a layer site with a column, row, embedding or
lm-head role), builds a norm over the hidden stream (the sequence-parallel flag comes from it), is one of
the two models (they take `(config, trn_config)`), or builds an instance of a class that needs it. Such a
constructor gets the parameter right after `config`, stores it as `self.trn_config` after the parent
constructor runs, and passes it on to the children that need it, in the position or keyword style the
call already uses for `config`. Later rules rely on this: `trn_config` in `__init__`, `self.trn_config`
in `forward`.

A constructor that takes its sizes instead of the config (`Attention(embed_dim, num_heads)`) gets both
parameters first, `(self, config, trn_config, embed_dim, num_heads)`, when every call of it is in the
constructor of a class that holds a config (or gets one so): the callers pass theirs.
"""

from __future__ import annotations

import libcst as cst

from ..blueprint import Blueprint, NormScope, Role
from ..syntax import code, dotted, find_method, insert_after_super_init, walk
from . import templates
from .base import Rule, stored_example, with_todo

TRN_CONFIG = "trn_config"
TEMPLATES = "trn_config_threading"
PARALLEL_ROLES = frozenset({Role.COLUMN, Role.ROW, Role.EMBEDDING, Role.LM_HEAD})


def classes_needing_trn_config(blueprint: Blueprint) -> frozenset[str]:
    """Closure classes whose constructor must take `trn_config` (see the module docstring)."""
    closure = {plan.name for plan in blueprint.classes}
    needing = {site.owner for site in blueprint.sites if site.role in PARALLEL_ROLES}
    needing |= {norm.owner for norm in blueprint.norms if norm.scope is NormScope.HIDDEN}
    needing |= {blueprint.base_model_class, blueprint.causal_lm_class}
    needing |= {block.owner for block in blueprint.moe}  # NXS040's MoE takes it (packed experts: no site)
    needing &= closure
    changed = True
    while changed:
        changed = False
        for plan in blueprint.classes:
            if plan.name not in needing and any(child in needing for _, child in plan.children):
                needing.add(plan.name)
                changed = True
    return frozenset(needing)


CONFIG = "config"


def config_can_be_added(module: cst.Module, name: str, needing: frozenset[str]) -> bool:
    """Whether class `name`, which takes no config, can take one from its callers: it defines `__init__`
    without a `config` name or `*args`, and every call of it is in the `__init__` of a class in `needing`
    (which holds a config, or gets one the same way)."""
    classes = {
        statement.name.value: statement for statement in module.body if isinstance(statement, cst.ClassDef)
    }
    init = find_method(classes[name], "__init__") if name in classes else None
    if (
        init is None
        or isinstance(init.params.star_arg, cst.Param)
        or CONFIG
        in {
            param.name.value
            for param in (*init.params.posonly_params, *init.params.params, *init.params.kwonly_params)
        }
    ):
        return False
    calls = 0
    for owner, node in classes.items():
        for method in node.body.body:
            if not isinstance(method, cst.FunctionDef):
                continue
            built = sum(
                1 for call in walk(method) if isinstance(call, cst.Call) and dotted(call.func) == name
            )
            if built and (method.name.value != "__init__" or owner not in needing):
                return False
            calls += built
    functions = [statement for statement in module.body if isinstance(statement, cst.FunctionDef)]
    if any(
        isinstance(call, cst.Call) and dotted(call.func) == name
        for function in functions
        for call in walk(function)
    ):
        return False
    return calls > 0


def _positional_names(init: cst.FunctionDef) -> list[str]:
    """The names positional arguments bind, `self` left out."""
    return [param.name.value for param in (*init.params.posonly_params, *init.params.params)][1:]


def _passed_config(call: cst.Call, positions: list[str], config: str) -> cst.Arg | None:
    """The argument of `call` that binds parameter `config` (by keyword, or by position in `positions`);
    None where none does, a `*`/`**` argument might, or it passes `None`."""
    if any(arg.star for arg in call.args):
        return None
    found = None
    positional = [arg for arg in call.args if arg.keyword is None]
    for arg in call.args:
        if arg.keyword is not None and arg.keyword.value == config:
            found = arg
    if config in positions and positions.index(config) < len(positional):
        found = positional[positions.index(config)]
    if found is None or (isinstance(found.value, cst.Name) and found.value.value == "None"):
        return None
    return found


def optional_config_always_passed(
    module: cst.Module, name: str, config: str, needing: frozenset[str]
) -> bool:
    """Whether class `name`, whose `__init__` takes its config `config` as an optional positional-or-keyword
    parameter (`config=None`), can take it first and required: every call of the class is in the
    `__init__` of a class in `needing` and passes the config (not `None`), no `*`/`**` argument, and no
    class of the file derives from it (its `super().__init__(...)` would bind the old order)."""
    classes = {
        statement.name.value: statement for statement in module.body if isinstance(statement, cst.ClassDef)
    }
    init = find_method(classes[name], "__init__") if name in classes else None
    if init is None or config not in {param.name.value for param in init.params.params}:
        return False
    positions = _positional_names(init)
    calls = 0
    for owner, node in classes.items():
        if any(dotted(base.value) == name for base in node.bases):
            return False
        for method in node.body.body:
            if not isinstance(method, cst.FunctionDef):
                continue
            for call in walk(method):
                if not (isinstance(call, cst.Call) and dotted(call.func) == name):
                    continue
                if method.name.value != "__init__" or owner not in needing:
                    return False
                if _passed_config(call, positions, config) is None:
                    return False
                calls += 1
    functions = [statement for statement in module.body if isinstance(statement, cst.FunctionDef)]
    if any(
        isinstance(call, cst.Call) and dotted(call.func) == name
        for function in functions
        for call in walk(function)
    ):
        return False
    return calls > 0


class ThreadTrnConfig(Rule):
    CODE = "NXS004"
    NAME = "thread-trn-config"
    SUMMARY = "constructors that build parallel layers or SP norms take, store and pass on trn_config"
    ADVICE = (
        "Every layer rule builds on the `trn_config` it threads, so it can only be disabled together with "
        "them; a constructor it cannot change is refused before it runs (R017, R018)."
    )
    EXAMPLES = (
        stored_example(CODE, "llama", "LlamaDecoderLayer"),
        stored_example(CODE, "llama", "LlamaForCausalLM"),
    )

    def visit_FunctionDef(self, node: cst.FunctionDef) -> bool:
        return False  # the rule rewrites whole classes: nothing to visit inside a method

    def visit_Module(self, node: cst.Module) -> None:
        self._needing = classes_needing_trn_config(self.blueprint)
        self._config: dict[str, str] = {}  # class -> its config parameter
        self._config_position: dict[str, int] = {}  # class -> position of the config among the arguments
        self._added: set[str] = set()  # classes that take the config from their callers (R018 retired)
        self._promoted: dict[str, list[str]] = {}  # optional config made first: class -> old positions
        for plan in self.blueprint.classes:
            if plan.name in self._needing and plan.config_parameter is not None:
                self._config[plan.name] = plan.config_parameter
                init = _own_init(node, plan.name)
                if (
                    init is not None
                    and _optional(init, plan.config_parameter)
                    and optional_config_always_passed(node, plan.name, plan.config_parameter, self._needing)
                ):
                    self._promoted[plan.name] = _positional_names(init)
            elif plan.name in self._needing and config_can_be_added(node, plan.name, self._needing):
                self._config[plan.name] = CONFIG
                self._added.add(plan.name)
        for statement in node.body:
            if isinstance(statement, cst.ClassDef) and statement.name.value in self._config:
                init = find_method(statement, "__init__")
                names = [param.name.value for param in init.params.params] if init is not None else []
                if statement.name.value in self._promoted:
                    self._config_position[statement.name.value] = 0
                elif self._config[statement.name.value] in names:
                    self._config_position[statement.name.value] = (
                        names.index(self._config[statement.name.value]) - 1
                    )
                elif statement.name.value in self._added:
                    self._config_position[statement.name.value] = 0

    def leave_ClassDef(self, original_node: cst.ClassDef, updated_node: cst.ClassDef) -> cst.ClassDef:
        name = updated_node.name.value
        if name not in self._needing:
            return updated_node
        refusal = self.refusal_for(name)
        if refusal is not None:
            return with_todo(updated_node, refusal)
        init = find_method(updated_node, "__init__")
        assert init is not None and name in self._config, "checked in analysis (R017, R018)"
        init = _pass_to_children(
            init,
            self._needing,
            self._config_position,
            self._added,
            self._config[name],
            self._promoted,
            self._config,
        )
        if name in self._added:
            init = _take_config(init)
        if name in self._promoted:
            init = _config_first(init, self._config[name])
        init = self._take_and_store(init, self._config[name])
        body = [init if _is_init(statement) else statement for statement in updated_node.body.body]
        return updated_node.with_changes(body=updated_node.body.with_changes(body=body))

    def _take_and_store(self, init: cst.FunctionDef, config: str) -> cst.FunctionDef:
        """`trn_config: TrainingNeuronConfig` after the config parameter, then `self.trn_config = trn_config`."""
        params = list(init.params.params)
        if any(param.name.value == TRN_CONFIG for param in params):
            return init
        (new,), needed = templates.fill_parameters(TEMPLATES, "trn_config_parameter", self.blueprint.style)
        self.add_template_imports(needed)
        position = next(index for index, param in enumerate(params) if param.name.value == config) + 1
        new = new.with_changes(comma=cst.Comma(whitespace_after=cst.SimpleWhitespace(" ")))
        if position == len(params):
            previous = params[-1]
            if isinstance(previous.comma, cst.MaybeSentinel):
                params[-1] = previous.with_changes(
                    comma=cst.Comma(whitespace_after=cst.SimpleWhitespace(" "))
                )
            new = new.with_changes(comma=cst.MaybeSentinel.DEFAULT)
            if init.params.star_kwarg is not None or init.params.star_arg is not cst.MaybeSentinel.DEFAULT:
                new = new.with_changes(comma=cst.Comma(whitespace_after=cst.SimpleWhitespace(" ")))
        params.insert(position, new)
        init = init.with_changes(params=init.params.with_changes(params=params))
        store, needed = templates.fill_statements(TEMPLATES, "trn_config_stored", self.blueprint.style)
        self.add_template_imports(needed)
        return insert_after_super_init(init, store)


def _is_init(statement: cst.CSTNode) -> bool:
    return isinstance(statement, cst.FunctionDef) and statement.name.value == "__init__"


def _own_init(module: cst.Module, name: str) -> cst.FunctionDef | None:
    for statement in module.body:
        if isinstance(statement, cst.ClassDef) and statement.name.value == name:
            return find_method(statement, "__init__")
    return None


def _optional(init: cst.FunctionDef, config: str) -> bool:
    """Whether `__init__` takes `config` as a positional-or-keyword parameter with a default (analysis
    refuses the class unless every caller passes it: R018)."""
    return any(param.name.value == config and param.default is not None for param in init.params.params)


def _config_first(init: cst.FunctionDef, config: str) -> cst.FunctionDef:
    """`__init__(self, config, ...)`: the optional config moved first and made required (every caller
    passes it; `Optional[X]` / `X | None` annotations become `X`)."""
    params = list(init.params.params)
    index = next(i for i, param in enumerate(params) if param.name.value == config)
    param = params.pop(index)
    annotation = param.annotation
    if annotation is not None:
        annotation = annotation.with_changes(annotation=_without_none(annotation.annotation))
    space = cst.Comma(whitespace_after=cst.SimpleWhitespace(" "))
    param = param.with_changes(
        default=None, equal=cst.MaybeSentinel.DEFAULT, annotation=annotation, comma=space
    )
    if index == len(params) and params:  # it was last: the new last parameter keeps its comma style
        params[-1] = params[-1].with_changes(comma=init.params.params[index].comma)
    params.insert(1, param)
    return init.with_changes(params=init.params.with_changes(params=params))


def _without_none(annotation: cst.BaseExpression) -> cst.BaseExpression:
    """`Optional[X]` -> `X`, `X | None` -> `X`; anything else as written."""
    if (
        isinstance(annotation, cst.Subscript)
        and dotted(annotation.value) in ("Optional", "typing.Optional")
        and len(annotation.slice) == 1
        and isinstance(annotation.slice[0].slice, cst.Index)
    ):
        return annotation.slice[0].slice.value
    if (
        isinstance(annotation, cst.BinaryOperation)
        and isinstance(annotation.operator, cst.BitOr)
        and isinstance(annotation.right, cst.Name)
        and annotation.right.value == "None"
    ):
        return annotation.left
    return annotation


def _take_config(init: cst.FunctionDef) -> cst.FunctionDef:
    """`__init__(self, config, ...)`: the config first after `self`."""
    params = list(init.params.params)
    config = cst.Param(cst.Name(CONFIG), comma=cst.Comma(whitespace_after=cst.SimpleWhitespace(" ")))
    if len(params) == 1 and isinstance(params[0].comma, cst.MaybeSentinel):
        params[0] = params[0].with_changes(comma=cst.Comma(whitespace_after=cst.SimpleWhitespace(" ")))
        config = config.with_changes(comma=cst.MaybeSentinel.DEFAULT)
    params.insert(1, config)
    return init.with_changes(params=init.params.with_changes(params=params))


def _pass_to_children(
    init: cst.FunctionDef,
    needing: frozenset[str],
    config_position: dict[str, int],
    added: set[str],
    config: str,
    promoted: dict[str, list[str]],
    configs: dict[str, str],
) -> cst.FunctionDef:
    """Every call `Child(...)` of a class that needs it passes `trn_config` right after the config, and
    first the config `config` where the child takes it from its callers (`added`), or first the config
    it passed where the child's optional config moves first (`promoted`)."""

    class _Calls(cst.CSTTransformer):
        def leave_Call(self, original: cst.Call, updated: cst.Call) -> cst.Call:
            callee = dotted(updated.func)
            if callee not in needing or _passes_trn_config(updated):
                return updated
            space = cst.Comma(whitespace_after=cst.SimpleWhitespace(" "))
            if callee in added:
                first = cst.Arg(cst.Name(config), comma=space if updated.args else cst.MaybeSentinel.DEFAULT)
                updated = updated.with_changes(args=[first, *updated.args])
            elif callee in promoted:
                passed = _passed_config(updated, promoted[callee], configs[callee])
                assert passed is not None, "checked in analysis (R018)"
                args = [arg for arg in updated.args if arg is not passed]
                if args and passed is updated.args[-1]:  # the new last argument keeps the comma style
                    args[-1] = args[-1].with_changes(comma=passed.comma)
                first = cst.Arg(passed.value, comma=space if args else cst.MaybeSentinel.DEFAULT)
                updated = updated.with_changes(args=[first, *args])
            return _with_trn_config(updated, config_position.get(callee, 0))

    result = init.visit(_Calls())
    assert isinstance(result, cst.FunctionDef)
    return result


def _passes_trn_config(call: cst.Call) -> bool:
    return any(
        (arg.keyword is not None and arg.keyword.value == TRN_CONFIG) or code(arg.value) == TRN_CONFIG
        for arg in call.args
    )


def _with_trn_config(call: cst.Call, config_position: int) -> cst.Call:
    args = list(call.args)
    positional = [index for index, arg in enumerate(args) if arg.keyword is None and not arg.star]
    if config_position < len(positional):
        index = positional[config_position] + 1
        new = cst.Arg(value=cst.Name(TRN_CONFIG))
    else:
        keywords = [
            index
            for index, arg in enumerate(args)
            if arg.keyword is not None and arg.keyword.value == "config"
        ]
        index = keywords[0] + 1 if keywords else len(args)
        new = cst.Arg(
            keyword=cst.Name(TRN_CONFIG),
            value=cst.Name(TRN_CONFIG),
            equal=cst.AssignEqual(
                whitespace_before=cst.SimpleWhitespace(""), whitespace_after=cst.SimpleWhitespace("")
            ),
        )
    if index < len(args) or (args and not isinstance(args[-1].comma, cst.MaybeSentinel)):
        new = new.with_changes(comma=cst.Comma(whitespace_after=cst.SimpleWhitespace(" ")))
    if index == len(args) and args and isinstance(args[-1].comma, cst.MaybeSentinel):
        args[-1] = args[-1].with_changes(comma=cst.Comma(whitespace_after=cst.SimpleWhitespace(" ")))
    args.insert(index, new)
    return call.with_changes(args=args)
