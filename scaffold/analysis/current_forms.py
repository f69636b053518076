"""Pre-refactor transformers forms, read as the current ones (what analysis and the rules both work on).

Several transformers modeling files still carry the forms from before the attention and mask refactors.
Each is rewritten here into the form the current files use, in the source's own terms, so that one set
of analyses and rules serves both:

- an attention class picked from a module-level table keyed by `config._attn_implementation`
  (`X_ATTENTION_CLASSES = {"eager": A, "sdpa": B, ...}`): the lookup becomes the `"eager"` class, the one
  training uses; the table and the other classes leave the training closure;
- a branch taken for one named implementation other than eager (`if self.config._attn_implementation ==
  "sdpa" and ...: <SDPA> else: <eager>`): its `else` in its place (`implementation_branches`);
- a base model building its causal mask with a method of its own (the legacy `_update_causal_mask`
  family: a method taking `attention_mask`, `cache_position` and the cache, filling a `torch.finfo(...)
  .min` mask): the call becomes transformers' `create_causal_mask` with the same embeddings, mask,
  positions and cache, and the method (with the methods only it calls) goes. Where the method limits the
  keys to a sliding window under a condition, the condition is kept: `create_sliding_window_causal_mask`
  when it holds;
- an attention forward computing eager attention inline (scores `q @ k^T` scaled, the mask added under
  `if <mask> is not None:`, softmax, dropout, `@ v`, then `transpose(1, 2)`): those statements move to a
  module-level eager function of the current shape, `(module, query, key, value, attention_mask,
  scaling, dropout=0.0, **kwargs) -> (output (B, S, h, d), weights)`, and the forward picks it from
  transformers' `ALL_ATTENTION_FUNCTIONS` as the current files do (passing the source's dropout, its
  scaling and, where the mask had one, its sliding window). The K/V head expansion just before the scores
  moves with them; a size check of the output is dropped (it reads the unsharded head count);
- the same kernel computed in a helper method of the attention class that the forward calls once
  (`out, weights = self._attn(q, k, v, mask, head_mask)`, ending in `return out, weights` in (B, h, S, d)):
  its body becomes the eager function (its other parameters, a head mask, become keyword parameters;
  a scaling of the scores may follow the mask block, `(q k^T + mask) / s`, and is passed as `1 / s`),
  the forward transposes the result back to (B, h, S, d); a causal mask buffer of the module's own that
  `__init__` limits to a window under a condition has that window recorded (`self.sliding_window = W if
  C else None`) and passed as `sliding_window=`; any other buffer leaves the helper as written (R027);
  a constructor that does not keep its config keeps it (`self.config = config`, on the line of its
  `super().__init__()`), since the dispatch reads `self.config._attn_implementation`;
- its leading shape read as `bsz, q_len, _ = x.size()` (or `x.shape`) becomes `bsz, q_len = x.shape[:-1]`,
  and `view`/`reshape` sizes that read the unsharded head count or width (`self.num_heads`,
  `self.hidden_size`, attributes set to those config fields) become `-1`.
- an eager function (module level: attention scores `s = matmul(q, k.transpose(..)) ...`) that adds its
  mask to the scores unconditionally, `s = s + mask` or through a slice of it (`m = mask[..., :k]` then
  `s = s + m`), as if a mask always came: those statements move under `if <mask> is not None:`, the
  current form, so that the function also runs without a mask (the training host builds none);
- a causal LM computing its loss by hand under `if labels is not None:` as the shifted cross-entropy
  (`s = logits[..., :-1, :]`, `t = labels[..., 1:]`, each optionally `.contiguous()`, flattened by
  `.view(-1, V)` / `.view(-1)`, the labels optionally moved `.to(...)`, `loss = CrossEntropyLoss()(s, t)`
  through a name): the block becomes `loss = self.loss_function(logits=logits, labels=labels,
  vocab_size=V)`, the same loss (transformers' causal-LM loss shifts the labels and takes the mean over
  the labels that are not -100, as `CrossEntropyLoss()` does), which the head rules know;

- a mask helper of the base model's own inherited from a class of the file (the pretrained base holding
  `_update_causal_mask`): read as above, the helpers leave the base class where no other class calls them;
- transformers' legacy `_prepare_4d_causal_attention_mask(mask, shape, embeds, past)`: the call becomes
  `create_causal_mask` over the positions after `past`;
- an inline kernel over heads folded into the batch (`torch.bmm` on `x.reshape(bsz * h, -1, d)`): read in
  4-D first (`batched_attention`), then as above; copies of the weights kept for the forward's return
  follow the call, forward parameters the kernel reads (a head mask) become keyword parameters, and an
  attention keeping no config takes its callers' (`self.config = config`) for the dispatch;
- forward parameters that every call binds to the same name (`attn(x, x, x)` into `forward(v, k, q)`):
  one input, the others' parameters and arguments gone; the batch read as `b = x.shape[0]` reads the
  leading shape, `b = x.shape[:-1][0]`;
- a forward's parameter updated in place (`position_ids += offset`): `p = p + offset`, the caller's tensor
  left as it was.

Nothing here names a model: only transformers' conventions (`_attn_implementation`, the mask and cache
argument names, `torch.matmul`/`softmax`/`finfo`). Line numbers stay those of the file where the
rewrite is shorter than what it replaces (blank lines take the place of removed code), so locations
in messages still point into the modeling file. A form that does not fully match is left as written,
and the usual refusals (R019, R026, R027) name it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import libcst as cst
import libcst.matchers as m

from ..patterns import IS_NOT_NONE
from ..syntax import code, dotted, fresh_name, names_in, walk
from .batched_attention import batched_as_matmul
from .implementation_branches import eager_branches

EAGER_KEY = "eager"
CONFIG = "config"
IMPLEMENTATION = "_attn_implementation"
MASK_PARAMETERS = frozenset({"attention_mask", "cache_position"})
CACHE_NAMES = frozenset({"past_key_values", "past_key_value"})
CAUSAL_MASK = "create_causal_mask"
SLIDING_MASK = "create_sliding_window_causal_mask"
MASKING_MODULE = "transformers.masking_utils"
TABLE_MODULE = "transformers.modeling_utils"
ATTENTION_TABLE = "ALL_ATTENTION_FUNCTIONS"
EAGER_FUNCTION = "eager_attention_forward"
INTERFACE = "attention_interface"
# config fields holding unsharded sizes: a view or reshape reading them breaks once heads are sharded
UNSHARDED_FIELDS = frozenset({"num_attention_heads", "num_key_value_heads", "num_kv_heads", "hidden_size"})


def current_forms(module: cst.Module) -> cst.Module:
    """`module` with every recognised pre-refactor form rewritten into the current one."""
    module = _merged_inputs(eager_branches(_attention_tables(module)))
    window, module, mask_imports = _legacy_masks(module)
    module, converted = _legacy_mask_functions(module)
    if converted and not mask_imports:
        mask_imports = [(MASKING_MODULE, (CAUSAL_MASK,))]
    module, outlined = _inline_attention(module, window)
    module = _conditional_masks(module)
    module = _transformers_losses(module)
    module = _inputs_kept(module)
    imports = [*mask_imports]
    if outlined and not _imports_name(module, ATTENTION_TABLE):
        imports.append((TABLE_MODULE, (ATTENTION_TABLE,)))
    return _with_imports(module, imports)


# --- attention class tables -----------------------------------------------------------------------------


def _attention_tables(module: cst.Module) -> cst.Module:
    classes = {s.name.value for s in module.body if isinstance(s, cst.ClassDef)}
    tables: dict[str, str] = {}
    for statement in module.body:
        for name, value in _module_assignments(statement):
            eager = _eager_entry(value, classes)
            if eager is not None:
                tables[name] = eager
    if not tables:
        return module

    class _Lookup(cst.CSTTransformer):
        def leave_Call(self, original: cst.Call, updated: cst.Call) -> cst.Call:
            func = updated.func
            if (
                isinstance(func, cst.Subscript)
                and isinstance(func.value, cst.Name)
                and func.value.value in tables
                and any(
                    isinstance(n, cst.Attribute) and n.attr.value == IMPLEMENTATION
                    for n in walk(func.slice[0])
                )
            ):
                return updated.with_changes(func=cst.Name(tables[func.value.value]))
            return updated

    result = module.visit(_Lookup())
    assert isinstance(result, cst.Module)
    return _without_definitions(result, set(tables) | _siblings(module, tables))


def _siblings(module: cst.Module, tables: dict[str, str]) -> set[str]:
    """The classes of the tables other than their eager ones, where nothing else names them."""
    listed = {
        element.value.value  # type: ignore[attr-defined]
        for statement in module.body
        for name, value in _module_assignments(statement)
        if name in tables
        for element in value.elements  # type: ignore[attr-defined]
    } - set(tables.values())
    outside = set()
    for statement in module.body:
        defined = statement.name.value if isinstance(statement, cst.ClassDef | cst.FunctionDef) else None
        assigned = {name for name, _ in _module_assignments(statement)}
        if defined in listed or assigned & set(tables):
            continue
        outside |= names_in(statement)
    return listed - outside


def _without_definitions(module: cst.Module, names: set[str]) -> cst.Module:
    """`module` without the top-level classes and assignments named, each become as many blank lines."""
    body: list[cst.BaseStatement] = []
    pending = 0
    for statement in module.body:
        defined = statement.name.value if isinstance(statement, cst.ClassDef | cst.FunctionDef) else None
        assigned = {name for name, _ in _module_assignments(statement)}
        if defined in names or (assigned and assigned <= names):
            pending += _line_count(statement)
            continue
        if pending:
            statement = statement.with_changes(leading_lines=[*_blanks(pending), *statement.leading_lines])
            pending = 0
        body.append(statement)
    return module.with_changes(body=body, footer=[*_blanks(pending), *module.footer])


def _blanks(count: int) -> list[cst.EmptyLine]:
    return [cst.EmptyLine(indent=False) for _ in range(count)]


def _module_assignments(statement: cst.BaseStatement) -> Iterator[tuple[str, cst.BaseExpression]]:
    if isinstance(statement, cst.SimpleStatementLine):
        for small in statement.body:
            if isinstance(small, cst.Assign) and len(small.targets) == 1:
                target = small.targets[0].target
                if isinstance(target, cst.Name):
                    yield target.value, small.value


def _eager_entry(value: cst.BaseExpression, classes: set[str]) -> str | None:
    """The class under the "eager" key of a dict of local classes keyed by strings."""
    if not isinstance(value, cst.Dict) or not value.elements:
        return None
    entries: dict[str, str] = {}
    for element in value.elements:
        if not (
            isinstance(element, cst.DictElement)
            and isinstance(element.key, cst.SimpleString)
            and isinstance(element.value, cst.Name)
            and element.value.value in classes
        ):
            return None
        key = element.key.evaluated_value
        if isinstance(key, str):
            entries[key] = element.value.value
    return entries.get(EAGER_KEY)


# --- legacy mask helpers ----------------------------------------------------------------------------------


def _legacy_masks(
    module: cst.Module,
) -> tuple[cst.BaseExpression | None, cst.Module, list[tuple[str, tuple[str, ...]]]]:
    """(the window condition in `self.config` terms, the module, the imports it needs)."""
    window: cst.BaseExpression | None = None
    needed: set[str] = set()
    body = list(module.body)
    for position, statement in enumerate(body):
        if not isinstance(statement, cst.ClassDef):
            continue
        rewritten = _mask_class(statement, _inherited_methods(body, statement))
        if rewritten is None:
            continue
        new_class, pending, dropped, condition = rewritten
        if dropped and not _droppable(body, statement, dropped):
            continue
        body[position] = new_class
        _drop_methods(body, dropped)
        if pending and position + 1 < len(body):
            following = body[position + 1]
            body[position + 1] = following.with_changes(
                leading_lines=[*_blanks(pending), *following.leading_lines]
            )
        needed.add(CAUSAL_MASK)
        if condition is not None:
            needed.add(SLIDING_MASK)
            window = condition
    imports = [(MASKING_MODULE, tuple(sorted(needed)))] if needed else []
    return window, module.with_changes(body=body), imports


LEGACY_MASK_MODULE = "modeling_attn_mask_utils"
LEGACY_CAUSAL_MASK = "_prepare_4d_causal_attention_mask"


def _legacy_mask_functions(module: cst.Module) -> tuple[cst.Module, bool]:
    """`m = _prepare_4d_causal_attention_mask(mask, shape, embeds, past)` (transformers'
    `modeling_attn_mask_utils`, four positional arguments) in a method -> `m = create_causal_mask(config=
    self.config, input_embeds=embeds, attention_mask=mask, cache_position=torch.arange(past, past +
    shape[-1], device=embeds.device), past_key_values=None)`: the same causal and padding mask over the
    positions after `past`, in the builder the host replaces."""
    names = {
        alias.evaluated_alias or alias.evaluated_name
        for statement in module.body
        if isinstance(statement, cst.SimpleStatementLine)
        for small in statement.body
        if isinstance(small, cst.ImportFrom)
        and small.module is not None
        and (dotted(small.module) or "").split(".")[-1] == LEGACY_MASK_MODULE
        and not isinstance(small.names, cst.ImportStar)
        for alias in small.names
        if alias.evaluated_name == LEGACY_CAUSAL_MASK
    }
    if not names:
        return module, False
    converted = False

    class _Calls(cst.CSTTransformer):
        def __init__(self) -> None:
            self.depth = 0

        def visit_FunctionDef(self, node: cst.FunctionDef) -> None:
            self.depth += 1

        def leave_FunctionDef(self, original: cst.FunctionDef, updated: cst.FunctionDef) -> cst.FunctionDef:
            self.depth -= 1
            return updated

        def leave_Call(self, original: cst.Call, updated: cst.Call) -> cst.BaseExpression:
            nonlocal converted
            if dotted(updated.func) not in names or self.depth == 0:
                return updated
            args = updated.args
            if len(args) != 4 or any(arg.keyword is not None or arg.star for arg in args):
                return updated
            mask, shape, embeds, past = (code(arg.value) for arg in args)
            converted = True
            return cst.parse_expression(
                f"{CAUSAL_MASK}(config=self.config, input_embeds={embeds}, attention_mask={mask}, "
                f"cache_position=torch.arange({past}, {past} + {shape}[-1], device={embeds}.device), "
                "past_key_values=None)"
            )

    body = [
        statement.visit(_Calls()) if isinstance(statement, cst.ClassDef) else statement
        for statement in module.body
    ]
    return module.with_changes(body=body), converted


def _methods(cls: cst.ClassDef) -> dict[str, cst.FunctionDef]:
    return {s.name.value: s for s in cls.body.body if isinstance(s, cst.FunctionDef)}


def _inherited_methods(body: list[cst.BaseStatement], cls: cst.ClassDef) -> dict[str, cst.FunctionDef]:
    """The methods `cls` inherits from the file's own classes (the nearest base first), those it defines
    itself left out: a mask helper may live on the pretrained base class (`_update_causal_mask`)."""
    classes = {s.name.value: s for s in body if isinstance(s, cst.ClassDef)}
    own = _methods(cls)
    found: dict[str, cst.FunctionDef] = {}
    seen = {cls.name.value}
    pending = [dotted(base.value) for base in cls.bases]
    while pending:
        name = pending.pop(0)
        if name is None or name in seen or name not in classes:
            continue
        seen.add(name)
        for method, function in _methods(classes[name]).items():
            if method not in own:
                found.setdefault(method, function)
        pending.extend(dotted(base.value) for base in classes[name].bases)
    return found


def _drop_methods(body: list[cst.BaseStatement], dropped: set[cst.FunctionDef]) -> None:
    """Remove the method definitions `dropped` (by identity) from the classes of `body`, in place, each
    leaving as many blank lines (later lines keep their numbers)."""
    for position, statement in enumerate(body):
        if not isinstance(statement, cst.ClassDef):
            continue
        names = {f.name.value for f in statement.body.body if isinstance(f, cst.FunctionDef) and f in dropped}
        if not names:
            continue
        new_class, pending = _without_methods(statement, names, None)
        body[position] = new_class
        if pending and position + 1 < len(body):
            following = body[position + 1]
            body[position + 1] = following.with_changes(
                leading_lines=[*_blanks(pending), *following.leading_lines]
            )


def _self_calls(node: cst.CSTNode, methods: dict[str, cst.FunctionDef]) -> list[cst.Call]:
    return [
        n
        for n in walk(node)
        if isinstance(n, cst.Call)
        and isinstance(n.func, cst.Attribute)
        and isinstance(n.func.value, cst.Name)
        and n.func.value.value == "self"
        and n.func.attr.value in methods
    ]


def _reached(name: str, methods: dict[str, cst.FunctionDef]) -> list[str]:
    """`name` and the methods it calls through `self.` (transitively), in call order."""
    order, stack = [], [name]
    while stack:
        current = stack.pop(0)
        if current in order:
            continue
        order.append(current)
        stack += [call.func.attr.value for call in _self_calls(methods[current], methods)]  # type: ignore[attr-defined]
    return order


def _parameters(function: cst.FunctionDef) -> list[str]:
    names = [p.name.value for p in function.params.params]
    return names[1:] if names and names[0] == "self" else names


def _is_mask_builder(name: str, methods: dict[str, cst.FunctionDef]) -> bool:
    """A method taking the mask, the positions and the cache, filling a `torch.finfo(...).min` mask."""
    parameters = set(_parameters(methods[name]))
    if not (MASK_PARAMETERS <= parameters and parameters & CACHE_NAMES):
        return False
    return any(
        isinstance(n, cst.Attribute) and n.attr.value == "min" and "finfo" in code(n.value)
        for reached in _reached(name, methods)
        for n in walk(methods[reached])
    )


def _bound_arguments(function: cst.FunctionDef, call: cst.Call) -> dict[str, cst.BaseExpression] | None:
    """The call's arguments by the parameter names of `function` (None for `*`/`**` arguments)."""
    parameters = _parameters(function)
    bound: dict[str, cst.BaseExpression] = {}
    for position, arg in enumerate(call.args):
        if arg.star:
            return None
        if arg.keyword is not None:
            bound[arg.keyword.value] = arg.value
        elif position < len(parameters):
            bound[parameters[position]] = arg.value
        else:
            return None
    return bound


