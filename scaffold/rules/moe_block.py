"""NXS040 moe-block: a sparse mixture-of-experts block becomes NxD's `MoE`, and the router logits flow out.

- The block class (recognised in analysis, `Blueprint.moe`) is replaced by a subclass of NxD's `MoE` and
  `CustomModule`: a `RouterTopK` (softmax, the source's top-k and router jitter) and `ExpertMLPs` (gated,
  dropless, the source's renormalisation of the top-k probabilities), drawn like the source's linears, with
  the specs of the package's `moe_expert_weights.py` that map the per-expert checkpoint weights onto the
  3-D expert tensors and the router's weight onto NxD's name. A shared expert stays the source's (now
  parallel) MLP, added to the routed output, scaled by the sigmoid of its gate when the source has one.
  Its forward returns the router logits batch-major, as transformers does, also under SP.
- A block that routes with a function of its own (PhiMoE's `sparsemixer`; `MoEBlock.routing`) gets a
  router of its own instead of `RouterTopK`, `<Block>Router` before the block: a subclass of NxD's
  `RouterBase` whose forward passes NxD's router logits to the source's function (kept in the file) and
  returns its weights as the affinities of the chosen experts (no renormalisation in `ExpertMLPs`).
- The decoder layer keeps the logits it unpacked as `_` and returns `(hidden_states, router_logits)`
  (None from a dense MLP when the block is built under a condition); a source whose layers take
  `output_router_logits` returns and collects them already, and is left as it is.
- The base model takes `output_router_logits` (default: the config's), collects the layers' logits and
  returns them in its output's `router_logits`, which the causal LM's auxiliary loss (kept from the source,
  with the config's coefficient) reads.
- The expert class is removed when nothing else uses it (a dense MLP layer may).
- A block whose experts are packed parameters (`MoEBlock.packed`: a router module and two modules holding one
  `[experts, ., .]` tensor each, gate | up and down) is rebuilt the same way; its expert spec maps the packed
  tensors (`layout="packed_concatenated"`, `transposed=True` for tensors stored as `F.linear` applies them)
  and the router's linear by its path (`router.layer.weight`). The packed-expert and router classes go with
  their `_init_weights` branches (NxD's experts are drawn by the block's `init_method`).

The inserted code comes from templates/code/moe_block.py; the weight specs are the package's
moe_expert_weights.py (templates/modules), written beside the modeling file.
"""

from __future__ import annotations

import libcst as cst

from ..blueprint import MoEBlock
from ..syntax import (
    code,
    docstring_count,
    find_method,
    names_in,
    self_calls,
    walk,
    with_arguments,
    with_method,
)
from . import layer_code, templates
from .base import Rule, stored_example, with_todo

TEMPLATES = "moe_block"
TEMPLATE_CLASS = "SparseMoeBlock"
OMITTED = cst.Name("OMITTED")  # a keyword argument filled with it is dropped
ROUTER_LOGITS = "router_logits"
ALL_ROUTER_LOGITS = "all_router_logits"
OUTPUT_ROUTER_LOGITS = "output_router_logits"
SPEC_DEFAULTS = {"experts_name": "experts", "gate_proj_name": "gate_proj", "up_proj_name": "up_proj"}
SPEC_DEFAULTS["down_proj_name"] = "down_proj"
FUNCTION_ROUTER_CLASS = "SourceRouter"
ROUTER_SUFFIX = "Router"  # the router class of a block that routes with a function: `<Block>Router`
ROUTER = "router"  # the local name of the router in the block's __init__ template
TOPK_ROUTER_WORDS = "a softmax top-k router"  # in the block's docstring
TOPK_ROUTER = "RouterTopK"
TWO_BLANK = [cst.EmptyLine(), cst.EmptyLine()]
INIT_WEIGHTS = "_init_weights"
PACKED_CONCATENATED = "packed_concatenated"  # ExpertMLPsSpec's layout of a packed gate | up


