"""Cross-attention a causal LM never takes, read as absent (what analysis and the rules both work on).

Decoder-only files that can also serve as the decoder of an encoder-decoder model carry a second path:
forwards take the encoder's states (`encoder_hidden_states`, `encoder_attention_mask`, an attention's
`key_value_states`: transformers' names for them), branch on them (`if encoder_hidden_states is not
None:`, `is_cross_attention = key_value_states is not None`), and constructors build the cross-attention
modules under a config switch (`if config.add_cross_attention: self.crossattention = ...`). A causal LM
trained on token ids never receives encoder states, so that path is dead in training; kept, it reads as
keys and values computed from another input (R006) and as projections built twice.

Here, in every function taking one of those inputs, the input is None: conditions on it are decided and
only the branch training takes stays (a name bound once to such a decided condition is decided too). The
inputs stay parameters and arguments (NXS017 removes them). A constructor branch under a condition that
reads only constructor parameters and that only builds attributes no other method reads any more goes;
its condition is recorded, and NXS017 makes the constructor raise when it holds. A constructor parameter
that only the removed branches passed (`is_cross_attention=True`) takes its default: an attribute set
from it is set from the default, and conditions of the class's methods on that attribute are decided.

The rewrite is all or nothing: where an input is still read after the folding (other than passed on to a
call as itself), the module stays as written and the usual refusal (R006) names the place. Line numbers
stay those of the file (blank lines take the place of removed code). Nothing here names a model.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import libcst as cst

from ..blueprint import CrossAttentionGuard, CrossAttentionPruning, Location
from ..syntax import code, dotted, find_method, names_in, self_attribute, walk

CROSS_INPUTS = frozenset({"encoder_hidden_states", "encoder_attention_mask", "key_value_states"})
NONE, TRUE, FALSE = "None", "True", "False"
CONSTANTS = frozenset({NONE, TRUE, FALSE})


def prune_cross_attention(
    module: cst.Module, display_path: str, text: str | None = None
) -> tuple[cst.Module, CrossAttentionPruning]:
    """`module` with the cross-attention path removed, and what the rules must still do; `module` itself
    (and no facts) when it has no such path or one that is not fully removable. `text` is the file's text
    (default: the module's), where the guards' lines are looked up."""
    if not any(CROSS_INPUTS & _parameters(function) for function in _definitions(module)):
        return module, CrossAttentionPruning()  # the common case: no tree walk
    folded = module.visit(_FoldInputs())
    if _reads_inputs(folded):
        return module, CrossAttentionPruning()
    builder = _RemoveConstructions(text if text is not None else module.code, display_path)
    pruned = folded.visit(builder)
    flags = _defaulted_parameters(pruned, builder.removed_calls)
    pruned = pruned.visit(_FoldFlags(flags))
    return pruned, CrossAttentionPruning(
        guards=tuple(builder.guards),
        inputs=tuple(sorted(CROSS_INPUTS)),
        defaulted=tuple((owner, name) for owner, params in sorted(flags.items()) for name in sorted(params)),
    )


def _definitions(module: cst.Module) -> list[cst.FunctionDef]:
    """The module's functions and its classes' methods."""
    found: list[cst.FunctionDef] = []
    for statement in module.body:
        if isinstance(statement, cst.FunctionDef):
            found.append(statement)
        elif isinstance(statement, cst.ClassDef):
            found += [member for member in statement.body.body if isinstance(member, cst.FunctionDef)]
    return found


def line_in_class(text: str, owner: str, statement: str) -> int:
    """The line of the first line of `statement` (as written) after the header of class `owner` in the
    file's `text` (the rewrites before keep the file's lines and the text of what they keep)."""
    header = re.search(rf"^class {re.escape(owner)}\b", text, re.MULTILINE)
    first = statement.strip().splitlines()[0]
    index = text.find(first, header.end() if header else 0)
    return text.count("\n", 0, max(index, 0)) + 1


# --- deciding conditions ------------------------------------------------------------------------------


def truth(node: cst.BaseExpression, known: dict[str, str]) -> str | None:
    """The constant (`None`, `True`, `False`) `node` evaluates to given the `known` names, else None."""
    if isinstance(node, cst.Name):
        if node.value in CONSTANTS:
            return node.value
        return known.get(node.value)
    if isinstance(node, cst.Attribute):
        attribute = self_attribute(node)
        return known.get(f"self.{attribute}") if attribute else None
    if isinstance(node, cst.UnaryOperation) and isinstance(node.operator, cst.Not):
        inner = truth(node.expression, known)
        return None if inner is None else _negate(inner)
    if isinstance(node, cst.BooleanOperation):
        left, right = truth(node.left, known), truth(node.right, known)
        falsy = (FALSE, NONE)
        if isinstance(node.operator, cst.And):
            if left in falsy or right in falsy:
                return FALSE
            return TRUE if left == right == TRUE else None
        if left == TRUE or right == TRUE:
            return TRUE
        return FALSE if left in falsy and right in falsy else None
    if isinstance(node, cst.Comparison) and len(node.comparisons) == 1:
        target = node.comparisons[0]
        left, right = truth(node.left, known), truth(target.comparator, known)
        if isinstance(target.operator, cst.Is | cst.IsNot) and NONE in (left, right):
            other = right if left == NONE else left
            if other is None:
                return None
            same = other == NONE
            return TRUE if same == isinstance(target.operator, cst.Is) else FALSE
    if isinstance(node, cst.IfExp):
        decided = truth(node.test, known)
        if decided is not None:
            return truth(node.body if decided == TRUE else node.orelse, known)
    return None


def _decided(node: cst.BaseExpression, known: dict[str, str]) -> bool | None:
    value = truth(node, known)
    return None if value is None else value == TRUE


def _negate(value: str) -> str:
    return FALSE if value == TRUE else TRUE


def _parameters(function: cst.FunctionDef) -> set[str]:
    params = function.params
    return {p.name.value for p in (*params.posonly_params, *params.params, *params.kwonly_params)}


def _lines(node: cst.CSTNode) -> int:
    return code(node).count("\n")


def _blank(count: int) -> list[cst.EmptyLine]:
    return [cst.EmptyLine(indent=False) for _ in range(count)]


@dataclass
class _Piece:
    """A statement kept, or blank lines standing for removed ones."""

    statement: cst.BaseStatement | None
    blanks: int = 0


def _joined(
    pieces: Sequence[_Piece], footer: Sequence[cst.EmptyLine]
) -> tuple[list[cst.BaseStatement], list]:
    """Statements with the blank lines of removed code moved onto the next statement (or the footer)."""
    body: list[cst.BaseStatement] = []
    pending = 0
    for piece in pieces:
        if piece.statement is None:
            pending += piece.blanks
            continue
        statement = piece.statement
        if pending:
            statement = statement.with_changes(leading_lines=[*_blank(pending), *statement.leading_lines])
            pending = 0
        body.append(statement)
    return body, [*_blank(pending), *footer]


class _Decider:
    """Decides conditions of one function's statements on `known` names, keeping the taken branches."""

    def __init__(
        self, known: dict[str, str], counts: dict[str, int], parameters: frozenset[str] = frozenset()
    ) -> None:
        self.known = dict(known)
        self.counts = counts
        self.parameters = parameters
        self.aliases: dict[str, str] = {}  # a local bound once to a decided choice of a parameter

    def block(self, statements: Sequence[cst.BaseStatement]) -> list[_Piece]:
        pieces: list[_Piece] = []
        for statement in statements:
            kept = self.statement(statement)
            pieces.extend(kept)
            if len(kept) == 1 and kept[0].statement is statement:
                continue  # unchanged (libcst keeps a node whose children did not change)
            shorter = _lines(statement) - sum(_piece_lines(piece) for piece in kept)
            if shorter > 0:  # a decided expression written over several lines now takes one
                pieces.append(_Piece(None, shorter))
        return pieces

    def suite(self, suite: cst.BaseSuite, pieces: list[_Piece]) -> cst.BaseSuite:
        assert isinstance(suite, cst.IndentedBlock)
        body, footer = _joined(pieces, suite.footer)
        if not body:
            body = [cst.SimpleStatementLine([cst.Pass()])]
            footer = footer[1:] if footer else footer
        return suite.with_changes(body=body, footer=footer)

    def statement(self, statement: cst.BaseStatement) -> list[_Piece]:
        if isinstance(statement, cst.If):
            return self._if(statement)
        if isinstance(statement, cst.SimpleStatementLine) and len(statement.body) == 1:
            small = statement.body[0]
            if (
                isinstance(small, cst.Assign)
                and len(small.targets) == 1
                and isinstance(small.targets[0].target, cst.Name)
            ):
                name = small.targets[0].target.value
                value = truth(small.value, self.known)
                if value is not None and self.counts.get(name) == 1 and name not in self.known:
                    self.known[name] = value  # `is_cross = states is not None`
                    return [_Piece(None, _lines(statement))]
                if name in CROSS_INPUTS and value == self.known.get(name):
                    return [_Piece(None, _lines(statement))]  # `encoder_attention_mask = None`
                chosen = small.value.visit(_Expressions(self.known, self.aliases))
                if (
                    isinstance(small.value, cst.IfExp)
                    and isinstance(chosen, cst.Name)
                    and self.counts.get(name) == 1
                    and chosen.value in self.parameters
                    and not self.counts.get(chosen.value)
                ):  # `current_states = key_value_states if is_cross else hidden_states`: one name
                    self.aliases[name] = chosen.value
                    return [_Piece(None, _lines(statement))]
        if isinstance(statement, cst.SimpleStatementLine):
            return [_Piece(statement.visit(_Expressions(self.known, self.aliases)))]  # type: ignore[arg-type]
        if isinstance(statement, cst.For | cst.While | cst.With | cst.Try):
            return [_Piece(self._compound(statement))]
        return [_Piece(statement.visit(_Expressions(self.known, self.aliases)))]  # type: ignore[arg-type]

    def _compound(self, statement: cst.BaseCompoundStatement) -> cst.BaseStatement:
        updated = statement.with_changes(body=self.suite(statement.body, self.block(statement.body.body)))
        if isinstance(statement, cst.For | cst.While) and statement.orelse is not None:
            orelse = statement.orelse
            updated = updated.with_changes(
                orelse=orelse.with_changes(body=self.suite(orelse.body, self.block(orelse.body.body)))
            )
        return updated  # type: ignore[return-value]

    def _if(self, node: cst.If) -> list[_Piece]:
        decided = _decided(node.test, self.known)
        if decided is None:
            pieces = self.block(node.body.body)
            body = self.suite(node.body, pieces)
            orelse = node.orelse
            if orelse is None and _empty(pieces) and _pure(node.test):
                return [_Piece(None, _lines(node))]  # every statement it held is gone
            if isinstance(orelse, cst.Else):
                else_pieces = self.block(orelse.body.body)
                if _empty(pieces) and _empty(else_pieces) and _pure(node.test):
                    return [_Piece(None, _lines(node))]
                orelse = orelse.with_changes(body=self.suite(orelse.body, else_pieces))
            elif isinstance(orelse, cst.If):
                kept = self._if(orelse)
                statements = [p.statement for p in kept if p.statement is not None]
                if (
                    len(statements) == 1
                    and isinstance(statements[0], cst.If)
                    and sum(p.blanks for p in kept) == 0
                ):
                    orelse = statements[0]
                else:
                    orelse = cst.Else(body=self.suite(orelse.body, kept))
            test = node.test.visit(_Expressions(self.known, self.aliases))
            return [_Piece(node.with_changes(test=test, body=body, orelse=orelse))]
        total = _lines(node)
        if decided:
            kept = self.block(node.body.body)
            after = _lines(node.orelse) if node.orelse is not None else 0
        elif isinstance(node.orelse, cst.Else):
            kept, after = self.block(node.orelse.body.body), 0
        elif isinstance(node.orelse, cst.If):
            kept, after = self._if(node.orelse.with_changes(leading_lines=())), 0
        else:
            kept, after = [], 0
        used = sum(_piece_lines(piece) for piece in kept)
        return [_Piece(None, max(total - used - after, 0)), *kept, _Piece(None, after)]