def _mask_class(
    cls: cst.ClassDef, inherited: dict[str, cst.FunctionDef]
) -> tuple[cst.ClassDef, int, set[cst.FunctionDef], cst.BaseExpression | None] | None:
    """(the class with its forward calling the host's builder and without its own mask helpers, the blank
    lines owed after it, the helpers it inherits from the file's classes that go too, the window
    condition), or None."""
    own = _methods(cls)
    methods = {**inherited, **own}
    forward = own.get("forward")
    if forward is None:
        return None
    for index, statement in enumerate(forward.body.body):
        call = _assigned_self_call(statement, methods)
        if call is None:
            continue
        name = call.func.attr.value  # type: ignore[attr-defined]
        if name == "forward" or not _is_mask_builder(name, methods):
            continue
        bound = _bound_arguments(methods[name], call)
        if bound is None:
            return None
        inputs = [p for p in _parameters(methods[name]) if p not in MASK_PARAMETERS | CACHE_NAMES]
        cache = next((p for p in _parameters(methods[name]) if p in CACHE_NAMES), None)
        if not inputs or inputs[0] not in bound or cache not in bound:
            return None
        condition = _window_condition(name, methods)
        if condition is False:
            return None  # a window under a condition this cannot restate: left as written (R019)
        new_forward = _masked_forward(forward, index, bound, inputs[0], cache, condition)  # type: ignore[arg-type]
        dropped = set(_reached(name, methods)) - {"forward"}
        kept = {**methods, "forward": new_forward}
        if any(
            other not in dropped and _self_calls(kept[other], {d: methods[d] for d in dropped})
            for other in kept
        ):
            return None  # another method still calls the helpers
        new_cls, pending = _without_methods(cls, dropped & set(own), new_forward)
        return new_cls, pending, {methods[d] for d in dropped - set(own)}, condition
    return None


def _droppable(body: list[cst.BaseStatement], caller: cst.ClassDef, helpers: set[cst.FunctionDef]) -> bool:
    """Whether helpers that `caller` inherits can go with its call: no other class of `body` calls one of
    them through `self.` (outside the helpers themselves), and no class is left without a statement."""
    names = {f.name.value: f for f in helpers}
    for statement in body:
        if not isinstance(statement, cst.ClassDef) or statement.name.value == caller.name.value:
            continue
        methods = _methods(statement).values()
        if any(method not in helpers and _self_calls(method, names) for method in methods):
            return False
        if all(isinstance(s, cst.FunctionDef) and s in helpers for s in statement.body.body):
            return False
    return True


def _assigned_self_call(statement: cst.BaseStatement, methods: dict[str, cst.FunctionDef]) -> cst.Call | None:
    """The call of `x = self.<method>(...)`, the whole statement."""
    assigned = _assignment(statement)
    if assigned is None or not isinstance(assigned[1], cst.Call):
        return None
    call = assigned[1]
    return call if _self_calls(call.func, methods) == [] and call in _self_calls(call, methods) else None


def _window_condition(name: str, methods: dict[str, cst.FunctionDef]) -> cst.BaseExpression | bool | None:
    """The condition under which the mask helpers limit the keys to `config.sliding_window`, restated in
    the caller's terms (`self.config...`): None without a window, False when it cannot be restated."""
    for caller in _reached(name, methods):
        for node in walk(methods[caller]):
            if not isinstance(node, cst.If) or not _reads_window(node.test):
                continue
            return _restated(node.test, caller, name, methods)
    return None


WINDOW_SET = m.Comparison(
    left=m.Attribute(attr=m.Name("sliding_window")),
    comparisons=[m.ComparisonTarget(m.IsNot(), m.Name("None"))],
)


def _reads_window(test: cst.BaseExpression) -> bool:
    """A test that the config has a window (`<config>.sliding_window is not None`, in any conjunction)."""
    return any(m.matches(n, WINDOW_SET) for n in walk(test))


def _restated(
    test: cst.BaseExpression, owner: str, root: str, methods: dict[str, cst.FunctionDef]
) -> cst.BaseExpression | bool:
    """`test` of method `owner` with its locals and parameters replaced by what they are bound to, up to
    the root helper's caller (whose `self` is the base model's): False when that is not possible."""
    chain = _call_chain(root, owner, methods)
    if chain is None:
        return False
    expression = test
    for function, call in reversed(chain):
        expression = _substituted(expression, function, call)
        if expression is None:
            return False
    free = names_in(expression) - {"self", "getattr", "hasattr", "None", "True", "False"}
    return False if free else expression