class MoEBlocks(Rule):
    CODE = "NXS040"
    NAME = "moe-block"
    SUMMARY = (
        "sparse MoE block -> NxD MoE (RouterTopK + ExpertMLPs + expert specs); router logits to the loss"
    )
    ADVICE = (
        "Blocks that route otherwise than softmax -> top-k over one linear (or top-k of a router module's "
        "logits, then a softmax over the k) or a function of the modeling file on its logits (R029), or have "
        "another shape (R001: a list of gated expert MLPs, or two packed-expert modules), are refused. Disabling it keeps the source's block as written, which is yours to finish: its router "
        "is then a plain replicated linear (no sequence-parallel mark) and its experts a loop of parallel MLPs "
        "without expert parallelism."
    )
    REQUIRES = ("NXS004",)
    EXAMPLES = (
        stored_example(CODE, "mixtral", "MixtralSparseMoeBlock"),
        stored_example(CODE, "qwen3_moe", "Qwen3MoeDecoderLayer"),
        stored_example(CODE, "mixtral", "MixtralModel"),
    )

    def visit_Module(self, node: cst.Module) -> None:
        self._converted = False  # a block class of this module became NxD's MoE

    def visit_FunctionDef(self, node: cst.FunctionDef) -> bool:
        return False  # the rule rewrites whole classes and methods

    def _blocks(self) -> list[MoEBlock]:
        return [block for block in self.blueprint.moe if self.refusal_for(block.owner) is None]

    def leave_ClassDef(
        self, original_node: cst.ClassDef, updated_node: cst.ClassDef
    ) -> cst.ClassDef | cst.FlattenSentinel[cst.ClassDef]:
        name = updated_node.name.value
        for block in self.blueprint.moe:
            if block.owner == name:
                refusal = self.refusal_for(name)
                return (
                    with_todo(updated_node, refusal)
                    if refusal is not None
                    else self._block(updated_node, block)
                )
        replaced = {
            name for block in self._blocks() if block.packed is not None for name in block.packed.classes
        }
        if replaced and find_method(updated_node, INIT_WEIGHTS) is not None:
            updated_node = _without_init_branches(updated_node, replaced)
        blocks = [block for block in self._blocks() if not block.logits_plumbed]
        if not blocks:
            return updated_node
        if any(block.layer_class == name for block in blocks):
            return self._decoder_layer(updated_node, blocks)
        if name == self.blueprint.base_model_class:
            return self._base_model(updated_node, any(block.dense_layers for block in blocks))
        return updated_node

    def leave_Module(self, original_node: cst.Module, updated_node: cst.Module) -> cst.Module:
        blocks = self._blocks()
        if not blocks:
            return updated_node
        module = layer_code.with_init_helper(self, updated_node) if self._converted else updated_node
        body = list(module.body)
        for block in blocks:
            replaced = block.packed.classes if block.packed is not None else (block.expert_class,)
            for name in replaced:
                others = [
                    statement
                    for statement in body
                    if not (isinstance(statement, cst.ClassDef) and statement.name.value == name)
                ]
                if all(name not in names_in(statement) for statement in others):
                    body = others  # the experts (and a packed block's router) live in NxD's MoE now
        return module.with_changes(body=body)

    # --- the block ------------------------------------------------------------------------------------

    def _block(self, cls: cst.ClassDef, block: MoEBlock) -> cst.ClassDef | cst.FlattenSentinel[cst.ClassDef]:
        style = self.blueprint.style

        def expression(text: str) -> cst.BaseExpression:
            return cst.parse_expression(text)

        def name_or_default(keyword: str, value: str) -> cst.BaseExpression:
            return OMITTED if SPEC_DEFAULTS[keyword] == value else cst.SimpleString(f'"{value}"')

        normalize = block.normalize.resolved or block.normalize.source
        (new,), needed = templates.fill_statements(
            TEMPLATES,
            "sparse_block",
            style,
            renames={TEMPLATE_CLASS: block.owner},
            config_class=cst.Name(self.blueprint.config_class),
            num_experts=expression(_resolved(block.num_experts)),
            top_k=expression(_resolved(block.top_k)),
            hidden_size=expression(_resolved(block.hidden_size)),
            intermediate_size=expression(_resolved(block.intermediate_size)),
            hidden_act=expression(_resolved(block.activation)),
            normalize=expression(normalize),
            jitter=expression(_resolved(block.jitter)) if block.jitter is not None else OMITTED,
            renamed=cst.parse_expression(f'{{"router.linear_router.weight": "{block.router}.weight"}}'),
            **_expert_names(block, name_or_default),
        )
        if block.routing is not None:  # the block gets a router of its own instead
            needed = {import_ for import_ in needed if import_.name != TOPK_ROUTER}
        self.add_template_imports(needed)
        assert isinstance(new, cst.ClassDef)
        self._converted = True
        new = _without_omitted(new)
        if block.shared_expert is not None:
            new = self._with_shared_expert(new, cls, block)
        if block.routing is None:
            return new.with_changes(leading_lines=cls.leading_lines)
        router, new = self._with_function_router(new, block)
        return cst.FlattenSentinel(
            [router.with_changes(leading_lines=cls.leading_lines), new.with_changes(leading_lines=TWO_BLANK)]
        )

    def _with_function_router(self, new: cst.ClassDef, block: MoEBlock) -> tuple[cst.ClassDef, cst.ClassDef]:
        """(the router class that routes with the source's function, the block built with it)."""
        assert block.routing is not None and block.routing_function is not None
        style = self.blueprint.style
        name = f"{block.owner}{ROUTER_SUFFIX}"
        (router,), needed = templates.fill_statements(
            TEMPLATES,
            "function_router",
            style,
            renames={FUNCTION_ROUTER_CLASS: name},
            config_class=cst.Name(self.blueprint.config_class),
            num_experts=cst.parse_expression(_resolved(block.num_experts)),
            top_k=cst.parse_expression(_resolved(block.top_k)),
            hidden_size=cst.parse_expression(_resolved(block.hidden_size)),
            jitter=cst.parse_expression(_resolved(block.jitter)) if block.jitter is not None else OMITTED,
            routing=cst.parse_expression(block.routing),
        )
        self.add_template_imports(needed)
        (instance,), needed = templates.fill_statements(
            TEMPLATES, "function_router_instance", style, renames={"router_class": name}
        )
        self.add_template_imports(needed)
        init = find_method(new, "__init__")
        assert init is not None
        body = [instance if _assigns_name(statement, ROUTER) else statement for statement in init.body.body]
        new = with_method(new, init.with_changes(body=init.body.with_changes(body=body)))
        docstring = new.body.body[0]
        assert isinstance(docstring, cst.SimpleStatementLine)
        expression = docstring.body[0]
        assert isinstance(expression, cst.Expr) and isinstance(expression.value, cst.SimpleString)
        text = expression.value.value.replace(TOPK_ROUTER_WORDS, f"a `{block.routing_function}` router")
        docstring = docstring.with_changes(
            body=[expression.with_changes(value=expression.value.with_changes(value=text))]
        )
        new = new.with_changes(body=new.body.with_changes(body=[docstring, *new.body.body[1:]]))
        return cst.ensure_type(_without_omitted(cst.ensure_type(router, cst.ClassDef)), cst.ClassDef), new

    def _with_shared_expert(self, new: cst.ClassDef, source: cst.ClassDef, block: MoEBlock) -> cst.ClassDef:
        """The source's shared expert (and gate) built after the MoE, added to the routed output."""
        assert block.shared_expert is not None
        source_init = find_method(source, "__init__")
        init = find_method(new, "__init__")
        forward = find_method(new, "forward")
        assert source_init is not None and init is not None and forward is not None
        kept = [
            statement
            for statement in source_init.body.body
            if any(
                _assigns_self(statement, attribute)
                for attribute in (block.shared_expert, block.shared_expert_gate)
                if attribute is not None
            )
        ]
        body = list(init.body.body)
        position = next(i for i, s in enumerate(body) if "specs" in code(s) and "self.specs" in code(s))
        body[position:position] = kept
        if block.shared_expert_gate is not None:
            (mark,) = _parse(
                f"self.{block.shared_expert_gate}.weight.sequence_parallel_enabled = sequence_parallel\n"
            )
            body.insert(position + len(kept), mark)
        init = init.with_changes(body=init.body.with_changes(body=body))
        name = (
            "shared_expert_output"
            if block.shared_expert_gate is not None
            else "unscaled_shared_expert_output"
        )
        attributes = {"shared_expert": block.shared_expert}
        if block.shared_expert_gate is not None:
            attributes["shared_expert_gate"] = block.shared_expert_gate
        added, needed = templates.fill_statements(
            TEMPLATES, name, self.blueprint.style, attributes=attributes
        )
        self.add_template_imports(needed)
        forward_body = list(forward.body.body)
        forward_body[1:1] = added  # after `output, router_logits = super().forward(...)`
        forward = forward.with_changes(body=forward.body.with_changes(body=forward_body))
        return with_method(with_method(new, init), forward)

    # --- the decoder layer ----------------------------------------------------------------------------

    def _decoder_layer(self, cls: cst.ClassDef, blocks: list[MoEBlock]) -> cst.ClassDef:
        forward = find_method(cls, "forward")
        assert forward is not None, "checked in analysis"
        attributes = {block.layer_attribute for block in blocks if block.layer_class == cls.name.value}
        dense = any(block.dense_layers for block in blocks if block.layer_class == cls.name.value)
        body = list(forward.body.body)
        start = docstring_count(body)
        calls = [call for attribute in attributes for call in self_calls(forward, attribute)]
        position = next(
            (i for i, s in enumerate(body) if i >= start and any(_contains(s, call) for call in calls)), None
        )
        assert position is not None, "checked in analysis"
        body[position:] = [_keeping_router_logits(statement) for statement in body[position:]]
        if dense or not isinstance(body[position], cst.SimpleStatementLine):
            (initial,), needed = templates.fill_statements(
                TEMPLATES, "router_logits_in_decoder_layer", self.blueprint.style
            )
            self.add_template_imports(needed)
            statement = body[position]
            comment = cst.EmptyLine(
                comment=cst.Comment(
                    "# The sparse layers return their router logits too (None from a dense MLP layer)."
                )
            )
            initial = initial.with_changes(leading_lines=[*statement.leading_lines, comment])
            body[position] = statement.with_changes(leading_lines=[])
            body.insert(position, initial)
        body[-1] = _returning_router_logits(body[-1])
        forward = forward.with_changes(
            body=forward.body.with_changes(body=body), returns=_pair_annotation(forward.returns, dense, self)
        )
        return with_method(cls, forward)

    # --- the base model -------------------------------------------------------------------------------

    def _base_model(self, cls: cst.ClassDef, dense: bool) -> cst.ClassDef:
        forward = find_method(cls, "forward")
        assert forward is not None, "checked in analysis (R022)"
        style = self.blueprint.style
        (parameter,), needed = templates.fill_parameters(TEMPLATES, "output_router_logits_parameter", style)
        self.add_template_imports(needed)
        params = forward.params
        if not any(param.name.value == OUTPUT_ROUTER_LOGITS for param in params.params):
            params = params.with_changes(params=[*params.params, parameter.with_changes(comma=cst.Comma())])
        default, needed = templates.fill_statements(TEMPLATES, "output_router_logits_default", style)
        self.add_template_imports(needed)
        initial, _ = templates.fill_statements(TEMPLATES, "all_router_logits", style)
        collect, _ = templates.fill_statements(
            TEMPLATES, "collect_sparse_router_logits" if dense else "collect_router_logits", style
        )
        returned, _ = templates.fill_expression(TEMPLATES, "returned_router_logits", style)

        body = list(forward.body.body)
        start = docstring_count(body)
        if not any(OUTPUT_ROUTER_LOGITS in names_in(statement) for statement in body):
            body[start:start] = default
        loop = next(i for i, s in enumerate(body) if isinstance(s, cst.For) and _calls_loop_target(s))
        statement = body[loop]
        assert isinstance(statement, cst.For)
        target = code(statement.target)
        inner = [_unpacking_layer_call(s, target) for s in statement.body.body]
        inner += collect
        body[loop] = statement.with_changes(body=statement.body.with_changes(body=inner))
        body[loop:loop] = [initial[0].with_changes(leading_lines=statement.leading_lines)]
        body[loop + 1] = body[loop + 1].with_changes(leading_lines=[])
        body[-1] = _with_returned_logits(body[-1], returned)
        forward = forward.with_changes(params=params, body=forward.body.with_changes(body=body))
        return with_method(cls, forward)