def _piece_lines(piece: _Piece) -> int:
    return piece.blanks if piece.statement is None else _lines(piece.statement)


def _empty(pieces: Sequence[_Piece]) -> bool:
    return all(piece.statement is None for piece in pieces)


def _pure(test: cst.BaseExpression) -> bool:
    """A condition whose evaluation does nothing else (no calls)."""
    return not any(isinstance(node, cst.Call) for node in walk(test))


class _Expressions(cst.CSTTransformer):
    """Conditional expressions on decided conditions replaced by their taken side."""

    def __init__(self, known: dict[str, str], aliases: dict[str, str] | None = None) -> None:
        super().__init__()
        self.known = known
        self.aliases = aliases or {}

    def leave_Name(self, original_node: cst.Name, updated_node: cst.Name) -> cst.BaseExpression:
        if updated_node.value in self.aliases:
            return updated_node.with_changes(value=self.aliases[updated_node.value])
        value = self.known.get(updated_node.value)
        if value is None or updated_node.value in CROSS_INPUTS:
            return updated_node  # an input passed on stays a name until NXS017 drops the argument
        return updated_node.with_changes(value=value)

    def leave_Attribute(self, original_node: cst.Attribute, updated_node: cst.Attribute) -> cst.Attribute:
        return updated_node.with_changes(attr=original_node.attr)  # `x.name` names no variable

    def leave_Arg(self, original_node: cst.Arg, updated_node: cst.Arg) -> cst.Arg:
        return updated_node.with_changes(keyword=original_node.keyword)

    def leave_UnaryOperation(
        self, original_node: cst.UnaryOperation, updated_node: cst.UnaryOperation
    ) -> cst.BaseExpression:
        value = truth(updated_node, self.known)
        return _constant(updated_node, value) if value is not None else updated_node

    def leave_BooleanOperation(
        self, original_node: cst.BooleanOperation, updated_node: cst.BooleanOperation
    ) -> cst.BaseExpression:
        left, right = truth(updated_node.left, self.known), truth(updated_node.right, self.known)
        value = truth(updated_node, self.known)
        if value is not None and _pure(updated_node):
            return _constant(updated_node, value)
        neutral = TRUE if isinstance(updated_node.operator, cst.And) else FALSE
        if left == neutral:
            return updated_node.right
        if right == neutral:
            return updated_node.left
        return updated_node

    def leave_IfExp(self, original_node: cst.IfExp, updated_node: cst.IfExp) -> cst.BaseExpression:
        decided = _decided(original_node.test, self.known)
        if decided is None:
            return updated_node
        chosen = updated_node.body if decided else updated_node.orelse
        return (
            chosen.with_changes(lpar=updated_node.lpar, rpar=updated_node.rpar)
            if updated_node.lpar
            else chosen
        )