def _call_chain(
    root: str, target: str, methods: dict[str, cst.FunctionDef]
) -> list[tuple[cst.FunctionDef, cst.Call | None]] | None:
    """[(root, None), (callee, its call in root), ..., (target, its call)] along `self.` calls."""
    if root == target:
        return [(methods[root], None)]
    for call in _self_calls(methods[root], methods):
        callee = call.func.attr.value  # type: ignore[attr-defined]
        if callee == root:
            continue
        rest = _call_chain(callee, target, methods)
        if rest is not None:
            return [(methods[root], None), (rest[0][0], call), *rest[1:]]
    return None


def _substituted(
    expression: cst.BaseExpression, function: cst.FunctionDef, call: cst.Call | None
) -> cst.BaseExpression | None:
    """Locals assigned once in `function` -> their value, then parameters -> the call's arguments (a
    root helper's parameters are left to its caller: they stay free and the restatement fails)."""
    assigned: dict[str, list[cst.BaseExpression]] = {}
    for node in walk(function):
        if isinstance(node, cst.Assign):
            for target in node.targets:
                if isinstance(target.target, cst.Name):
                    assigned.setdefault(target.target.value, []).append(node.value)
    locals_ = {name: values[0] for name, values in assigned.items() if len(values) == 1}
    expression = _renamed(expression, {n: locals_[n] for n in names_in(expression) if n in locals_})
    bound = _bound_arguments(function, call) if call is not None else {}
    if bound is None:
        return None
    return _renamed(expression, {n: bound[n] for n in names_in(expression) if n in bound})


def _renamed(
    expression: cst.BaseExpression, replacements: dict[str, cst.BaseExpression]
) -> cst.BaseExpression:
    """`expression` with the variables in `replacements` replaced (attribute and keyword names kept)."""
    if not replacements:
        return expression

    class _Names(cst.CSTTransformer):
        def leave_Name(self, original: cst.Name, updated: cst.Name) -> cst.BaseExpression:
            return replacements.get(updated.value, updated)

        def leave_Attribute(self, original: cst.Attribute, updated: cst.Attribute) -> cst.BaseExpression:
            return updated.with_changes(attr=original.attr)

        def leave_Arg(self, original: cst.Arg, updated: cst.Arg) -> cst.Arg:
            return updated.with_changes(keyword=original.keyword)

    result = expression.visit(_Names())
    assert isinstance(result, cst.BaseExpression)
    return result


def _masked_forward(
    forward: cst.FunctionDef,
    index: int,
    bound: dict[str, cst.BaseExpression],
    embeds: str,
    cache: str,
    condition: cst.BaseExpression | None,
) -> cst.FunctionDef:
    statement = forward.body.body[index]
    assert isinstance(statement, cst.SimpleStatementLine)
    assign = statement.body[0]
    assert isinstance(assign, cst.Assign)
    target = code(assign.targets[0].target)
    arguments = {
        "config": "self.config",
        "input_embeds": code(bound[embeds]),
        "attention_mask": code(bound["attention_mask"]),
        "cache_position": code(bound["cache_position"]),
        "past_key_values": code(bound[cache]),
    }
    call = ", ".join(f"{key}={value}" for key, value in arguments.items())
    lines = []
    function = CAUSAL_MASK
    if condition is not None:
        function = fresh_name("mask_function", names_in(forward))
        lines.append(f"{function} = {SLIDING_MASK} if {code(condition)} else {CAUSAL_MASK}")
    lines.append(f"{target} = {function}({call})")
    new = [cst.parse_statement(line) for line in lines]
    new[0] = new[0].with_changes(leading_lines=statement.leading_lines)
    body = _padded(list(forward.body.body), index, new, 1)
    return forward.with_changes(body=forward.body.with_changes(body=body))


def _without_methods(
    cls: cst.ClassDef, dropped: set[str], forward: cst.FunctionDef | None
) -> tuple[cst.ClassDef, int]:
    """The class without the methods named (blank lines in their place), and the count of blank lines
    still owed after its last statement."""
    body: list[cst.BaseStatement] = []
    pending = 0
    for statement in cls.body.body:
        if isinstance(statement, cst.FunctionDef) and statement.name.value in dropped:
            pending += _line_count(statement)
            continue
        if (
            forward is not None
            and isinstance(statement, cst.FunctionDef)
            and statement.name.value == "forward"
        ):
            statement = forward
        if pending:
            statement = statement.with_changes(leading_lines=[*_blanks(pending), *statement.leading_lines])
            pending = 0
        body.append(statement)
    return cls.with_changes(body=cls.body.with_changes(body=body)), pending


# --- inline eager attention -------------------------------------------------------------------------------


# --- forward parameters every call binds to the same name ----------------------------------------------


def _merged_inputs(module: cst.Module) -> cst.Module:
    """A forward parameter that every call of the class's instances binds to the same name as an earlier
    one (`self.attn(normed, normed, normed, mask)` into `forward(self, v, k, q, mask)`) is that one input:
    the parameter goes, its reads up to its first assignment read the earlier parameter, and the calls stop
    passing it. The calls are those of the attributes the file's classes build as the class (`self.x =
    C(...)`, read only as `self.x(...)`); a class built anywhere else is left as written."""
    body = list(module.body)
    walked = _walked(body)  # every statement's nodes, walked once (again only after a change)
    classes = {s.name.value: s for s in body if isinstance(s, cst.ClassDef)}
    for name, cls in classes.items():
        forward = _methods(cls).get("forward")
        calls = _instance_calls(walked, name)
        if forward is None or not calls or not isinstance(forward.body, cst.IndentedBlock):
            continue
        names = _parameters(forward)
        merged = _same_names(forward, calls)
        if not merged:
            continue
        new_forward = _forward_merged(forward, merged)
        if new_forward is None:
            continue
        dropped = {names.index(later) for later in merged}
        body = [
            _with_method(s, new_forward) if isinstance(s, cst.ClassDef) and s.name.value == name else s
            for s in body
        ]
        body = [_calls_without(s, set(calls), dropped) if isinstance(s, cst.ClassDef) else s for s in body]
        walked = _walked(body)
    return module.with_changes(body=body)


def _walked(body: list[cst.BaseStatement]) -> list[tuple[cst.BaseStatement, list[cst.CSTNode]]]:
    return [(statement, list(walk(statement))) for statement in body]


def _instance_calls(
    walked: list[tuple[cst.BaseStatement, list[cst.CSTNode]]], name: str
) -> dict[tuple[str, str], list[cst.Call]]:
    """{(owner, attribute): its calls} for every `self.<attribute> = <name>(...)` of the file's classes
    (`walked`: each top-level statement with its nodes); empty when the class is built or an attribute
    read in any other way."""
    found: dict[tuple[str, str], list[cst.Call]] = {}
    for statement, nodes in walked:
        builds = [n for n in nodes if isinstance(n, cst.Call) and dotted(n.func) == name]
        if isinstance(statement, cst.FunctionDef) and builds:
            return {}
        if not isinstance(statement, cst.ClassDef):
            continue
        assigned = {id(a.value): a for a in nodes if isinstance(a, cst.Assign) and len(a.targets) == 1}
        attributes = set()
        for node in builds:
            parent = assigned.get(id(node))
            target = parent.targets[0].target if parent is not None else None
            if not (isinstance(target, cst.Attribute) and dotted(target.value) == "self"):
                return {}
            attributes.add(target.attr.value)
        for attribute in attributes:
            reads = [
                n
                for n in nodes
                if isinstance(n, cst.Attribute) and dotted(n.value) == "self" and n.attr.value == attribute
            ]
            read_ids = {id(n) for n in reads}
            calls = [n for n in nodes if isinstance(n, cst.Call) and id(n.func) in read_ids]
            if len(reads) != len(calls) + 1:  # the assignment, then calls only
                return {}
            found[(statement.name.value, attribute)] = calls
    return found


def _same_names(forward: cst.FunctionDef, calls: dict[tuple[str, str], list[cst.Call]]) -> dict[str, str]:
    """{later parameter: earlier parameter} for positional parameters every call binds to the same name."""
    names = _parameters(forward)
    bindings = []
    for call in (c for group in calls.values() for c in group):
        if any(arg.star for arg in call.args):
            return {}
        bound = _bound_arguments(forward, call)
        if bound is None:
            return {}
        bindings.append(bound)
    merged: dict[str, str] = {}
    for index, later in enumerate(names):
        for earlier in names[:index]:
            if earlier in merged:
                continue
            if all(
                isinstance(bound.get(later), cst.Name)
                and isinstance(bound.get(earlier), cst.Name)
                and bound[later].value == bound[earlier].value  # type: ignore[union-attr]
                for bound in bindings
            ):
                merged[later] = earlier
                break
    return merged


def _forward_merged(forward: cst.FunctionDef, merged: dict[str, str]) -> cst.FunctionDef | None:
    """The forward without the merged parameters, their reads up to their first assignment (a top-level
    `name = ...`) reading the earlier parameter; None where a read cannot be placed before or after it."""
    statements = list(forward.body.body)
    for later, earlier in merged.items():
        for index, statement in enumerate(statements):
            assigned = _assignment(statement)
            if assigned is not None and assigned[0] == later:
                small = statement.body[0]  # type: ignore[union-attr]
                value = _renamed(small.value, {later: cst.Name(earlier)})
                statements[index] = statement.with_changes(body=[small.with_changes(value=value)])  # type: ignore[union-attr]
                break
            if later in _assigned_in(statement):
                return None  # assigned in a nested block: left as written
            if later in names_in(statement):
                statements[index] = statement.visit(_Rename(later, earlier))  # type: ignore[assignment]
        else:
            return None  # never assigned: every read would need the rename, as above, but keep it simple
    params = [p for p in forward.params.params if p.name.value not in merged]
    if params and forward.params.params[-1].name.value in merged:
        params[-1] = params[-1].with_changes(comma=forward.params.params[-1].comma)
    return forward.with_changes(
        params=forward.params.with_changes(params=params), body=forward.body.with_changes(body=statements)
    )


class _Rename(cst.CSTTransformer):
    def __init__(self, old: str, new: str) -> None:
        super().__init__()
        self.old, self.new = old, new

    def leave_Name(self, original: cst.Name, updated: cst.Name) -> cst.Name:
        return updated.with_changes(value=self.new) if updated.value == self.old else updated

    def leave_Attribute(self, original: cst.Attribute, updated: cst.Attribute) -> cst.Attribute:
        return updated.with_changes(attr=original.attr)

    def leave_Arg(self, original: cst.Arg, updated: cst.Arg) -> cst.Arg:
        return updated.with_changes(keyword=original.keyword)


def _calls_without(cls: cst.ClassDef, attributes: set[tuple[str, str]], dropped: set[int]) -> cst.ClassDef:
    """The class's calls `self.<attribute>(...)` (of `attributes` it owns) without the positional
    arguments at `dropped` (positions after `self`)."""
    own = {attribute for owner, attribute in attributes if owner == cls.name.value}
    if not own:
        return cls

    class _Calls(cst.CSTTransformer):
        def leave_Call(self, original: cst.Call, updated: cst.Call) -> cst.Call:
            func = updated.func
            if not (
                isinstance(func, cst.Attribute) and dotted(func.value) == "self" and func.attr.value in own
            ):
                return updated
            positional = [i for i, arg in enumerate(updated.args) if arg.keyword is None]
            removed = {positional[i] for i in dropped if i < len(positional)}
            args = [arg for i, arg in enumerate(updated.args) if i not in removed]
            if args and len(args) < len(updated.args) and updated.args[-1] is not args[-1]:
                args[-1] = args[-1].with_changes(comma=updated.args[-1].comma)
            return updated.with_changes(args=args)

    result = cls.visit(_Calls())
    assert isinstance(result, cst.ClassDef)
    return result


