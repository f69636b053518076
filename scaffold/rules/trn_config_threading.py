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
        for plan in self.blueprint.classes:
            if plan.name in self._needing and plan.config_parameter is not None:
                self._config[plan.name] = plan.config_parameter
            elif plan.name in self._needing and config_can_be_added(node, plan.name, self._needing):
                self._config[plan.name] = CONFIG
                self._added.add(plan.name)
        for statement in node.body:
            if isinstance(statement, cst.ClassDef) and statement.name.value in self._config:
                init = find_method(statement, "__init__")
                names = [param.name.value for param in init.params.params] if init is not None else []
                if self._config[statement.name.value] in names:
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
        init = _pass_to_children(init, self._needing, self._config_position, self._added, self._config[name])
        if name in self._added:
            init = _take_config(init)
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
) -> cst.FunctionDef:
    """Every call `Child(...)` of a class that needs it passes `trn_config` right after the config, and
    first the config `config` where the child takes it from its callers (`added`)."""

    class _Calls(cst.CSTTransformer):
        def leave_Call(self, original: cst.Call, updated: cst.Call) -> cst.Call:
            callee = dotted(updated.func)
            if callee not in needing or _passes_trn_config(updated):
                return updated
            if callee in added:
                space = cst.Comma(whitespace_after=cst.SimpleWhitespace(" "))
                first = cst.Arg(cst.Name(config), comma=space if updated.args else cst.MaybeSentinel.DEFAULT)
                updated = updated.with_changes(args=[first, *updated.args])
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