def _constant(node: cst.BaseExpression, value: str) -> cst.Name:
    return cst.Name(value, lpar=node.lpar, rpar=node.rpar)


def _assignment_counts(function: cst.FunctionDef) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in walk(function.body):
        targets: list[cst.BaseExpression] = []
        if isinstance(node, cst.AssignTarget | cst.AugAssign | cst.AnnAssign | cst.For):
            targets.append(node.target)
        for target in targets:
            for name in names_in(target) if isinstance(target, cst.Tuple | cst.List) else [dotted(target)]:
                if name:
                    counts[name] = counts.get(name, 0) + 1
    return counts


class _FoldInputs(cst.CSTTransformer):
    """Every function taking a cross-attention input, its conditions decided with the input None."""

    def visit_FunctionDef(self, node: cst.FunctionDef) -> bool:
        return False  # leave_FunctionDef decides the body statement by statement

    def leave_FunctionDef(
        self, original_node: cst.FunctionDef, updated_node: cst.FunctionDef
    ) -> cst.FunctionDef:
        inputs = CROSS_INPUTS & _parameters(updated_node)
        if not inputs:
            return updated_node
        decider = _Decider(
            dict.fromkeys(inputs, NONE),
            _assignment_counts(updated_node),
            frozenset(_parameters(updated_node)),
        )
        body = updated_node.body
        if not isinstance(body, cst.IndentedBlock):
            return updated_node
        return updated_node.with_changes(body=decider.suite(body, decider.block(body.body)))