# --- a forward's inputs updated in place -----------------------------------------------------------------

_IN_PLACE = {cst.AddAssign: cst.Add, cst.SubtractAssign: cst.Subtract, cst.MultiplyAssign: cst.Multiply}


def _inputs_kept(module: cst.Module) -> cst.Module:
    """`p += x` (`-=`, `*=`) on a parameter `p` of a class's `forward`, at the top of its body -> `p = p + x`:
    the same value in the forward, while the caller's tensor stays as it was (a position module adding
    its offset to the caller's `position_ids` in place shifts them again at every later forward, a
    recomputation under gradient checkpointing included)."""
    body = []
    for statement in module.body:
        if isinstance(statement, cst.ClassDef):
            forward = _methods(statement).get("forward")
            if forward is not None and isinstance(forward.body, cst.IndentedBlock):
                kept = _forward_inputs_kept(forward)
                if kept is not forward:
                    statement = _with_method(statement, kept)
        body.append(statement)
    return module.with_changes(body=body)


def _forward_inputs_kept(forward: cst.FunctionDef) -> cst.FunctionDef:
    parameters = set(_parameters(forward))
    statements = list(forward.body.body)
    changed = False
    for index, statement in enumerate(statements):
        if not (isinstance(statement, cst.SimpleStatementLine) and len(statement.body) == 1):
            continue
        small = statement.body[0]
        if not (
            isinstance(small, cst.AugAssign)
            and isinstance(small.target, cst.Name)
            and small.target.value in parameters
            and type(small.operator) in _IN_PLACE
        ):
            continue
        value = small.value
        if isinstance(value, cst.BinaryOperation | cst.BooleanOperation | cst.IfExp):
            value = value.with_changes(lpar=[cst.LeftParen()], rpar=[cst.RightParen()])
        operation = cst.BinaryOperation(small.target, _IN_PLACE[type(small.operator)](), value)
        statements[index] = statement.with_changes(
            body=[cst.Assign([cst.AssignTarget(small.target)], operation)]
        )
        changed = True
    return forward.with_changes(body=forward.body.with_changes(body=statements)) if changed else forward


# --- a causal LM's shifted cross-entropy written out ----------------------------------------------------

LABELS = "labels"
CROSS_ENTROPY = frozenset({"CrossEntropyLoss", "nn.CrossEntropyLoss", "torch.nn.CrossEntropyLoss"})
_CONTIGUOUS = r"(?:\.contiguous\(\))?"
_SHIFTED_LOGITS = re.compile(rf"(\w+)\[\.\.\., :-1, :\]{_CONTIGUOUS}")
_SHIFTED_LABELS = re.compile(rf"{LABELS}\[\.\.\., 1:\]{_CONTIGUOUS}")


def _transformers_losses(module: cst.Module) -> cst.Module:
    body = list(module.body)
    for position, cls in enumerate(body):
        if not isinstance(cls, cst.ClassDef):
            continue
        forward = _methods(cls).get("forward")
        if forward is None or not isinstance(forward.body, cst.IndentedBlock):
            continue
        statements = list(forward.body.body)
        for index, statement in enumerate(statements):
            loss = _hand_written_loss(statement)
            if loss is None:
                continue
            assert isinstance(statement, cst.If)
            block = statement.with_changes(body=statement.body.with_changes(body=[loss]))
            new_forward = forward.with_changes(
                body=forward.body.with_changes(body=_padded(statements, index, [block], 1))
            )
            body[position] = _with_method(cls, new_forward)
            break
    return module.with_changes(body=body)


def _hand_written_loss(statement: cst.BaseStatement) -> cst.SimpleStatementLine | None:
    """`loss = self.loss_function(...)` for an `if labels is not None:` block computing the shifted
    cross-entropy by hand (the module docstring's form), else None."""
    if not (
        isinstance(statement, cst.If)
        and statement.orelse is None
        and m.matches(statement.test, IS_NOT_NONE)
        and m.matches(statement.test.left, m.Name(LABELS))  # type: ignore[attr-defined]
    ):
        return None
    logits = shifted_logits = shifted_labels = loss_fn = loss = None
    vocab: str | None = None
    for inner in statement.body.body:
        found = _assignment(inner)
        if found is None:
            return None
        target, value = found
        text = code(value)
        if (match := _SHIFTED_LOGITS.fullmatch(text)) is not None and shifted_logits is None:
            logits, shifted_logits = match.group(1), target
        elif _SHIFTED_LABELS.fullmatch(text) and shifted_labels is None:
            shifted_labels = target
        elif isinstance(value, cst.Call) and not value.args and code(value.func) in CROSS_ENTROPY:
            loss_fn = target
        elif target == shifted_logits and (view := re.fullmatch(rf"{target}\.view\(-1, (.+)\)", text)):
            vocab = view.group(1)
        elif target == shifted_labels and re.fullmatch(rf"{target}\.(view\(-1\)|to\([\w.]+\))", text):
            continue
        elif loss_fn is not None and text == f"{loss_fn}({shifted_logits}, {shifted_labels})":
            loss = target
        else:
            return None
    if logits is None or shifted_labels is None or loss is None:
        return None
    call = (
        f"{loss} = self.loss_function(logits={logits}, labels={LABELS}, "
        f"vocab_size={vocab or 'self.config.vocab_size'})"
    )
    return cst.parse_statement(call)  # type: ignore[return-value]


# --- an eager function adding its mask unconditionally ---------------------------------------------------


def _conditional_masks(module: cst.Module) -> cst.Module:
    body = [_with_conditional_mask(s) if isinstance(s, cst.FunctionDef) else s for s in module.body]
    return module.with_changes(body=body)


def _with_conditional_mask(function: cst.FunctionDef) -> cst.FunctionDef:
    """`function` with its unconditional mask statements under `if <mask> is not None:` (unchanged when
    it is not an eager attention function of that form)."""
    parameters = _parameters(function)
    mask = "attention_mask" if "attention_mask" in parameters else None
    if mask is None and len(parameters) > 4:
        mask = parameters[4]
    body = list(function.body.body)
    if mask is None or not isinstance(function.body, cst.IndentedBlock):
        return function
    found = _unconditional_mask(body, mask)
    if found is None:
        return function
    start, end = found
    moved = [body[start].with_changes(leading_lines=[]), *body[start + 1 : end + 1]]
    leading = list(body[start].leading_lines)
    blank = next((i for i, line in enumerate(leading) if line.comment is None), None)
    if blank is not None:  # the `if` line takes a blank line's place: later lines keep their numbers
        leading.pop(blank)
    condition = cst.If(
        test=cst.Comparison(
            left=cst.Name(mask), comparisons=[cst.ComparisonTarget(cst.IsNot(), cst.Name("None"))]
        ),
        body=cst.IndentedBlock(body=moved),
        leading_lines=leading,
    )
    body[start : end + 1] = [condition]
    return function.with_changes(body=function.body.with_changes(body=body))


def _unconditional_mask(body: list[cst.BaseStatement], mask: str) -> tuple[int, int] | None:
    """(first, last) top-level statements that add `mask` to attention scores unconditionally: `s = s + mask`
    alone, or `t = <expression of mask>` right before `s = s + t`; the scores `s` computed earlier by a
    `matmul(q, k.transpose(..))`, the mask read nowhere else."""
    readers = [i for i, statement in enumerate(body) if mask in names_in(statement)]
    if not readers or any(isinstance(body[i], cst.If | cst.With | cst.For | cst.While) for i in readers):
        return None
    for index, statement in enumerate(body):
        found = _assignment(statement)
        if found is None:
            continue
        target, value = found
        if not (
            isinstance(value, cst.BinaryOperation)
            and isinstance(value.operator, cst.Add)
            and isinstance(value.left, cst.Name)
            and value.left.value == target
            and isinstance(value.right, cst.Name)
        ):
            continue
        if not any(
            (earlier := _assignment(s)) is not None
            and earlier[0] == target
            and _scores(earlier[1]) is not None
            for s in body[:index]
        ):
            continue
        added = value.right.value
        if added == mask and readers == [index]:
            return index, index
        previous = _assignment(body[index - 1]) if index > 0 else None
        if (
            previous is not None
            and previous[0] == added
            and readers == [index - 1]
            and all(added not in names_in(s) for s in body[index + 1 :])
        ):
            return index - 1, index
        return None
    return None


@dataclass(frozen=True)
class _Region:
    """The statements of a forward computing eager attention inline."""

    start: int  # first statement moved (the K/V expansion, else the scores)
    end: int  # last statement moved (the transpose back to (B, S, h, d))
    dropped: tuple[int, ...]  # size checks of the output, dropped
    query: str
    key: str
    value: str
    mask: str
    scores: str
    output: str
    scaling: cst.BaseExpression
    dropout: cst.BaseExpression
    extra: tuple[str, ...] = ()  # forward parameters the kernel reads besides q, k, v and the mask
    deferred: tuple[int, ...] = ()  # statements that only copy the weights out: they move after the kernel


def _inline_attention(module: cst.Module, window: cst.BaseExpression | None) -> tuple[cst.Module, bool]:
    body = list(module.body)
    taken = {s.name.value for s in body if isinstance(s, cst.ClassDef | cst.FunctionDef)}
    outlined = False
    configured: set[str] = set()  # attention classes that now take their callers' config
    position = 0
    while position < len(body):
        cls = body[position]
        position += 1
        if not isinstance(cls, cst.ClassDef):
            continue
        methods = _methods(cls)
        original, init = methods.get("forward"), methods.get("__init__")
        if original is None:
            continue
        forward = _normalised_kernel(_leading_shape_read(original))
        region = _region(forward)
        if region is None:  # heads folded into the batch (`torch.bmm`): read in 4-D where that finds one
            batched = _normalised_kernel(batched_as_matmul(_leading_shape_read(original)))
            found = _region(batched)
            if found is not None:
                forward, region = batched, found
        if region is not None and region.deferred:
            forward = _with_deferred(forward, region)
            region = _region(forward)
        if region is not None and init is not None and _config_from_callers(body, cls.name.value):
            init = _config_taken(init)
            cls = _with_method(cls, init)
            configured.add(cls.name.value)
        if region is None and init is not None and _holds_config(init):
            helper = _helper_kernel(cls, forward)
            if helper is not None and (helper.window is None or window is None):
                name = fresh_name(EAGER_FUNCTION, taken)
                taken.add(name)
                cls = _with_method(cls, _config_kept(init))
                new_cls, function = _outlined_helper(cls, forward, helper, name, window)
                body[position - 1] = new_cls
                position += _place(body, position - 1, function)
                outlined = True
                continue
        if region is None or init is None or "config" not in _self_attributes(init):
            if forward is not original:
                body[position - 1] = _with_method(cls, forward)
            continue
        forward = _unsharded_views(forward, _unsharded_attributes(init))
        name = fresh_name(EAGER_FUNCTION, taken)
        taken.add(name)
        region = _region(forward)
        assert region is not None, "a view's sizes do not change the region"
        function = _outlined(forward, region, name)
        body[position - 1] = _with_method(cls, _dispatching(forward, region, name, window))
        position += _place(body, position - 1, function)
        outlined = True
    if configured:
        body = [_passing_config(s, configured) if isinstance(s, cst.ClassDef) else s for s in body]
    return module.with_changes(body=body), outlined


