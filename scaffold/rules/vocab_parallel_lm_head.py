"""NXS013: the lm head is vocabulary-parallel and feeds the host's vocab-parallel loss.

- `lm_head` becomes `ColumnParallelLinear(gather_output=False)`: rank r computes the logits of its
  vocabulary slice `[r V/T, (r+1) V/T)` and the full logits are never gathered. Under sequence
  parallelism its input is the `(S/T, B, D)` stream (all-gathered on the sequence dimension inside the
  layer) and its output `(S, B, V/T)` is transposed back to `(B, S, V/T)`.
- The causal LM's `vocab_size` becomes the per-rank size and the loss is `..loss_utils.ForCausalLMLoss`
  with it (a cross-entropy that reduces over the TP group), replacing transformers' `self.loss_function`.
- `logits_to_keep` (a generation knob) goes: training computes the logits of every position.
- What the source does to the logits after the head (scaling, softcapping) is kept as written: it is
  elementwise, so it commutes with the vocabulary split and the transpose.
- Tied embeddings keep working: the head's weight shard has the embedding shard's shape and the tie is
  declared in `_tied_weights_keys` (NXS005).
The inserted code comes from templates/code/vocab_parallel_lm_head.py and parallel_layers.py.
"""

from __future__ import annotations

import libcst as cst

from ..blueprint import LayerSite, Role
from ..syntax import (
    assigned_name,
    assigned_value,
    dotted,
    find_method,
    index_of_assignment,
    keyword_argument,
    names_in,
    self_attribute,
    self_calls,
    walk,
    with_body,
    with_method,
)
from . import layer_code, templates
from .base import Rule, stored_example, with_todo

LOSS = "ForCausalLMLoss"
HOST_LOSS_MODULE = "loss_utils"  # `from ..loss_utils import ForCausalLMLoss`
TRANSFORMERS_LOSS = "self.loss_function"
GENERATION_PARAMETERS = frozenset({"logits_to_keep"})
TEMPLATES = "vocab_parallel_lm_head"


class VocabParallelLMHead(Rule):
    CODE = "NXS013"
    NAME = "vocab-parallel-lm-head"
    SUMMARY = (
        "lm_head -> ColumnParallelLinear(gather_output=False) + vocab-parallel ForCausalLMLoss (V/T per rank)"
    )
    ADVICE = (
        "A head or loss computed differently from transformers' standard head is refused (R023). Disable it "
        "to keep a replicated head and transformers' loss (no vocabulary parallelism)."
    )
    REQUIRES = ("NXS004",)
    EXAMPLES = (stored_example(CODE, "granite", "GraniteForCausalLM"),)

    def visit_FunctionDef(self, node: cst.FunctionDef) -> bool:
        return False  # the rule rewrites whole classes: nothing to visit inside a method

    def leave_ClassDef(self, original_node: cst.ClassDef, updated_node: cst.ClassDef) -> cst.ClassDef:
        name = updated_node.name.value
        heads = [site for site in self.blueprint.sites if site.role is Role.LM_HEAD and site.owner == name]
        if not heads:
            return updated_node
        refusal = self.refusal_for(name)
        if refusal is not None:
            return with_todo(updated_node, refusal)
        (site,) = heads  # one head per class: checked in analysis (R023)
        init, forward = find_method(updated_node, "__init__"), find_method(updated_node, "forward")
        assert init is not None and forward is not None, "checked in analysis (R017)"
        updated_node = with_method(updated_node, self._init(init, site))
        updated_node = with_method(updated_node, self._forward(forward, site))
        self.add_host_import(HOST_LOSS_MODULE, LOSS)
        return updated_node

    def leave_Module(self, original_node: cst.Module, updated_node: cst.Module) -> cst.Module:
        if any(site.role is Role.LM_HEAD for site in self.blueprint.sites):
            return layer_code.with_init_helper(self, updated_node)
        return updated_node

    def _init(self, init: cst.FunctionDef, site: LayerSite) -> cst.FunctionDef:
        config = self.config_parameter(site.owner)
        per_rank, needed = templates.fill_expression(
            TEMPLATES,
            "vocab_size_per_rank",
            self.blueprint.style,
            vocab_size=cst.parse_expression(site.out_features.source),
        )
        self.add_template_imports(needed)
        rule = self

        class _Init(cst.CSTTransformer):
            vocab_set = False

            def leave_Assign(self, original: cst.Assign, updated: cst.Assign) -> cst.Assign:
                attribute = self_attribute(updated.targets[0].target) if len(updated.targets) == 1 else None
                if attribute == site.attribute and isinstance(updated.value, cst.Call):
                    source = updated.value
                    passes_bias = any(
                        arg.keyword is not None and arg.keyword.value == "bias" for arg in source.args
                    )
                    # nn.Linear's default bias, written out for the parallel layer
                    extra = () if passes_bias else (keyword_argument("bias", cst.Name("True")),)
                    keywords = layer_code.layer(rule, "vocab_parallel_lm_head", config)
                    return updated.with_changes(
                        value=layer_code.with_source_arguments(keywords, source, *extra)
                    )
                if attribute == "vocab_size":
                    self.vocab_set = True
                    return updated.with_changes(value=per_rank.deep_clone())
                return updated

        transformer = _Init()
        result = init.visit(transformer)
        assert isinstance(result, cst.FunctionDef)
        if not transformer.vocab_set:
            body = list(result.body.body)
            index = index_of_assignment(body, site.attribute)
            position = len(body) if index is None else index + 1
            vocab = cst.Attribute(value=cst.Name("self"), attr=cst.Name("vocab_size"))
            body.insert(
                position, cst.SimpleStatementLine(body=[cst.Assign([cst.AssignTarget(vocab)], per_rank)])
            )
            result = with_body(result, body)
        return layer_code.with_init_method(self, result, config)

    def _forward(self, forward: cst.FunctionDef, site: LayerSite) -> cst.FunctionDef:
        forward, _ = without_generation_parameters(forward)
        body = list(forward.body.body)
        position, logits = logits_statement(forward, site.attribute)  # found: checked in analysis (R023)
        transpose, needed = templates.fill_statements(
            TEMPLATES, "logits_to_batch_first", self.blueprint.style, renames={"logits": logits}
        )
        self.add_template_imports(needed)
        body[position + 1 : position + 1] = transpose
        return _with_vocab_parallel_loss(with_body(forward, body))