def _reads_inputs(module: cst.Module) -> bool:
    """Whether a cross-attention input is still read other than passed on to a call as itself."""
    for node in _definitions(module):
        inputs = CROSS_INPUTS & _parameters(node)
        if not inputs:
            continue
        passed = {
            id(arg.value)
            for call in walk(node.body)
            if isinstance(call, cst.Call)
            for arg in call.args
            if isinstance(arg.value, cst.Name)
            and arg.value.value in inputs
            and (arg.keyword is None or arg.keyword.value == arg.value.value)
        }
        nodes = list(walk(node.body))
        not_variables = {id(n.keyword) for n in nodes if isinstance(n, cst.Arg) and n.keyword is not None}
        not_variables |= {id(n.attr) for n in nodes if isinstance(n, cst.Attribute)}
        for name in nodes:
            if (
                isinstance(name, cst.Name)
                and name.value in inputs
                and id(name) not in passed
                and id(name) not in not_variables
            ):
                return True
    return False


# --- constructor branches -----------------------------------------------------------------------------


class _RemoveConstructions(cst.CSTTransformer):
    """In each class, an `__init__` branch under a parameter-only condition that builds only attributes
    no other method reads goes; its condition becomes a guard."""

    def __init__(self, text: str, display_path: str) -> None:
        super().__init__()
        self.text = text
        self.display_path = display_path
        self.guards: list[CrossAttentionGuard] = []
        self.removed_calls: list[cst.Call] = []

    def visit_FunctionDef(self, node: cst.FunctionDef) -> bool:
        return False  # leave_ClassDef rewrites constructors whole

    def leave_ClassDef(self, original_node: cst.ClassDef, updated_node: cst.ClassDef) -> cst.ClassDef:
        init = find_method(updated_node, "__init__")
        if init is None or not isinstance(init.body, cst.IndentedBlock):
            return updated_node
        read = _attributes_read(updated_node, init)
        params = _parameters(init) - {"self"}
        pieces: list[_Piece] = []
        changed = False
        for statement in init.body.body:
            built = _built_attributes(statement)
            if (
                isinstance(statement, cst.If)
                and statement.orelse is None
                and built
                and not (built & read)
                and _reads_only(statement.test, params)
            ):
                changed = True
                line = line_in_class(self.text, updated_node.name.value, f"if {code(statement.test)}:")
                self.guards.append(
                    CrossAttentionGuard(
                        owner=updated_node.name.value,
                        test=code(statement.test),
                        attributes=tuple(sorted(built)),
                        location=Location(self.display_path, line),
                    )
                )
                self.removed_calls.extend(n for n in walk(statement.body) if isinstance(n, cst.Call))
                pieces.append(_Piece(None, _lines(statement)))
            else:
                pieces.append(_Piece(statement))
        if not changed:
            return updated_node
        body, footer = _joined(pieces, init.body.footer)
        new_init = init.with_changes(body=init.body.with_changes(body=body, footer=footer))
        members = [new_init if member is init else member for member in updated_node.body.body]
        return updated_node.with_changes(body=updated_node.body.with_changes(body=members))