def _config_from_callers(body: list[cst.BaseStatement], name: str) -> bool:
    """Whether class `name` keeps no config and takes none, while every call of it is in the `__init__` of
    a class taking a plain `config` parameter (none in module-level functions): it can take theirs first,
    for the dispatch to read `self.config._attn_implementation` (NXS004 then threads `trn_config` after it)."""
    calls = 0
    for statement in body:
        if isinstance(statement, cst.FunctionDef):
            if any(isinstance(n, cst.Call) and dotted(n.func) == name for n in walk(statement)):
                return False
            continue
        if not isinstance(statement, cst.ClassDef):
            continue
        methods = _methods(statement)
        if statement.name.value == name:
            init = methods.get("__init__")
            if init is None or CONFIG in _self_attributes(init) or _parent_init(init) is None:
                return False
            params = init.params
            if isinstance(params.star_arg, cst.Param) or CONFIG in {
                p.name.value for p in (*params.posonly_params, *params.params, *params.kwonly_params)
            }:
                return False
        for method_name, method in methods.items():
            built = [n for n in walk(method) if isinstance(n, cst.Call) and dotted(n.func) == name]
            if not built:
                continue
            plain = {p.name.value: p for p in method.params.params}
            if method_name != "__init__" or CONFIG not in plain or plain[CONFIG].default is not None:
                return False
            calls += len(built)
    return calls > 0


def _config_taken(init: cst.FunctionDef) -> cst.FunctionDef:
    """`__init__(self, config, ...)` keeping it as `self.config` (on its `super().__init__()` line)."""
    params = list(init.params.params)
    new = cst.Param(cst.Name(CONFIG), comma=cst.Comma(whitespace_after=cst.SimpleWhitespace(" ")))
    if len(params) == 1 and isinstance(params[0].comma, cst.MaybeSentinel):
        params[0] = params[0].with_changes(comma=cst.Comma(whitespace_after=cst.SimpleWhitespace(" ")))
        new = new.with_changes(comma=cst.MaybeSentinel.DEFAULT)
    params.insert(1, new)
    return _config_kept(init.with_changes(params=init.params.with_changes(params=params)))


def _passing_config(cls: cst.ClassDef, configured: set[str]) -> cst.ClassDef:
    """Every call of a class in `configured` in the class's methods passes `config` first."""

    class _Calls(cst.CSTTransformer):
        def leave_Call(self, original: cst.Call, updated: cst.Call) -> cst.Call:
            if dotted(updated.func) not in configured:
                return updated
            space = cst.Comma(whitespace_after=cst.SimpleWhitespace(" "))
            first = cst.Arg(cst.Name(CONFIG), comma=space if updated.args else cst.MaybeSentinel.DEFAULT)
            return updated.with_changes(args=[first, *updated.args])

    result = cls.visit(_Calls())
    assert isinstance(result, cst.ClassDef)
    return result


@dataclass(frozen=True)
class _Helper:
    """A method of the attention class computing the eager kernel, called once from its forward as
    `out, weights = self.<method>(q, k, v, mask, ...)` and ending in `return out, weights` (B, h, S, d)."""

    method: cst.FunctionDef
    call_index: int  # the forward statement calling it
    targets: tuple[str, str]  # the names the forward assigns the output and weights to
    bound: dict[str, cst.BaseExpression]  # the method's parameters -> the call's arguments
    query: str
    key: str
    value: str
    mask: str
    scores: str
    output: str
    scaling: cst.BaseExpression
    dropout: cst.BaseExpression
    extra: tuple[cst.Param, ...]  # the method's other parameters (a head mask), passed by keyword
    window: tuple[int, cst.BaseExpression, cst.BaseExpression] | None  # a mask buffer's window (see below)


def _pair_call(statement: cst.BaseStatement) -> tuple[tuple[str, str], cst.Call] | None:
    """`(a, b)` and the call of `a, b = <call>`."""
    if not (isinstance(statement, cst.SimpleStatementLine) and len(statement.body) == 1):
        return None
    small = statement.body[0]
    if not (isinstance(small, cst.Assign) and len(small.targets) == 1 and isinstance(small.value, cst.Call)):
        return None
    target = small.targets[0].target
    if not (
        isinstance(target, cst.Tuple)
        and len(target.elements) == 2
        and all(isinstance(e.value, cst.Name) for e in target.elements)
    ):
        return None
    names = tuple(e.value.value for e in target.elements)  # type: ignore[attr-defined]
    return names, small.value  # type: ignore[return-value]


def _helper_kernel(cls: cst.ClassDef, forward: cst.FunctionDef) -> _Helper | None:
    """The eager kernel computed in a helper method the forward calls once (the pre-refactor GPT form)."""
    methods = _methods(cls)
    helpers = {n: f for n, f in methods.items() if n not in ("forward", "__init__")}
    for index, statement in enumerate(forward.body.body):
        found = _pair_call(statement)
        if found is None or _self_calls(found[1].func, helpers) != [] or not _self_calls(found[1], helpers):
            continue
        targets, call = found
        if call not in _self_calls(call, helpers):
            continue
        name = call.func.attr.value  # type: ignore[attr-defined]
        method = helpers[name]
        calls = [c for f in methods.values() for c in _self_calls(f, {name: method})]
        bound = _bound_arguments(method, call)
        if len(calls) != 1 or bound is None or method.params.star_kwarg or method.params.kwonly_params:
            return None
        if isinstance(method.params.star_arg, cst.Param) or method.decorators:
            return None
        kernel = _kernel(method)
        if kernel is None:
            return None
        query, key, value, mask, scores, output, scaling, dropout = kernel
        parameters = _parameters(method)
        essential = (query, key, value, mask)
        if not set(essential) <= set(bound) or len(set(essential)) != 4:
            return None
        extra = tuple(
            p for p in method.params.params if p.name.value in parameters and p.name.value not in essential
        )
        if any(p.default is None and p.name.value not in bound for p in extra):
            return None
        # a causal mask buffer of the module's own: the flash kernel is causal, a window is passed to it
        init = methods["__init__"]
        built = [_causal_buffer(init, b) for b in sorted(_buffers_read(init, list(method.body.body)))]
        windows = [b for b in built if isinstance(b, tuple)]
        if any(b is None for b in built) or len(windows) > 1:
            return None
        window = windows[0] if windows else None
        return _Helper(
            method,
            index,
            targets,
            bound,
            query,
            key,
            value,
            mask,
            scores,
            output,
            scaling,
            dropout,
            extra,
            window,
        )
    return None


def _kernel(method: cst.FunctionDef) -> tuple | None:
    """(q, k, v, mask, scores, output, scaling, dropout) of a method body computing eager attention and
    ending in `return output, scores`; the scores may be scaled by the statement after them."""
    body = list(method.body.body)
    parameters = _parameters(method)
    last = body[-1] if body else None
    if not (
        isinstance(last, cst.SimpleStatementLine)
        and isinstance(last.body[0], cst.Return)
        and isinstance(last.body[0].value, cst.Tuple)
        and len(last.body[0].value.elements) == 2
        and all(isinstance(e.value, cst.Name) for e in last.body[0].value.elements)
    ):
        return None
    output, weights = (e.value.value for e in last.body[0].value.elements)  # type: ignore[attr-defined]
    if any(isinstance(n, cst.Return) for s in body[:-1] for n in walk(s)):
        return None
    for index, statement in enumerate(body):
        assigned = _assignment(statement)
        found = _scores(assigned[1]) if assigned else None
        if found is None:
            continue
        scores, (query, key, scaling) = assigned[0], found  # type: ignore[index]
        if scores != weights:
            return None
        after = index + 1
        if after < len(body) and _mask_name([body[after]], scores, parameters) is not None:
            after += 1  # the scaling may come after the mask is added (`(q k^T + mask) / s`)
        following = _assignment(body[after]) if after < len(body) else None
        if (
            following is not None
            and following[0] == scores
            and isinstance(following[1], cst.BinaryOperation)
            and isinstance(following[1].operator, cst.Divide | cst.Multiply)
            and m.matches(following[1].left, m.Name(scores))
            and code(scaling) == "1.0"
        ):
            factor = following[1].right
            if isinstance(factor, cst.BinaryOperation):
                factor = factor.with_changes(lpar=[cst.LeftParen()], rpar=[cst.RightParen()])
            scaling = (
                cst.BinaryOperation(left=cst.Integer("1"), operator=cst.Divide(), right=factor)
                if isinstance(following[1].operator, cst.Divide)
                else factor
            )
        ends = [
            a
            for s in body[index + 1 : -1]
            if (a := _assignment(s)) is not None
            and a[0] == output
            and (ops := _matmul_operands(a[1])) is not None
            and m.matches(ops[0], m.Name(scores))
            and isinstance(ops[1], cst.Name)
        ]
        if len(ends) != 1:
            return None
        value = _matmul_operands(ends[0][1])[1].value  # type: ignore[index,union-attr]
        mask = _mask_name(body[index:-1], scores, parameters)
        if mask is None or not {query, key, value} <= set(parameters):
            return None
        return query, key, value, mask, scores, output, scaling, _dropout(body[index:-1], scores)
    return None


def _outlined_helper(
    cls: cst.ClassDef, forward: cst.FunctionDef, helper: _Helper, name: str, window: cst.BaseExpression | None
) -> tuple[cst.ClassDef, cst.FunctionDef]:
    """The class without the helper, its forward dispatching over transformers' table, and the helper's body
    as the module-level eager function (returning the current (B, S, h, d) layout)."""
    statements = list(helper.method.body.body[:-1])
    region = _Region(
        start=0,
        end=len(statements),
        dropped=(),
        query=helper.query,
        key=helper.key,
        value=helper.value,
        mask=helper.mask,
        scores=helper.scores,
        output=helper.output,
        scaling=helper.scaling,
        dropout=helper.dropout,
    )
    back = cst.parse_statement(f"{helper.output} = {helper.output}.transpose(1, 2).contiguous()\n")
    shell = helper.method.with_changes(
        body=helper.method.body.with_changes(body=[*statements, back]), decorators=()
    )
    function = _outlined(shell, region, name)
    extra = [p.with_changes(comma=cst.MaybeSentinel.DEFAULT, annotation=p.annotation) for p in helper.extra]
    params = list(function.params.params)
    function = function.with_changes(params=function.params.with_changes(params=[*params, *extra]))
    caller = _Region(
        start=helper.call_index,
        end=helper.call_index,
        dropped=(),
        query=code(helper.bound[helper.query]),
        key=code(helper.bound[helper.key]),
        value=code(helper.bound[helper.value]),
        mask=code(helper.bound[helper.mask]),
        scores=helper.targets[1],
        output=helper.targets[0],
        scaling=helper.scaling,
        dropout=helper.dropout,
    )
    new_forward = _dispatching(forward, caller, name, window)
    body = list(new_forward.body.body)
    # the call's statements: interface, if, call; extra arguments by keyword, then the source's layout back
    index = helper.call_index + 2
    call_line = body[index]
    passed = "".join(
        f", {p.name.value}={code(helper.bound[p.name.value])}"
        for p in helper.extra
        if p.name.value in helper.bound
    )
    text = code(call_line).rstrip("\n")
    assert text.endswith(")")
    init = _methods(cls)["__init__"]
    if helper.window is not None:
        attribute = fresh_name(WINDOW_ATTRIBUTE, set(_self_attributes(init)))
        passed += f", sliding_window=self.{attribute}"
        init = _window_recorded(init, *helper.window, attribute)
    restored = f"{caller.output} = {caller.output}.transpose(1, 2)\n"
    body[index : index + 1] = [
        cst.parse_statement(text[:-1] + passed + ")\n"),
        cst.parse_statement(restored),
    ]
    new_forward = new_forward.with_changes(body=new_forward.body.with_changes(body=body))
    new_cls, _ = _without_methods(cls, {helper.method.name.value}, new_forward)
    return _with_method(new_cls, init), function