def _expert_names(block: MoEBlock, name_or_default) -> dict[str, cst.BaseExpression]:  # type: ignore[no-untyped-def]
    """The expert spec's naming keywords: the expert list's names, or the packed parameters' paths."""
    if block.packed is None:
        return {
            "experts": name_or_default("experts_name", block.experts),
            "gate": name_or_default("gate_proj_name", block.gate),
            "up": name_or_default("up_proj_name", block.up),
            "down": name_or_default("down_proj_name", block.down),
            "layout": OMITTED,
            "gate_up": OMITTED,
            "transposed": OMITTED,
        }
    packed = block.packed
    return {
        "experts": cst.SimpleString('""'),  # the packed paths are relative to the block
        "gate": OMITTED,
        "up": OMITTED,
        "down": cst.SimpleString(f'"{packed.down}"'),
        "layout": cst.SimpleString(f'"{PACKED_CONCATENATED}"'),
        "gate_up": cst.SimpleString(f'"{packed.gate_up}"'),
        "transposed": cst.Name("True") if packed.transposed else OMITTED,
    }


def _without_init_branches(cls: cst.ClassDef, replaced: set[str]) -> cst.ClassDef:
    """`_init_weights` without its `if isinstance(module, X):` branches for the classes NxD's MoE replaced
    (their instances are gone: NxD's experts are drawn by the block's `init_method`)."""
    method = find_method(cls, INIT_WEIGHTS)
    assert method is not None

    def initialises_replaced(statement: cst.BaseStatement) -> bool:
        test = statement.test if isinstance(statement, cst.If) and statement.orelse is None else None
        return (
            isinstance(test, cst.Call)
            and isinstance(test.func, cst.Name)
            and test.func.value == "isinstance"
            and len(test.args) == 2
            and isinstance(test.args[1].value, cst.Name)
            and test.args[1].value.value in replaced
        )

    body = [statement for statement in method.body.body if not initialises_replaced(statement)]
    if len(body) == len(method.body.body):
        return cls
    return with_method(cls, method.with_changes(body=method.body.with_changes(body=body)))