def _built_attributes(statement: cst.BaseStatement) -> set[str]:
    """The attributes an `if` builds when its body only assigns `self.<attr> = ...` (and raises under
    conditions); empty for anything else."""
    if not isinstance(statement, cst.If):
        return set()
    built: set[str] = set()
    for inner in statement.body.body:
        if (
            isinstance(inner, cst.If)
            and inner.orelse is None
            and all(
                isinstance(s, cst.SimpleStatementLine) and all(isinstance(x, cst.Raise) for x in s.body)
                for s in inner.body.body
            )
        ):
            continue
        if not isinstance(inner, cst.SimpleStatementLine) or len(inner.body) != 1:
            return set()
        small = inner.body[0]
        if not isinstance(small, cst.Assign) or len(small.targets) != 1:
            return set()
        attribute = self_attribute(small.targets[0].target)
        if attribute is None:
            return set()
        built.add(attribute)
    return built


def _attributes_read(cls: cst.ClassDef, init: cst.FunctionDef) -> set[str]:
    """The `self.<attr>` names read in the class's methods other than `__init__`, and as strings
    (`hasattr(self, "attr")`) anywhere."""
    found: set[str] = set()
    for member in cls.body.body:
        if member is init or not isinstance(member, cst.FunctionDef):
            continue
        for node in walk(member):
            attribute = self_attribute(node)
            if attribute:
                found.add(attribute)
            if isinstance(node, cst.SimpleString):
                found.add(str(node.evaluated_value))
    return found