def _place(body: list[cst.BaseStatement], position: int, function: cst.FunctionDef) -> int:
    """Put `function` after the class at `position` where the blank lines of dropped definitions leave
    room for it (the file's later lines keep their numbers), else before the class."""
    size = _line_count(function) + 2
    following = body[position + 1] if position + 1 < len(body) else None
    if following is not None:
        blanks = list(following.leading_lines)
        free = next((i for i, line in enumerate(blanks) if line.comment is not None), len(blanks))
        if free >= size + 2:
            body[position + 1] = following.with_changes(leading_lines=blanks[size:])
            body.insert(position + 1, function.with_changes(leading_lines=_blanks(2)))
            return 1
    cls = body[position]
    body.insert(position, function.with_changes(leading_lines=cls.leading_lines))
    body[position + 1] = cls.with_changes(leading_lines=_blanks(2))
    return 1


def _with_method(cls: cst.ClassDef, method: cst.FunctionDef) -> cst.ClassDef:
    body = [
        method if isinstance(s, cst.FunctionDef) and s.name.value == method.name.value else s
        for s in cls.body.body
    ]
    return cls.with_changes(body=cls.body.with_changes(body=body))


def _holds_config(init: cst.FunctionDef) -> bool:
    """Whether the constructor keeps its config (`self.config = config`) or takes a `config` parameter
    that `_config_kept` can keep: the dispatch reads `self.config._attn_implementation`."""
    if CONFIG in _self_attributes(init):
        return True
    return CONFIG in _parameters(init) and _parent_init(init) is not None


def _config_kept(init: cst.FunctionDef) -> cst.FunctionDef:
    """The constructor with `self.config = config` after its `super().__init__()` when it does not keep its
    config: on the same line, so that the file's later lines keep their numbers."""
    if CONFIG in _self_attributes(init):
        return init
    index = _parent_init(init)
    assert index is not None
    body = list(init.body.body)
    line = body[index]
    assert isinstance(line, cst.SimpleStatementLine)
    kept = cst.parse_statement(f"self.{CONFIG} = {CONFIG}\n")
    assert isinstance(kept, cst.SimpleStatementLine)
    body[index] = line.with_changes(body=[*line.body, *kept.body])
    return init.with_changes(body=init.body.with_changes(body=body))


def _parent_init(init: cst.FunctionDef) -> int | None:
    """The index of the constructor's top-level `super().__init__()` statement, if it has one."""
    pattern = m.SimpleStatementLine(
        body=[m.Expr(m.Call(func=m.Attribute(value=m.Call(func=m.Name("super")), attr=m.Name("__init__"))))]
    )
    return next((i for i, s in enumerate(init.body.body) if m.matches(s, pattern)), None)


def _self_attributes(init: cst.FunctionDef) -> dict[str, cst.BaseExpression]:
    found: dict[str, cst.BaseExpression] = {}
    for node in walk(init):
        if isinstance(node, cst.Assign) and len(node.targets) == 1:
            target = node.targets[0].target
            if isinstance(target, cst.Attribute) and dotted(target.value) == "self":
                found[target.attr.value] = node.value
    return found


def _unsharded_attributes(init: cst.FunctionDef) -> set[str]:
    """`self.x` set to an unsharded size of the config (`config.num_attention_heads`, ...), or to a choice
    between such sizes and literals (`config.num_kv_heads if ... else 1`), or to the output width of a
    linear the constructor builds (`self.embed_dim = embed_dim` beside `nn.Linear(embed_dim, embed_dim)`:
    the projections' width, which each rank holds a part of)."""
    attributes = _self_attributes(init)
    widths = {
        code(value.args[1].value)
        for value in attributes.values()
        if isinstance(value, cst.Call)
        and (dotted(value.func) or "").endswith("Linear")
        and len(value.args) >= 2
        and all(arg.keyword is None for arg in value.args[:2])
    }
    return {
        attribute
        for attribute, value in attributes.items()
        if _unsharded_value(value, set()) or (isinstance(value, cst.Name) and value.value in widths)
    }


def _unsharded_value(value: cst.BaseExpression, unsharded: set[str]) -> bool:
    """A config field in UNSHARDED_FIELDS, a `self.x` of `unsharded`, or a conditional choosing between
    those (and literals), one of them at least."""
    if isinstance(value, cst.IfExp):
        branches = (value.body, value.orelse)
        return all(_unsharded_value(b, unsharded) or isinstance(b, cst.Integer) for b in branches) and any(
            _unsharded_value(b, unsharded) for b in branches
        )
    if not isinstance(value, cst.Attribute):
        return False
    if dotted(value.value) == "self":
        return value.attr.value in unsharded
    return value.attr.value in UNSHARDED_FIELDS


LEADING_UNPACK = m.Tuple(elements=[m.Element(m.Name()), m.Element(m.Name()), m.Element(m.Name("_"))])


def _batch_read(source: str) -> m.BaseMatcherNode:
    """`x.shape[0]` or `x.size(0)` of `source`."""
    return m.Subscript(
        value=m.Attribute(value=m.Name(source), attr=m.Name("shape")),
        slice=[m.SubscriptElement(m.Index(m.Integer("0")))],
    ) | m.Call(func=m.Attribute(value=m.Name(source), attr=m.Name("size")), args=[m.Arg(m.Integer("0"))])


def _leading_shape_read(forward: cst.FunctionDef) -> cst.FunctionDef:
    """`a, b, _ = x.size()` (or `x.shape`) of the forward's input `x` -> `a, b = x.shape[:-1]`; `b =
    x.shape[0]` (or `x.size(0)`) -> `b = x.shape[:-1][0]`."""
    params = [p.name.value for p in forward.params.params]
    if len(params) < 2:
        return forward
    source = params[1]
    read = m.Call(func=m.Attribute(value=m.Name(source), attr=m.Name("size")), args=[]) | m.Attribute(
        value=m.Name(source), attr=m.Name("shape")
    )
    body = list(forward.body.body)
    for index, statement in enumerate(body):
        if not (isinstance(statement, cst.SimpleStatementLine) and len(statement.body) == 1):
            continue
        small = statement.body[0]
        if (
            isinstance(small, cst.Assign)
            and len(small.targets) == 1
            and isinstance(small.targets[0].target, cst.Name)
            and m.matches(small.value, _batch_read(source))
        ):  # `b = x.shape[0]` (or `x.size(0)`) -> `b = x.shape[:-1][0]`: the batch of the leading shape
            assign = small.with_changes(value=cst.parse_expression(f"{source}.shape[:-1][0]"))
            body[index] = statement.with_changes(body=[assign])
            return forward.with_changes(body=forward.body.with_changes(body=body))
        if not (
            isinstance(small, cst.Assign)
            and len(small.targets) == 1
            and m.matches(small.targets[0].target, LEADING_UNPACK)
            and m.matches(small.value, read)
        ):
            continue
        target = small.targets[0].target
        assert isinstance(target, cst.Tuple)
        elements = list(target.elements[:2])
        elements[1] = elements[1].with_changes(comma=cst.MaybeSentinel.DEFAULT)
        assign = small.with_changes(
            targets=[small.targets[0].with_changes(target=target.with_changes(elements=elements))],
            value=cst.parse_expression(f"{source}.shape[:-1]"),
        )
        body[index] = statement.with_changes(body=[assign])
        return forward.with_changes(body=forward.body.with_changes(body=body))
    return forward


def _unsharded_views(forward: cst.FunctionDef, unsharded: set[str]) -> cst.FunctionDef:
    """`view`/`reshape` sizes reading an unsharded count or width (`self.num_heads`) -> -1."""
    if not unsharded:
        return forward

    locals_ = {  # forward locals choosing between unsharded sizes (`n = self.a if f else self.b`)
        assigned[0]
        for statement in forward.body.body
        if (assigned := _assignment(statement)) is not None and _unsharded_value(assigned[1], unsharded)
    }

    def reads(value: cst.BaseExpression) -> bool:
        if isinstance(value, cst.BinaryOperation) and isinstance(value.operator, cst.Multiply):
            return reads(value.left) or reads(value.right)  # `self.num_heads * self.head_dim`
        if isinstance(value, cst.Name):
            return value.value in locals_
        return (
            isinstance(value, cst.Attribute)
            and dotted(value.value) == "self"
            and value.attr.value in unsharded
        )

    class _Views(cst.CSTTransformer):
        def leave_Call(self, original: cst.Call, updated: cst.Call) -> cst.Call:
            func = updated.func
            if not (isinstance(func, cst.Attribute) and func.attr.value in ("view", "reshape")):
                return updated
            reads_ = [i for i, arg in enumerate(updated.args) if reads(arg.value)]
            if len(reads_) != 1 or any(code(arg.value) == "-1" for arg in updated.args):
                return updated
            args = list(updated.args)
            args[reads_[0]] = args[reads_[0]].with_changes(value=cst.parse_expression("-1"))
            return updated.with_changes(args=args)

    result = forward.visit(_Views())
    assert isinstance(result, cst.FunctionDef)
    return result


MATMUL = m.Call(func=m.Attribute(value=m.Name("torch"), attr=m.Name("matmul")))


def _matmul_operands(node: cst.BaseExpression) -> tuple[cst.BaseExpression, cst.BaseExpression] | None:
    if m.matches(node, MATMUL) and len(node.args) == 2:  # type: ignore[attr-defined]
        return node.args[0].value, node.args[1].value  # type: ignore[attr-defined]
    if isinstance(node, cst.BinaryOperation) and isinstance(node.operator, cst.MatrixMultiply):
        return node.left, node.right
    return None


def _assignment(statement: cst.BaseStatement) -> tuple[str, cst.BaseExpression] | None:
    if isinstance(statement, cst.SimpleStatementLine) and len(statement.body) == 1:
        small = statement.body[0]
        if isinstance(small, cst.Assign) and len(small.targets) == 1:
            target = small.targets[0].target
            if isinstance(target, cst.Name):
                return target.value, small.value
    return None


def _scores(value: cst.BaseExpression) -> tuple[str, str, cst.BaseExpression] | None:
    """(q, k, scaling) of `matmul(q, k.transpose(..)) [/ or *] factor`."""
    factor: cst.BaseExpression = cst.Float("1.0")
    product = value
    if isinstance(value, cst.BinaryOperation) and isinstance(value.operator, cst.Divide | cst.Multiply):
        product = value.left
        right = value.right
        if isinstance(right, cst.BinaryOperation):
            right = right.with_changes(lpar=[cst.LeftParen()], rpar=[cst.RightParen()])
        factor = (
            cst.BinaryOperation(left=cst.Integer("1"), operator=cst.Divide(), right=right)
            if isinstance(value.operator, cst.Divide)
            else right
        )
    operands = _matmul_operands(product)
    if operands is None:
        return None
    query, key = operands
    if not (
        isinstance(query, cst.Name)
        and isinstance(key, cst.Call)
        and isinstance(key.func, cst.Attribute)
        and key.func.attr.value == "transpose"
        and isinstance(key.func.value, cst.Name)
    ):
        return None
    return query.value, key.func.value.value, factor