def _resolved(expr) -> str:  # type: ignore[no-untyped-def]
    return expr.resolved if expr.resolved is not None else expr.source


def _parse(text: str) -> list[cst.BaseStatement]:
    return list(cst.parse_module(text).body)


def _without_omitted(node: cst.ClassDef) -> cst.ClassDef:
    """`node` without the keyword arguments filled with `OMITTED`."""

    class _Drop(cst.CSTTransformer):
        def leave_Call(self, original: cst.Call, updated: cst.Call) -> cst.Call:
            dropped = [
                arg.keyword.value
                for arg in updated.args
                if arg.keyword is not None
                and isinstance(arg.value, cst.Name)
                and arg.value.value == OMITTED.value
            ]
            return with_arguments(updated, drop=dropped) if dropped else updated

    result = node.visit(_Drop())
    assert isinstance(result, cst.ClassDef)
    return result


def _assigns_self(statement: cst.CSTNode, attribute: str) -> bool:
    if not isinstance(statement, cst.SimpleStatementLine):
        return False
    return any(
        isinstance(small, cst.Assign)
        and any(code(target.target) == f"self.{attribute}" for target in small.targets)
        for small in statement.body
    )


def _assigns_name(statement: cst.CSTNode, name: str) -> bool:
    """`statement` is `name = ...`."""
    return (
        isinstance(statement, cst.SimpleStatementLine)
        and isinstance(statement.body[0], cst.Assign)
        and code(statement.body[0].targets[0].target) == name
    )