def logits_statement(forward: cst.FunctionDef, head: str) -> tuple[int, str]:
    """(index, name) of the top-level statement assigning the head's output to a name; (-1, "") if none."""
    for index, statement in enumerate(forward.body.body):
        if self_calls(statement, head):
            name = assigned_name(statement)
            return (index, name) if name is not None else (-1, "")
    return -1, ""


def calls_transformers_loss(forward: cst.FunctionDef) -> bool:
    """Whether the forward computes its loss with `self.loss_function(...)` (what the host loss replaces)."""
    return any(
        isinstance(node, cst.Call) and dotted(node.func) == TRANSFORMERS_LOSS for node in walk(forward)
    )


def _with_vocab_parallel_loss(forward: cst.FunctionDef) -> cst.FunctionDef:
    """`self.loss_function(..., vocab_size=...)` -> `ForCausalLMLoss(..., vocab_size=self.vocab_size)`."""

    class _Loss(cst.CSTTransformer):
        def leave_Call(self, original: cst.Call, updated: cst.Call) -> cst.Call:
            if dotted(updated.func) != TRANSFORMERS_LOSS:
                return updated
            args = [
                arg.with_changes(value=cst.parse_expression("self.vocab_size"))
                if arg.keyword is not None and arg.keyword.value == "vocab_size"
                else arg
                for arg in updated.args
            ]
            return updated.with_changes(func=cst.Name(LOSS), args=args)

    result = forward.visit(_Loss())
    assert isinstance(result, cst.FunctionDef)
    return result


def without_generation_parameters(forward: cst.FunctionDef) -> tuple[cst.FunctionDef, frozenset[str]]:
    """Drop `logits_to_keep` and what it selects: indexing by it is unwrapped, names derived from it go.

    Also returns the derived names still read afterwards (empty when the rewrite is complete; the
    analysis refuses a forward where it is not, R023).
    """
    params = [param for param in forward.params.params if param.name.value not in GENERATION_PARAMETERS]
    if len(params) == len(forward.params.params):
        return forward, frozenset()
    forward = forward.with_changes(params=forward.params.with_changes(params=params))
    derived = set(GENERATION_PARAMETERS)

    class _Unwrap(cst.CSTTransformer):
        def leave_Subscript(self, original: cst.Subscript, updated: cst.Subscript) -> cst.BaseExpression:
            if any(names_in(element) & derived for element in updated.slice):
                return updated.value
            return updated

    body: list[cst.BaseStatement] = []
    carried: list[cst.EmptyLine] = []
    for statement in forward.body.body:
        statement = statement.visit(_Unwrap())  # type: ignore[assignment]
        target = assigned_name(statement)
        value = assigned_value(statement)
        if target is not None and value is not None and names_in(value) & derived:
            derived.add(target)
            carried.extend(line for line in statement.leading_lines if line.comment is None)
            continue
        if carried:
            statement = statement.with_changes(leading_lines=[*carried[:1], *statement.leading_lines])
            carried = []
        body.append(statement)
    result = with_body(forward, body)
    assert isinstance(result, cst.FunctionDef)
    return result, frozenset(names_in(result.body) & derived)