def _normalised_kernel(forward: cst.FunctionDef) -> cst.FunctionDef:
    """An inline kernel's mask added inside its softmax, `s = softmax(s + mask, ...)` (a forward
    parameter `mask`), as the mask block and a softmax of the scores; and the softmax's `dtype=x.dtype`
    of the forward's input `x` read from the query instead (the same dtype: the projections keep it), so
    that the kernel reads only the query, keys, values and mask."""
    params = [p.name.value for p in forward.params.params]
    body = list(forward.body.body)
    for index, statement in enumerate(body):
        assigned = _assignment(statement)
        found = _scores(assigned[1]) if assigned else None
        if found is None:
            continue
        scores, query = assigned[0], found[0]  # type: ignore[index]
        for later in range(index + 1, len(body)):
            value = _assignment(body[later])
            if value is None or value[0] != scores or not isinstance(value[1], cst.Call):
                continue
            call = value[1]
            if not (dotted(call.func) or "").endswith("softmax") or not call.args:
                break
            first = call.args[0].value
            if not (
                isinstance(first, cst.BinaryOperation)
                and isinstance(first.operator, cst.Add)
                and m.matches(first.left, m.Name(scores))
                and isinstance(first.right, cst.Name)
                and first.right.value in params
            ):
                break
            mask = first.right.value
            args = [call.args[0].with_changes(value=cst.Name(scores)), *call.args[1:]]
            if len(params) > 1:
                args = [
                    a.with_changes(value=cst.Attribute(cst.Name(query), cst.Name("dtype")))
                    if a.keyword is not None
                    and a.keyword.value == "dtype"
                    and m.matches(a.value, m.Attribute(value=m.Name(params[1]), attr=m.Name("dtype")))
                    else a
                    for a in args
                ]
            softmax = body[later].with_changes(  # type: ignore[union-attr]
                body=[body[later].body[0].with_changes(value=call.with_changes(args=args))],  # type: ignore[union-attr]
                leading_lines=[],
            )
            block = cst.parse_statement(f"if {mask} is not None:\n    {scores} = {scores} + {mask}\n")
            block = block.with_changes(leading_lines=body[later].leading_lines)
            body[later : later + 1] = [block, softmax]
            return forward.with_changes(body=forward.body.with_changes(body=body))
        break
    return forward


def _extra_scaling(statement: cst.BaseStatement, scores: str) -> cst.BaseExpression | None:
    """The factor of `scores /= x` (1 / x) or `scores *= x` (x)."""
    if not (isinstance(statement, cst.SimpleStatementLine) and len(statement.body) == 1):
        return None
    small = statement.body[0]
    if not (isinstance(small, cst.AugAssign) and m.matches(small.target, m.Name(scores))):
        return None
    right = small.value
    if isinstance(right, cst.BinaryOperation):
        right = right.with_changes(lpar=[cst.LeftParen()], rpar=[cst.RightParen()])
    if isinstance(small.operator, cst.DivideAssign):
        return cst.BinaryOperation(left=cst.Integer("1"), operator=cst.Divide(), right=right)
    if isinstance(small.operator, cst.MultiplyAssign):
        return right
    return None


def _region(forward: cst.FunctionDef) -> _Region | None:
    body = list(forward.body.body)
    parameters = [p.name.value for p in forward.params.params]
    for index, statement in enumerate(body):
        assigned = _assignment(statement)
        found = _scores(assigned[1]) if assigned else None
        if found is None:
            continue
        scores, (query, key, scaling) = assigned[0], found  # type: ignore[index]
        extra = _extra_scaling(body[index + 1], scores) if index + 1 < len(body) else None
        if extra is not None:
            scaling = extra if code(scaling) == "1.0" else cst.BinaryOperation(scaling, cst.Multiply(), extra)
        probabilities = {scores} | _dropped_out(body[index + 1 :], scores)
        end = next(
            (
                i
                for i in range(index + 1, len(body))
                if (a := _assignment(body[i])) is not None
                and (ops := _matmul_operands(a[1])) is not None
                and isinstance(ops[0], cst.Name)
                and ops[0].value in probabilities
                and isinstance(ops[1], cst.Name)
            ),
            None,
        )
        if end is None:
            return None
        output, value_expression = _assignment(body[end])  # type: ignore[misc]
        value = _matmul_operands(value_expression)[1].value  # type: ignore[index,union-attr]
        start = index
        while start > 0 and _expands(body[start - 1], (key, value)):
            start -= 1
        inner = body[index:end]
        mask = _mask_name(inner, scores, parameters)
        if mask is None:
            return None
        after, dropped = end + 1, []
        while after < len(body) and (_checks(body[after], output) or _views_as_is(body[after], output)):
            dropped.append(after)
            after += 1
        if after >= len(body) or not _transposes_back(body[after], output):
            return None
        deferred = _weight_copies(body, index, end, after, scores)
        moved = [
            s for i, s in enumerate(body[start : after + 1], start) if i not in dropped and i not in deferred
        ]
        read_before = {n for s in body[:start] for n in names_in(s)}
        inputs = [p.name.value for p in forward.params.params][2:]
        free = {n for s in moved for n in names_in(s)} & (read_before | set(inputs))
        free -= {query, key, value, mask, "self"} | _module_level_hint(forward)
        extra = tuple(name for name in inputs if name in free)
        if free - set(extra) or _read_after(body, start, after, moved, {scores, output}):
            return None
        return _Region(
            start=start,
            end=after,
            dropped=tuple(dropped),
            query=query,
            key=key,
            value=value,
            mask=mask,
            scores=scores,
            output=output,
            scaling=scaling,
            dropout=_dropout(inner, scores),
            extra=extra,
            deferred=deferred,
        )
    return None


def _dropped_out(statements: list[cst.BaseStatement], scores: str) -> set[str]:
    """Names bound to a dropout of the scores (`p = dropout(scores, ...)`)."""
    found = set()
    for statement in statements:
        assigned = _assignment(statement)
        if assigned is None or not isinstance(assigned[1], cst.Call) or not assigned[1].args:
            continue
        func = dotted(assigned[1].func) or ""
        if "dropout" in func and m.matches(assigned[1].args[0].value, m.Name(scores)):
            found.add(assigned[0])
    return found


def _assigned_in(statement: cst.CSTNode) -> set[str]:
    return {
        name
        for n in walk(statement)
        if isinstance(n, cst.AssignTarget | cst.AugAssign | cst.AnnAssign)
        for name in names_in(n.target)
    }


def _weight_copies(
    body: list[cst.BaseStatement], scores_index: int, end: int, after: int, scores: str
) -> tuple[int, ...]:
    """Statements between the scores and the output matmul that only bind copies of the weights for the
    forward to return (`if output_attentions: w_out = w else: w_out = None`): they read nothing the rest of
    the kernel assigns and assign nothing it reads, so they can follow the kernel, reading the weights it
    returns instead."""
    found = []
    for index in range(scores_index + 1, end):
        statement = body[index]
        assigned = _assigned_in(statement)
        if not assigned or scores in assigned or scores not in names_in(statement):
            continue
        later = body[index + 1 : after + 1]
        reads_later = {n for s in later for n in names_in(s)}
        assigned_later = {n for s in later for n in _assigned_in(s)}
        if assigned & (reads_later | assigned_later) or (names_in(statement) - assigned) & assigned_later:
            continue
        found.append(index)
    return tuple(found)


def _with_deferred(forward: cst.FunctionDef, region: _Region) -> cst.FunctionDef:
    """`forward` with the region's weight copies moved right after its end."""
    body = list(forward.body.body)
    moved = [body[i] for i in region.deferred]
    kept = [s for i, s in enumerate(body) if i not in region.deferred]
    position = region.end + 1 - len(moved)
    return forward.with_changes(
        body=forward.body.with_changes(body=[*kept[:position], *moved, *kept[position:]])
    )


def _read_after(
    body: list[cst.BaseStatement], start: int, after: int, moved: list[cst.BaseStatement], returned: set[str]
) -> bool:
    """Whether the forward reads, after the kernel, a name the kernel assigns other than what it returns."""
    assigned = {n for s in moved for n in _assigned_in(s)} - returned
    return bool(assigned & {n for s in body[after + 1 :] for n in names_in(s)})


def _module_level_hint(forward: cst.FunctionDef) -> set[str]:
    """Names the forward reads without assigning them (module-level functions, builtins)."""
    assigned = {p.name.value for p in forward.params.params}
    for node in walk(forward):
        if isinstance(node, cst.AssignTarget | cst.For | cst.WithItem):
            assigned |= names_in(node.target if not isinstance(node, cst.WithItem) else node)  # type: ignore[union-attr]
    return names_in(forward) - assigned


def _expands(statement: cst.BaseStatement, names: tuple[str, str]) -> bool:
    """`k = f(k, ...)` for k one of `names` (a K/V head expansion)."""
    assigned = _assignment(statement)
    if assigned is None or assigned[0] not in names or not isinstance(assigned[1], cst.Call):
        return False
    args = assigned[1].args
    return (
        bool(args)
        and m.matches(args[0].value, m.Name(assigned[0]))
        and isinstance(assigned[1].func, cst.Name)
    )


def _mask_name(statements: list[cst.BaseStatement], scores: str, parameters: list[str]) -> str | None:
    """The forward parameter of the `if <mask> is not None:` block adding it to the scores."""
    for statement in statements:
        if (
            isinstance(statement, cst.If)
            and statement.orelse is None
            and m.matches(
                statement.test,
                m.Comparison(left=m.Name(), comparisons=[m.ComparisonTarget(m.IsNot(), m.Name("None"))]),
            )
        ):
            mask = statement.test.left.value  # type: ignore[attr-defined]
            adds = any(
                (
                    isinstance(n, cst.AugAssign)
                    and isinstance(n.operator, cst.AddAssign)
                    and code(n.target) == scores
                )
                or (
                    isinstance(n, cst.Assign)
                    and isinstance(n.value, cst.BinaryOperation)
                    and isinstance(n.value.operator, cst.Add)
                    and code(n.value.left) == scores
                    and code(n.targets[0].target) == scores
                )
                for n in walk(statement.body)
            )
            if adds and mask in parameters:
                return mask
    return None


def _checks(statement: cst.BaseStatement, output: str) -> bool:
    """`if <reads output's size>: raise ...` (a size check of the attention output)."""
    return (
        isinstance(statement, cst.If)
        and statement.orelse is None
        and output in names_in(statement.test)
        and all(
            isinstance(s, cst.SimpleStatementLine) and all(isinstance(x, cst.Raise) for x in s.body)
            for s in statement.body.body
        )
    )


def _views_as_is(statement: cst.BaseStatement, output: str) -> bool:
    """`out = out.view(a, b, c, d)`: the (B, h, S, d) output viewed as the shape it has (the sizes read the
    unsharded head count, so the statement goes with the kernel)."""
    assigned = _assignment(statement)
    return (
        assigned is not None
        and assigned[0] == output
        and m.matches(
            assigned[1],
            m.Call(
                func=m.Attribute(value=m.Name(output), attr=m.Name("view")),
                args=[m.Arg(keyword=None)] * 4,
            ),
        )
    )