def _contains(node: cst.CSTNode, target: cst.CSTNode) -> bool:
    return any(item is target for item in walk(node))


def _keeping_router_logits(statement: cst.BaseStatement) -> cst.BaseStatement:
    """`x, _ = ...` -> `x, router_logits = ...` anywhere in the statement."""

    class _Keep(cst.CSTTransformer):
        def leave_Assign(self, original: cst.Assign, updated: cst.Assign) -> cst.Assign:
            if len(updated.targets) != 1:
                return updated
            target = updated.targets[0].target
            if (
                isinstance(target, cst.Tuple)
                and len(target.elements) == 2
                and isinstance(target.elements[1].value, cst.Name)
                and target.elements[1].value.value == "_"
            ):
                elements = [
                    target.elements[0],
                    target.elements[1].with_changes(value=cst.Name(ROUTER_LOGITS)),
                ]
                return updated.with_changes(
                    targets=[updated.targets[0].with_changes(target=target.with_changes(elements=elements))]
                )
            return updated

    result = statement.visit(_Keep())
    assert isinstance(result, cst.BaseStatement)
    return result


def _returning_router_logits(statement: cst.BaseStatement) -> cst.BaseStatement:
    """`return x` -> `return x, router_logits`."""
    assert isinstance(statement, cst.SimpleStatementLine) and isinstance(statement.body[0], cst.Return)
    value = statement.body[0].value
    assert value is not None
    pair = cst.Tuple(
        elements=[
            cst.Element(value, comma=cst.Comma(whitespace_after=cst.SimpleWhitespace(" "))),
            cst.Element(cst.Name(ROUTER_LOGITS)),
        ],
        lpar=[],
        rpar=[],
    )
    return statement.with_changes(body=[statement.body[0].with_changes(value=pair)])