def _reads_only(test: cst.BaseExpression, params: set[str]) -> bool:
    """A condition built from the constructor's parameters (and their attributes) and literals."""
    for node in walk(test):
        if isinstance(node, cst.Call | cst.Subscript | cst.Lambda | cst.NamedExpr):
            return False
    return bool(names_in(test)) and names_in(test) <= params | CONSTANTS


# --- constructor parameters only the removed branches passed ------------------------------------------


def _defaulted_parameters(module: cst.Module, removed: list[cst.Call]) -> dict[str, dict[str, str]]:
    """Class -> {parameter: default} for `__init__` parameters with a constant default that a removed
    construction passed by keyword and no remaining call of the class passes."""
    classes = {s.name.value: s for s in module.body if isinstance(s, cst.ClassDef)}
    candidates: dict[str, set[str]] = {}
    for call in removed:
        owner = dotted(call.func)
        if owner in classes:
            candidates.setdefault(owner, set()).update(a.keyword.value for a in call.args if a.keyword)
    found: dict[str, dict[str, str]] = {}
    for owner, keywords in candidates.items():
        init = find_method(classes[owner], "__init__")
        if init is None:
            continue
        ordered = [p for p in (*init.params.posonly_params, *init.params.params)][1:]
        calls = [n for n in walk(module) if isinstance(n, cst.Call) and dotted(n.func) == owner]
        for param in (*ordered, *init.params.kwonly_params):
            name = param.name.value
            default = param.default
            if name not in keywords or not (isinstance(default, cst.Name) and default.value in CONSTANTS):
                continue
            index = ordered.index(param) if param in ordered else None
            if any(_passes(call, name, index) for call in calls):
                continue
            found.setdefault(owner, {})[name] = default.value
    return found


def _passes(call: cst.Call, name: str, index: int | None) -> bool:
    if any(a.star for a in call.args):
        return True
    if any(a.keyword is not None and a.keyword.value == name for a in call.args):
        return True
    positional = sum(1 for a in call.args if a.keyword is None)
    return index is not None and positional > index


class _FoldFlags(cst.CSTTransformer):
    """In each class with defaulted parameters: `self.a = p` becomes `self.a = <default>`, and the
    conditions of its methods on `p` and `self.a` are decided."""

    def __init__(self, flags: dict[str, dict[str, str]]) -> None:
        super().__init__()
        self.flags = flags

    def visit_FunctionDef(self, node: cst.FunctionDef) -> bool:
        return False  # leave_ClassDef decides each method whole

    def leave_ClassDef(self, original_node: cst.ClassDef, updated_node: cst.ClassDef) -> cst.ClassDef:
        params = self.flags.get(updated_node.name.value)
        init = find_method(updated_node, "__init__")
        if not params or init is None:
            return updated_node
        known: dict[str, str] = dict(params)
        for statement in init.body.body:
            if isinstance(statement, cst.SimpleStatementLine) and len(statement.body) == 1:
                small = statement.body[0]
                if isinstance(small, cst.Assign) and len(small.targets) == 1:
                    attribute = self_attribute(small.targets[0].target)
                    value = small.value
                    if attribute and isinstance(value, cst.Name) and value.value in params:
                        known[f"self.{attribute}"] = params[value.value]
        members = []
        for member in updated_node.body.body:
            if isinstance(member, cst.FunctionDef) and isinstance(member.body, cst.IndentedBlock):
                local = dict(known) if member is init else {k: v for k, v in known.items() if "." in k}
                decider = _Decider(local, {})
                member = member.with_changes(body=decider.suite(member.body, decider.block(member.body.body)))
                if member.name.value == "__init__":
                    member = member.visit(_SetFromDefault(params))  # type: ignore[assignment]
            members.append(member)
        return updated_node.with_changes(body=updated_node.body.with_changes(body=members))


class _SetFromDefault(cst.CSTTransformer):
    def __init__(self, params: dict[str, str]) -> None:
        super().__init__()
        self.params = params

    def leave_Assign(self, original_node: cst.Assign, updated_node: cst.Assign) -> cst.Assign:
        value = updated_node.value
        if (
            len(updated_node.targets) == 1
            and self_attribute(updated_node.targets[0].target)
            and isinstance(value, cst.Name)
            and value.value in self.params
        ):
            return updated_node.with_changes(value=cst.Name(self.params[value.value]))
        return updated_node