def _transposes_back(statement: cst.BaseStatement, output: str) -> bool:
    assigned = _assignment(statement)
    if assigned is None or assigned[0] != output:
        return False
    value = assigned[1]
    if m.matches(value, m.Call(func=m.Attribute(attr=m.Name("contiguous")), args=[])):
        value = value.func.value  # type: ignore[attr-defined]
    return m.matches(
        value,
        m.Call(
            func=m.Attribute(value=m.Name(output), attr=m.Name("transpose")),
            args=[m.Arg(m.Integer("1")), m.Arg(m.Integer("2"))],
        ),
    ) or m.matches(
        value,
        m.Call(
            func=m.Attribute(value=m.Name(output), attr=m.Name("permute")),
            args=[m.Arg(m.Integer(str(i))) for i in (0, 2, 1, 3)],
        ),
    )


def _dropout(statements: list[cst.BaseStatement], scores: str) -> cst.BaseExpression:
    """The dropout probability the inline code applies to the scores while training (0.0 without)."""
    for statement in statements:
        assigned = _assignment(statement)
        if assigned is None or not isinstance(assigned[1], cst.Call):
            continue
        call = assigned[1]
        if assigned[0] != scores and not (call.args and m.matches(call.args[0].value, m.Name(scores))):
            continue
        func = dotted(call.func) or ""
        if func.endswith("functional.dropout") or func.endswith("F.dropout"):
            p = next((a.value for a in call.args if a.keyword and a.keyword.value == "p"), None)
            if p is None and len(call.args) > 1 and call.args[1].keyword is None:
                p = call.args[1].value
            if p is not None:
                return cst.parse_expression(f"{code(p)} if self.training else 0.0")
        if func.startswith("self.") and func.count(".") == 1 and "dropout" in func:
            return cst.parse_expression(f"{func}.p if self.training else 0.0")
    return cst.Float("0.0")


def _outlined(forward: cst.FunctionDef, region: _Region, name: str) -> cst.FunctionDef:
    """The moved statements as a module-level eager function of the current shape."""
    statements = [
        s
        for i, s in enumerate(forward.body.body[region.start : region.end + 1], region.start)
        if i not in region.dropped
    ]
    statements[0] = statements[0].with_changes(
        leading_lines=[line for line in statements[0].leading_lines if line.comment is not None]
    )

    class _Module(cst.CSTTransformer):
        def leave_Name(self, original: cst.Name, updated: cst.Name) -> cst.Name:
            return updated.with_changes(value="module") if updated.value == "self" else updated

        def leave_Attribute(self, original: cst.Attribute, updated: cst.Attribute) -> cst.Attribute:
            return updated.with_changes(attr=original.attr)

        def leave_AugAssign(self, original: cst.AugAssign, updated: cst.AugAssign) -> cst.BaseSmallStatement:
            if isinstance(updated.operator, cst.AddAssign) and code(updated.target) == region.scores:
                return cst.Assign(
                    targets=[cst.AssignTarget(updated.target)],
                    value=cst.BinaryOperation(left=updated.target, operator=cst.Add(), right=updated.value),
                )
            return updated

    moved = [s.visit(_Module()) for s in statements]
    extra = "".join(f"{parameter}=None, " for parameter in region.extra)
    header = (
        f"def {name}(module, {region.query}, {region.key}, {region.value}, {region.mask}, scaling, "
        f"dropout=0.0, {extra}**kwargs):\n"
        f"    return {region.output}, {region.scores}\n"
    )
    function = cst.parse_statement(header)
    assert isinstance(function, cst.FunctionDef)
    body = [*moved, *function.body.body]
    return function.with_changes(body=function.body.with_changes(body=body))


def _dispatching(
    forward: cst.FunctionDef, region: _Region, name: str, window: cst.BaseExpression | None
) -> cst.FunctionDef:
    """The forward picking its attention function from transformers' table, the eager one by default."""
    body = list(forward.body.body)
    interface = fresh_name(INTERFACE, names_in(forward))
    arguments = (
        f"self, {region.query}, {region.key}, {region.value}, {region.mask}, "
        f"dropout={code(region.dropout)}, scaling={code(region.scaling)}"
    )
    arguments += "".join(f", {parameter}={parameter}" for parameter in region.extra)
    if window is not None:
        arguments += f", sliding_window=self.config.sliding_window if {code(window)} else None"
    lines = [
        f"{interface} = {name}\n",
        f'if self.config.{IMPLEMENTATION} != "{EAGER_KEY}":\n'
        f"    {interface} = {ATTENTION_TABLE}[self.config.{IMPLEMENTATION}]\n",
        f"{region.output}, {region.scores} = {interface}({arguments})\n",
    ]
    new = [cst.parse_statement(line) for line in lines]
    new[0] = new[0].with_changes(
        leading_lines=[line for line in body[region.start].leading_lines if line.comment is None]
    )
    body = _padded(body, region.start, new, region.end + 1 - region.start)
    return forward.with_changes(body=forward.body.with_changes(body=body))


# --- line numbers and imports -----------------------------------------------------------------------------


def _line_count(statement: cst.CSTNode) -> int:
    return cst.Module(body=[statement]).code.count("\n")  # type: ignore[list-item]


def _padded(
    body: list[cst.BaseStatement], index: int, new: list[cst.BaseStatement], replaced: int
) -> list[cst.BaseStatement]:
    """`body` with `new` in place of its statements `index .. index + replaced - 1`, blank lines added
    before the next statement up to the line count of what they replace."""
    old = body[index : index + replaced]
    missing = sum(_line_count(s) for s in old) - sum(_line_count(s) for s in new)
    rest = body[index + replaced :]
    if missing > 0 and rest:
        rest[0] = rest[0].with_changes(
            leading_lines=[*(cst.EmptyLine(indent=False) for _ in range(missing)), *rest[0].leading_lines]
        )
    return [*body[:index], *new, *rest]


def _imports_name(module: cst.Module, name: str) -> bool:
    return any(
        isinstance(small, cst.ImportFrom)
        and not isinstance(small.names, cst.ImportStar)
        and any((alias.evaluated_alias or alias.evaluated_name) == name for alias in small.names)
        for statement in module.body
        if isinstance(statement, cst.SimpleStatementLine)
        for small in statement.body
    )


def _with_imports(module: cst.Module, imports: list[tuple[str, tuple[str, ...]]]) -> cst.Module:
    """`from <module> import <names>` after the last top-level import, each taking the place of a blank
    line below the imports where there is one (so the file's later lines keep their numbers)."""
    if not imports:
        return module
    body = list(module.body)
    last = max(
        (
            i
            for i, s in enumerate(body)
            if isinstance(s, cst.SimpleStatementLine) and isinstance(s.body[0], cst.Import | cst.ImportFrom)
        ),
        default=-1,
    )
    new = [cst.parse_statement(f"from {source} import {', '.join(names)}") for source, names in imports]
    following = last + 1
    if following < len(body):
        blanks = list(body[following].leading_lines)
        for _ in new:
            if blanks and blanks[0].comment is None:
                blanks.pop(0)
        body[following] = body[following].with_changes(leading_lines=blanks)
    return module.with_changes(body=[*body[: last + 1], *new, *body[following:]])


WINDOW_ATTRIBUTE = "sliding_window"
XOR = m.Call(func=m.Attribute(value=m.Name("torch"), attr=m.Name("bitwise_xor") | m.Name("logical_xor")))
TRIL = m.Call(func=m.Attribute(value=m.Name("torch"), attr=m.Name("tril")))
ONES = m.Call(func=m.Attribute(value=m.Name("torch"), attr=m.Name("ones")))


def _buffers_read(init: cst.FunctionDef, statements: list[cst.BaseStatement]) -> set[str]:
    """The buffers `__init__` registers (`self.register_buffer("x", ...)`) that `statements` read."""
    registered = {
        n.args[0].value.evaluated_value
        for n in walk(init)
        if isinstance(n, cst.Call)
        and dotted(n.func) == "self.register_buffer"
        and n.args
        and isinstance(n.args[0].value, cst.SimpleString)
    }
    read = {
        n.attr.value
        for s in statements
        for n in walk(s)
        if isinstance(n, cst.Attribute) and dotted(n.value) == "self"
    }
    return registered & read


def _causal_buffer(
    init: cst.FunctionDef, buffer: str
) -> tuple[int, cst.BaseExpression, cst.BaseExpression] | bool | None:
    """How `__init__` builds a boolean key mask registered as `buffer`: True for the plain causal
    `torch.tril(torch.ones(...))`, (index of the `if`, window, condition) where it is then limited to the
    last `window` keys under a condition (`m = torch.bitwise_xor(m, torch.tril(m, -window))`), None for
    anything else (the flash path could not honour it)."""
    body = list(init.body.body)
    local, registration = None, None
    for index, statement in enumerate(body):
        for n in walk(statement):
            if (
                isinstance(n, cst.Call)
                and dotted(n.func) == "self.register_buffer"
                and len(n.args) >= 2
                and isinstance(n.args[0].value, cst.SimpleString)
                and n.args[0].value.evaluated_value == buffer
                and isinstance(n.args[1].value, cst.Name)
            ):
                local, registration = n.args[1].value.value, index
    if local is None:
        return None
    writes = [
        (i, s)
        for i, s in enumerate(body[:registration])
        if any(
            isinstance(n, cst.AssignTarget | cst.AugAssign) and local in names_in(n.target) for n in walk(s)
        )
    ]
    if not writes:
        return None
    first = _assignment(writes[0][1])
    causal = first is not None and any(
        m.matches(n, TRIL) and len(n.args) == 1 and m.matches(n.args[0].value, ONES)  # type: ignore[attr-defined]
        for n in walk(first[1])
    )
    if not causal or local in names_in(first[1]):  # type: ignore[index]
        return None
    if len(writes) == 1:
        return True
    if len(writes) != 2 or not isinstance(writes[1][1], cst.If) or writes[1][1].orelse is not None:
        return None
    index, limit = writes[1]
    inner = limit.body.body  # type: ignore[attr-defined]
    assigned = _assignment(inner[0]) if len(inner) == 1 else None
    if assigned is None or assigned[0] != local or not m.matches(assigned[1], XOR):
        return None
    args = assigned[1].args  # type: ignore[attr-defined]
    if len(args) != 2 or not m.matches(args[0].value, m.Name(local)) or not m.matches(args[1].value, TRIL):
        return None
    tril = args[1].value.args
    if not (
        len(tril) == 2
        and m.matches(tril[0].value, m.Name(local))
        and isinstance(tril[1].value, cst.UnaryOperation)
        and isinstance(tril[1].value.operator, cst.Minus)
    ):
        return None
    return index, tril[1].value.expression, limit.test  # type: ignore[attr-defined]


def _window_recorded(
    init: cst.FunctionDef,
    index: int,
    window: cst.BaseExpression,
    condition: cst.BaseExpression,
    attribute: str,
) -> cst.FunctionDef:
    """`__init__` recording the window after the `if` that applies it (`self.<attribute> = W if C else
    None`), taking the place of a blank line below it where there is one."""
    body = list(init.body.body)
    line = cst.parse_statement(f"self.{attribute} = {code(window)} if {code(condition)} else None\n")
    following = body[index + 1] if index + 1 < len(body) else None
    if following is not None and following.leading_lines and following.leading_lines[0].comment is None:
        body[index + 1] = following.with_changes(leading_lines=following.leading_lines[1:])
        line = line.with_changes(leading_lines=())
    body.insert(index + 1, line)
    return init.with_changes(body=init.body.with_changes(body=body))