def _pair_annotation(returns: cst.Annotation | None, dense: bool, rule: Rule) -> cst.Annotation | None:
    """`-> X` -> `-> tuple[X, X]` (`tuple[X, X | None]` when dense layers return None)."""
    if returns is None:
        return None
    text = code(returns.annotation)
    second = (
        text if not dense else (f"Optional[{text}]" if rule.blueprint.style.optional else f"{text} | None")
    )
    return returns.with_changes(annotation=cst.parse_expression(f"tuple[{text}, {second}]"))


def _calls_loop_target(loop: cst.For) -> bool:
    target = code(loop.target)
    return any(
        isinstance(node, cst.Call)
        and (code(node.func) == target or any(code(a.value) == target for a in node.args[:1]))
        for node in walk(loop.body)
    )


def _unpacking_layer_call(statement: cst.BaseStatement, target: str) -> cst.BaseStatement:
    """`h = layer(...)` / `h = checkpoint(layer, ...)` -> `h, router_logits = ...`, anywhere in the statement."""

    class _Unpack(cst.CSTTransformer):
        def leave_Assign(self, original: cst.Assign, updated: cst.Assign) -> cst.Assign:
            value = updated.value
            if (
                len(updated.targets) == 1
                and isinstance(updated.targets[0].target, cst.Name)
                and isinstance(value, cst.Call)
                and (code(value.func) == target or (value.args and code(value.args[0].value) == target))
            ):
                pair = cst.Tuple(
                    elements=[
                        cst.Element(
                            updated.targets[0].target,
                            comma=cst.Comma(whitespace_after=cst.SimpleWhitespace(" ")),
                        ),
                        cst.Element(cst.Name(ROUTER_LOGITS)),
                    ],
                    lpar=[],
                    rpar=[],
                )
                return updated.with_changes(targets=[updated.targets[0].with_changes(target=pair)])
            return updated

    result = statement.visit(_Unpack())
    assert isinstance(result, cst.BaseStatement)
    return result


def _with_returned_logits(statement: cst.BaseStatement, returned: cst.BaseExpression) -> cst.BaseStatement:
    """`return Output(...)` with `router_logits=<returned>` among its keywords."""
    if not (
        isinstance(statement, cst.SimpleStatementLine)
        and isinstance(statement.body[0], cst.Return)
        and isinstance(statement.body[0].value, cst.Call)
    ):
        return statement
    call = with_arguments(statement.body[0].value, add=[(ROUTER_LOGITS, returned)])
    return statement.with_changes(body=[statement.body[0].with_changes(value=call)])
