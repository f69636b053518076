"""NXS002: training has no KV cache; remove its plumbing and the code only generation reaches.

`past_key_values` (and the older `past_key_value`), `use_cache` and `cache_position` stop being
parameters. Within a function that took them, their values are known: no cache, `use_cache` false, and
`cache_position` unset until the function computes it. Conditions over those values are decided, so
cache updates, `DynamicCache` creation and `use_cache` defaults disappear, while `if cache_position is
None:` keeps its body: the positions of the (whole) sequence are still needed for position ids and for
the causal mask. A name bound to a constant by that folding (`past_seen_tokens = 0`) is substituted into
its uses. Keyword arguments and dict entries that forward the removed values go, except into
transformers' mask builders, which keep `cache_position` and get `past_key_values=None` (so the file
still runs as plain transformers code; NXS012 moves the masks to the host). Cache-only class attributes
go too.

Across calls (facts from `CacheForwarding`): a parameter that only ever receives the cache under another
name (`layer(..., layer_past=past_key_values)`) goes like the cache, at every level it is passed on; a
call stops passing what its callee no longer takes, positional arguments included; a name assigned once
from the cache (`self_attn_cache = past_key_values`) is no cache either; a remaining read of the absent
cache as a value becomes `None` (`[hidden_states, past_key_values]` in a list filtered by `is not None`
loses it); a method that takes the cache and that nothing calls goes. A read that would use the cache
(`past_key_values.get_seq_length()`) is refused rather than left dangling.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import libcst as cst

from ..blueprint import CacheCallee, CacheForwarding, Refusal
from ..syntax import aliases_of, docstring_count, dotted, laid_out, name_nodes, names_in, walk
from .base import Rule, stored_example, todo_comment

NONE = "None"
FALSE = "False"
# removed parameter -> the value it has in training
CACHE_PARAMETERS = {
    "past_key_values": NONE,
    "past_key_value": NONE,
    "use_cache": FALSE,
    "cache_position": NONE,  # until the function assigns it
}
FORWARDED_ONLY = frozenset({"past_key_values", "past_key_value", "use_cache"})
POSITIONS = "cache_position"


class DropKVCache(Rule):
    CODE = "NXS002"
    NAME = "drop-kv-cache"
    SUMMARY = "remove past_key_values / use_cache / cache_position plumbing and cache updates; keep positions"
    ADVICE = (
        "A cache use the rule does not understand is refused before it runs (R019). Disable it to keep the "
        "cache plumbing and remove it by hand (training never passes a cache)."
    )
    EXAMPLES = (
        stored_example(CODE, "llama", "LlamaAttention"),
        stored_example(CODE, "llama", "LlamaModel"),
    )

    def visit_Module(self, node: cst.Module) -> None:
        self._classes: list[str] = []

    def visit_ClassDef(self, node: cst.ClassDef) -> None:
        self._classes.append(node.name.value)

    def leave_FunctionDef(
        self, original_node: cst.FunctionDef, updated_node: cst.FunctionDef
    ) -> cst.FunctionDef:
        owner = self._classes[-1] if self._classes else None
        subject = f"{owner}.{updated_node.name.value}" if owner else updated_node.name.value
        if subject in self.blueprint.cache.helpers:
            return updated_node  # the class drops it (leave_ClassDef)
        refusal = self.refusal_for(subject)
        if refusal is not None:
            return updated_node.with_changes(leading_lines=[*updated_node.leading_lines, _comment(refusal)])
        stripped, dangling = strip_cache(
            updated_node, self.blueprint.mask_builders, plan=_plan(self.blueprint.cache, subject)
        )
        assert not dangling, (
            f"{subject} reads {dangling} after the cache was removed (not refused in analysis)"
        )
        return stripped

    def leave_ClassDef(self, original_node: cst.ClassDef, updated_node: cst.ClassDef) -> cst.ClassDef:
        owner = self._classes.pop()
        helpers = {f"{owner}.{name}" for name in _method_names(updated_node)} & set(
            self.blueprint.cache.helpers
        )
        body = [
            statement
            for statement in updated_node.body.body
            if not _cache_only_attribute(statement)
            and not (isinstance(statement, cst.FunctionDef) and f"{owner}.{statement.name.value}" in helpers)
        ]
        return updated_node.with_changes(body=updated_node.body.with_changes(body=body))


@dataclass(frozen=True)
class CachePlan:
    """What NXS002 knows about one function beyond its own text: the parameters through which the cache
    reaches it under another name, and the callees that lose parameters (by the callee as written)."""

    aliases: frozenset[str] = frozenset()
    callees: dict[str, CacheCallee] = field(default_factory=dict)


def _plan(forwarding: CacheForwarding, subject: str) -> CachePlan:
    return CachePlan(forwarding.aliases_of(subject), forwarding.callees_of(subject))


def _method_names(node: cst.ClassDef) -> list[str]:
    return [statement.name.value for statement in node.body.body if isinstance(statement, cst.FunctionDef)]


def _comment(refusal: Refusal) -> cst.EmptyLine:
    return cst.EmptyLine(comment=cst.Comment(todo_comment(refusal)))


@dataclass
class _State:
    known: dict[str, str]  # name -> "None" / "False" while its training value is known
    mask_functions: set[str]
    mask_arguments: set[str]  # names of dicts spread into mask builders (`**mask_kwargs`)
    callees: dict[str, CacheCallee] = field(default_factory=dict)
    single: frozenset[str] = frozenset()  # names the function assigns once (may alias the cache)
    folded: dict[str, cst.BaseExpression] = field(default_factory=dict)


def strip_cache(
    function: cst.FunctionDef, mask_functions: tuple[str, ...], *, plan: CachePlan | None = None
) -> tuple[cst.FunctionDef, frozenset[str]]:
    """`function` without its cache plumbing, and the removed names it would still read (empty when the
    rewrite is complete; the analysis refuses a function where it is not, rule NXS002's precondition).

    `plan` adds what the function's own text does not say (see `CacheForwarding`): parameters through
    which the cache arrives under another name, and callees whose removed parameters the calls stop
    passing, by keyword or by position."""
    plan = plan or CachePlan()
    removed = [
        name for name in _parameter_names(function) if name in CACHE_PARAMETERS or name in plan.aliases
    ]
    if not removed and not _forwards_cache(function) and not plan.callees:
        return function, frozenset()
    builders = set(mask_functions) | aliases_of(function, mask_functions)
    state = _State(
        known={name: CACHE_PARAMETERS.get(name, NONE) for name in removed},
        mask_functions=builders,
        mask_arguments=_spread_into(function, builders),
        callees=plan.callees,
        single=frozenset(name for name, count in assignment_counts(function.body).items() if count == 1),
    )
    params = function.params
    kept = [param for param in params.params if param.name.value not in removed]
    if kept:
        kept[-1] = kept[-1].with_changes(
            comma=params.params[-1].comma if params.params else cst.MaybeSentinel.DEFAULT
        )
    kwonly = [param for param in params.kwonly_params if param.name.value not in removed]
    function = function.with_changes(params=params.with_changes(params=kept, kwonly_params=kwonly))
    body = _block(list(function.body.body), state)
    body = _substitute_folded(body, state)
    body = _substitute_known(body, state)
    if docstring_count(body) and any(name in cst.Module(body=[body[0]]).code for name in removed):
        body = body[1:]
    if not body:
        body = [cst.SimpleStatementLine(body=[cst.Pass()])]
    function = function.with_changes(body=function.body.with_changes(body=body))
    cache_names = {name for name, value in state.known.items() if value == NONE and name != POSITIONS}
    dangling = frozenset(names_in(function.body) & (cache_names | (FORWARDED_ONLY & set(removed))))
    return function, dangling


def assignment_counts(node: cst.CSTNode) -> dict[str, int]:
    """How many times each plain name is bound by an assignment (or a loop) under `node`."""
    counts: dict[str, int] = {}

    class _Count(cst.CSTVisitor):
        def visit_AssignTarget(self, node: cst.AssignTarget) -> None:
            for name in names_in(node.target):
                counts[name] = counts.get(name, 0) + 1

        def visit_AugAssign(self, node: cst.AugAssign) -> None:
            for name in names_in(node.target):
                counts[name] = counts.get(name, 0) + 2

        def visit_For(self, node: cst.For) -> None:
            for name in names_in(node.target):
                counts[name] = counts.get(name, 0) + 2

    node.visit(_Count())
    return counts


def cache_valued(node: cst.BaseExpression, cache: set[str] | frozenset[str]) -> bool:
    """Whether `node` is the (absent) cache: one of the `cache` names, or a conditional whose arms are
    cache names or `None` (`past_key_values if not checkpointing else None`)."""
    if isinstance(node, cst.Name):
        return node.value in cache
    if isinstance(node, cst.IfExp):
        arms = (node.body, node.orelse)
        return all(cache_valued(arm, cache) or dotted(arm) == NONE for arm in arms) and any(
            cache_valued(arm, cache) for arm in arms
        )
    return False


def _spread_into(function: cst.FunctionDef, callees: set[str]) -> set[str]:
    """Names spread with `**name` into calls of `callees`."""
    found: set[str] = set()

    class _Spread(cst.CSTVisitor):
        def visit_Call(self, node: cst.Call) -> None:
            if dotted(node.func) in callees:
                found.update(
                    arg.value.value
                    for arg in node.args
                    if arg.star == "**" and isinstance(arg.value, cst.Name)
                )

    function.visit(_Spread())
    return found


def _parameter_names(function: cst.FunctionDef) -> list[str]:
    params = function.params
    return [param.name.value for param in (*params.posonly_params, *params.params, *params.kwonly_params)]


def _forwards_cache(function: cst.FunctionDef) -> bool:
    return bool(names_in(function.body) & set(CACHE_PARAMETERS))


# --- statements ---------------------------------------------------------------------------------------


def _block(statements: Sequence[cst.BaseStatement], state: _State) -> list[cst.BaseStatement]:
    result: list[cst.BaseStatement] = []
    for statement in statements:
        result.extend(_statement(statement, state))
    return result


def _statement(statement: cst.BaseStatement, state: _State) -> list[cst.BaseStatement]:
    if isinstance(statement, cst.If):
        decided = _truth(statement.test, state.known)
        if decided is True:
            return _spliced(statement, _block(list(statement.body.body), state))
        if decided is False:
            orelse = statement.orelse
            if orelse is None:
                return []
            if isinstance(orelse, cst.If):
                return _statement(orelse, state)
            return _spliced(statement, _block(list(orelse.body.body), state))
        body = _block(list(statement.body.body), state)
        if not body and statement.orelse is None and not _calls(statement.test):
            return []  # a condition that only guarded cache code: nothing left to guard
        changed = statement.with_changes(
            test=_expression(statement.test, state),
            body=statement.body.with_changes(body=body or [_pass()]),
        )
        if statement.orelse is not None:
            changed = changed.with_changes(orelse=_else(statement.orelse, state))
        return [changed]
    if isinstance(statement, cst.SimpleStatementLine):
        smalls = []
        for small in statement.body:
            if _assigns_known(small, state):
                continue
            smalls.append(_small(small, state))
        if not smalls:
            return []
        return [statement.with_changes(body=smalls)]
    if isinstance(statement, cst.For | cst.While | cst.With | cst.Try):
        changed = _expression(statement, state, blocks=True)
        return [changed]  # type: ignore[list-item]
    return [statement]


def _else(orelse: cst.If | cst.Else, state: _State) -> cst.If | cst.Else:
    if isinstance(orelse, cst.If):
        result = _statement(orelse, state)
        return result[0] if result and isinstance(result[0], cst.If) else orelse
    return orelse.with_changes(
        body=orelse.body.with_changes(body=_block(list(orelse.body.body), state) or [_pass()])
    )


def _calls(expression: cst.BaseExpression) -> bool:
    """Whether evaluating `expression` may call something (a condition without calls can go unread)."""
    return any(isinstance(node, cst.Call) for node in walk(expression))


def _pass() -> cst.SimpleStatementLine:
    return cst.SimpleStatementLine(body=[cst.Pass()])


def _spliced(original: cst.If, body: list[cst.BaseStatement]) -> list[cst.BaseStatement]:
    """The statements of a decided `if`, carrying its leading blank lines and comments."""
    if body:
        first = body[0]
        body[0] = first.with_changes(leading_lines=[*original.leading_lines, *first.leading_lines])
    return body


def _assigns_known(small: cst.BaseSmallStatement, state: _State) -> bool:
    """`use_cache = ...` or `past_key_values = ...`: the value is fixed in training."""
    targets: list[cst.BaseExpression] = []
    if isinstance(small, cst.Assign):
        targets = [target.target for target in small.targets]
    elif isinstance(small, cst.AnnAssign):
        targets = [small.target]
    names = [target.value for target in targets if isinstance(target, cst.Name)]
    if not names or len(names) != len(targets):
        return False
    if all(name in state.known and name != POSITIONS for name in names):
        return True
    value = small.value
    if (
        len(names) == 1
        and names[0] in state.single
        and value is not None
        and cache_valued(
            value, {name for name, known in state.known.items() if known == NONE and name != POSITIONS}
        )
    ):
        state.known[names[0]] = NONE  # `self_attn_cache = past_key_values`: another name for no cache
        return True
    for name in names:
        state.known.pop(name, None)  # cache_position: computed from here on
    return False


def _small(small: cst.BaseSmallStatement, state: _State) -> cst.BaseSmallStatement:
    changed = _expression(small, state)
    if isinstance(small, cst.Assign | cst.AnnAssign) and isinstance(changed, cst.Assign | cst.AnnAssign):
        target = small.targets[0].target if isinstance(small, cst.Assign) else small.target
        if (
            isinstance(small.value, cst.IfExp)
            and isinstance(changed.value, cst.Integer | cst.Float | cst.Name)
            and isinstance(target, cst.Name)
        ):
            state.folded[target.value] = changed.value
    return changed  # type: ignore[return-value]


# --- expressions --------------------------------------------------------------------------------------


def _truth(node: cst.BaseExpression, known: dict[str, str]) -> bool | None:
    """The value of a condition over the known names, or None when it depends on anything else."""
    if isinstance(node, cst.Name) and node.value in known:
        return False  # None and False are both falsy
    if isinstance(node, cst.UnaryOperation) and isinstance(node.operator, cst.Not):
        inner = _truth(node.expression, known)
        return None if inner is None else not inner
    if isinstance(node, cst.BooleanOperation):
        left, right = _truth(node.left, known), _truth(node.right, known)
        if isinstance(node.operator, cst.And):
            if left is False or right is False:
                return False
            return True if left is True and right is True else None
        if left is True or right is True:
            return True
        return False if left is False and right is False else None
    if isinstance(node, cst.Comparison) and len(node.comparisons) == 1:
        comparison = node.comparisons[0]
        left, right = node.left, comparison.comparator
        if isinstance(left, cst.Name) and known.get(left.value) == NONE and dotted(right) == "None":
            if isinstance(comparison.operator, cst.Is):
                return True
            if isinstance(comparison.operator, cst.IsNot):
                return False
    return None


class _Expressions(cst.CSTTransformer):
    def __init__(self, state: _State, blocks: bool) -> None:
        self.state = state
        self.blocks = blocks
        self.target: str | None = None  # the name the statement being rewritten assigns

    def leave_IndentedBlock(
        self, original: cst.IndentedBlock, updated: cst.IndentedBlock
    ) -> cst.IndentedBlock:
        if not self.blocks:
            return updated
        return updated.with_changes(body=_block(list(original.body), self.state) or [_pass()])

    def leave_IfExp(self, original: cst.IfExp, updated: cst.IfExp) -> cst.BaseExpression:
        decided = _truth(original.test, self.state.known)
        if decided is None:
            return updated
        return updated.body if decided else updated.orelse

    def visit_Assign(self, node: cst.Assign) -> None:
        target = node.targets[0].target if len(node.targets) == 1 else None
        self.target = target.value if isinstance(target, cst.Name) else None

    def leave_Assign(self, original: cst.Assign, updated: cst.Assign) -> cst.Assign:
        self.target = None
        return updated

    def leave_Call(self, original: cst.Call, updated: cst.Call) -> cst.Call:
        if dotted(updated.func) in self.state.mask_functions:
            # transformers' mask builders take the cache (and positions): no cache in training.
            args = [
                arg.with_changes(value=cst.Name("None")) if _keyword(arg) in FORWARDED_ONLY else arg
                for arg in updated.args
            ]
            return updated.with_changes(args=args)
        callee = self.state.callees.get(dotted(updated.func) or "")
        args = [arg for arg in updated.args if _keyword(arg) not in FORWARDED_ONLY | {POSITIONS}]
        if callee is not None:
            args = _bound_to_kept(args, callee)
        if len(args) == len(updated.args):
            return updated
        if args:
            args[-1] = args[-1].with_changes(comma=updated.args[-1].comma)
        return updated.with_changes(args=args)

    def leave_Dict(self, original: cst.Dict, updated: cst.Dict) -> cst.Dict:
        for_masks = self.target in self.state.mask_arguments
        elements = []
        for element in updated.elements:
            key = (
                element.key.evaluated_value
                if isinstance(element, cst.DictElement) and isinstance(element.key, cst.SimpleString)
                else None
            )
            if key not in FORWARDED_ONLY:
                elements.append(element)
            elif for_masks:
                elements.append(element.with_changes(value=cst.Name("None")))
        if len(elements) == len(updated.elements):
            return updated.with_changes(elements=elements)
        if elements:
            elements[-1] = elements[-1].with_changes(comma=updated.elements[-1].comma)
        return updated.with_changes(elements=elements)


def _bound_to_kept(args: list[cst.Arg], callee: CacheCallee) -> list[cst.Arg]:
    """`args` without those the callee's removed parameters would bind (by position or keyword); a
    positional argument after `*args` binds no known parameter and stays."""
    kept: list[cst.Arg] = []
    position = 0
    for arg in args:
        if arg.keyword is None and not arg.star:
            parameter = callee.parameters[position] if position < len(callee.parameters) else None
            position += 1
            if parameter in callee.removed:
                continue
        elif arg.star == "*":
            position = len(callee.parameters)
        elif _keyword(arg) in callee.removed:
            continue
        kept.append(arg)
    return kept


def _keyword(arg: cst.Arg) -> str | None:
    return arg.keyword.value if arg.keyword is not None else None


def _expression(node: cst.CSTNode, state: _State, *, blocks: bool = False) -> cst.CSTNode:
    """`node` with decided conditionals and forwarded cache arguments rewritten; with `blocks` (loops,
    `with`, `try`), the statements of nested blocks go through `_block` as well."""
    return node.visit(_Expressions(state, blocks))


# --- reads of the absent cache ------------------------------------------------------------------------


def _substitute_known(body: list[cst.BaseStatement], state: _State) -> list[cst.BaseStatement]:
    """`body` with the remaining reads of the absent cache as a value replaced by `None`: an argument
    (`layer_past=past_key_values`), an element (`[hidden_states, past_key_values]`). A read that would
    use the cache (`past_key_values.get_seq_length()`, `past_key_values[0]`) stays, and is refused.
    `None if c else None` becomes `None`; a list filtered by `if v is not None` loses its `None`s."""
    cache = {name for name, value in state.known.items() if value == NONE and name != POSITIONS}
    module = cst.Module(body=body)
    if not cache or not (names_in(module) & cache):
        return body
    used: set[int] = set()  # Names that are the object of an attribute, subscript or call

    class _Used(cst.CSTVisitor):
        def visit_Attribute(self, node: cst.Attribute) -> None:
            used.add(id(node.value))

        def visit_Subscript(self, node: cst.Subscript) -> None:
            used.add(id(node.value))

        def visit_Call(self, node: cst.Call) -> None:
            used.add(id(node.func))

        def visit_AssignTarget(self, node: cst.AssignTarget) -> None:
            used.update(id(name) for name in name_nodes(node.target))

    module.visit(_Used())
    readable = {id(name) for name in name_nodes(module) if name.value in cache and id(name) not in used}

    class _Substitute(cst.CSTTransformer):
        def leave_Name(self, original: cst.Name, updated: cst.Name) -> cst.BaseExpression:
            return cst.Name(NONE) if id(original) in readable else updated

        def leave_IfExp(self, original: cst.IfExp, updated: cst.IfExp) -> cst.BaseExpression:
            if dotted(updated.body) == NONE and dotted(updated.orelse) == NONE:
                return updated.body.with_changes(lpar=updated.lpar, rpar=updated.rpar)
            return updated

        def leave_CompFor(self, original: cst.CompFor, updated: cst.CompFor) -> cst.CompFor:
            if not (isinstance(updated.iter, cst.List | cst.Tuple) and _filters_none(updated)):
                return updated
            elements = [element for element in updated.iter.elements if dotted(element.value) != NONE]
            if len(elements) == len(updated.iter.elements) or not elements:
                return updated
            elements[-1] = elements[-1].with_changes(comma=updated.iter.elements[-1].comma)
            return updated.with_changes(iter=updated.iter.with_changes(elements=elements))

    return list(module.visit(_Substitute()).body)


def _filters_none(comprehension: cst.CompFor) -> bool:
    """`for v in ... if v is not None`."""
    target = comprehension.target
    if not isinstance(target, cst.Name) or len(comprehension.ifs) != 1:
        return False
    test = comprehension.ifs[0].test
    return (
        isinstance(test, cst.Comparison)
        and len(test.comparisons) == 1
        and isinstance(test.comparisons[0].operator, cst.IsNot)
        and dotted(test.left) == target.value
        and dotted(test.comparisons[0].comparator) == NONE
    )


# --- folded constants ---------------------------------------------------------------------------------


def _substitute_folded(body: list[cst.BaseStatement], state: _State) -> list[cst.BaseStatement]:
    if not state.folded:
        return body
    module = cst.Module(body=body)
    counts: dict[str, int] = {}

    class _Count(cst.CSTVisitor):
        def visit_AssignTarget(self, node: cst.AssignTarget) -> None:
            for name in names_in(node.target):
                counts[name] = counts.get(name, 0) + 1

    module.visit(_Count())
    constants = {name: value for name, value in state.folded.items() if counts.get(name) == 1}
    if not constants:
        return body

    class _Substitute(cst.CSTTransformer):
        def leave_IndentedBlock(
            self, original: cst.IndentedBlock, updated: cst.IndentedBlock
        ) -> cst.IndentedBlock:
            return updated.with_changes(body=_without_constants(updated.body, constants) or [_pass()])

        def leave_Module(self, original: cst.Module, updated: cst.Module) -> cst.Module:
            return updated.with_changes(body=_without_constants(updated.body, constants))

        def visit_AssignTarget(self, node: cst.AssignTarget) -> bool:
            return False

        def leave_Name(self, original: cst.Name, updated: cst.Name) -> cst.BaseExpression:
            return constants.get(updated.value, updated)

        def leave_Attribute(self, original: cst.Attribute, updated: cst.Attribute) -> cst.Attribute:
            return updated.with_changes(attr=original.attr)

        def leave_Arg(self, original: cst.Arg, updated: cst.Arg) -> cst.Arg:
            return updated.with_changes(keyword=original.keyword)

        def leave_BinaryOperation(
            self, original: cst.BinaryOperation, updated: cst.BinaryOperation
        ) -> cst.BaseExpression:
            if isinstance(updated.operator, cst.Add):
                if _is_zero(updated.left):
                    return updated.right
                if _is_zero(updated.right):
                    return updated.left
            return updated

        def leave_Call(self, original: cst.Call, updated: cst.Call) -> cst.Call:
            if updated.deep_equals(original):
                return updated
            # Re-lay out a call whose arguments shrank, as a person would write it.
            return laid_out(updated)

    return list(module.visit(_Substitute()).body)


def _without_constants(
    body: Sequence[cst.BaseStatement], constants: dict[str, cst.BaseExpression]
) -> list[cst.BaseStatement]:
    """`body` without the assignments of substituted constants; their blank lines and comments move on."""
    result: list[cst.BaseStatement] = []
    carried: list[cst.EmptyLine] = []
    for statement in body:
        if _assigns_constant(statement, constants):
            carried.extend(statement.leading_lines)
            continue
        if carried:
            statement = statement.with_changes(leading_lines=[*carried, *statement.leading_lines])
            carried = []
        result.append(statement)
    return result


def _assigns_constant(statement: cst.BaseStatement, constants: dict[str, cst.BaseExpression]) -> bool:
    if not isinstance(statement, cst.SimpleStatementLine) or len(statement.body) != 1:
        return False
    small = statement.body[0]
    return (
        isinstance(small, cst.Assign)
        and len(small.targets) == 1
        and isinstance(small.targets[0].target, cst.Name)
        and small.targets[0].target.value in constants
    )


def _is_zero(node: cst.BaseExpression) -> bool:
    return isinstance(node, cst.Integer) and node.evaluated_value == 0


# --- checks and class attributes ----------------------------------------------------------------------


def _cache_only_attribute(statement: cst.BaseStatement) -> bool:
    """A class attribute that only lists cache objects (`_skip_keys_device_placement = ["past_key_values"]`)."""
    if not isinstance(statement, cst.SimpleStatementLine) or len(statement.body) != 1:
        return False
    small = statement.body[0]
    if not isinstance(small, cst.Assign):
        return False
    value = small.value
    strings: list[cst.BaseExpression] = []
    if isinstance(value, cst.List | cst.Tuple):
        strings = [element.value for element in value.elements]
    elif isinstance(value, cst.SimpleString):
        strings = [value]
    return bool(strings) and all(
        isinstance(item, cst.SimpleString) and item.evaluated_value in FORWARDED_ONLY for item in strings
    )
