"""Register a generated model in an optimum-neuron checkout (`scaffold new-model --repo PATH`).

The edits follow the contributing guide, on the files' real shape in optimum-neuron:

- `optimum/neuron/models/training/auto_models.py`: import the two classes and register them with
  `register_neuron_model_for_training("<type>", "model")` / `("<type>", "text-generation")`, each call
  after the last existing one of its task;
- `optimum/neuron/models/training/__init__.py`: import the causal-LM class, as optimum-neuron does for its
  own models (and list it in `__all__` when the file has one);
- `tests/training/test_custom_modeling.py` (`CUSTOM_MODELINGS_TO_TEST`), `test_overfit.py` (the
  parametrize rows of `test_overfit_custom_modeling_causal_lm`) and `test_modeling_auto.py` (the
  checkpoint loops of the two `*_with_supported_architecture` tests): add the model with its test
  checkpoint, or replace the checkpoint an earlier run put there (the placeholder, or the previously
  recorded `--test-model`) by the new one;
- `docs/source/supported_architectures.mdx`: a row in the training table (scaffold.supported_architectures).

Every Python edit is a libcst rewrite that keeps the rest of the file byte for byte and inserts imports
where isort would put them; the edited file is then finished by the checkout's own ruff
(scaffold.checkout_style), so it passes the checkout's `ruff check` and `ruff format --check` whatever the
lengths of the inserted names. Every edit is idempotent: what is already there is left alone, so a second
run changes nothing. When the expected anchor (a list, a decorator, a registration call) is missing, the
edit is refused with the file and, where known, the line, rather than guessed.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import libcst as cst
from libcst.metadata import MetadataWrapper, PositionProvider

from .checkout_style import conform
from .errors import ScaffoldError
from .record import placeholder_test_model
from .supported_architectures import DOCS_PAGE, TrainingRow, add_row

TRAINING_DIR = Path("optimum/neuron/models/training")
TESTS_DIR = Path("tests/training")
AUTO_MODELS = TRAINING_DIR / "auto_models.py"
TRAINING_INIT = TRAINING_DIR / "__init__.py"
CUSTOM_MODELING_TEST = TESTS_DIR / "test_custom_modeling.py"
OVERFIT_TEST = TESTS_DIR / "test_overfit.py"
MODELING_AUTO_TEST = TESTS_DIR / "test_modeling_auto.py"
REGISTER = "register_neuron_model_for_training"
CUSTOM_MODELINGS_LIST = "CUSTOM_MODELINGS_TO_TEST"
OVERFIT_FUNCTION = "test_overfit_custom_modeling_causal_lm"
AUTO_FUNCTIONS = (
    "test_auto_model_with_supported_architecture",
    "test_auto_model_for_causal_lm_with_supported_architecture",
)
# Row of the overfit test for a new model, by parameter name: the contributing guide's values.
OVERFIT_DEFAULTS = {
    "learning_rate": "1e-4",
    "warmup_ratio": "0.03",
    "training_kwargs": "{}",
    "use_flash_attention_2": "True",
    "max_expected_loss": "0.5",
    "max_length": "2048",
    "num_steps": "50",
}


@dataclass(frozen=True)
class ModelNames:
    """The names a registration needs.

    `replaceable_test_models`: checkpoints an earlier run may have put in the test lists for this model
    (the placeholder, the previously recorded `--test-model`), replaced by `test_model` where found.
    """

    model_type: str
    package_name: str
    modeling_module: str
    base_model_class: str
    causal_lm_class: str
    test_model: str
    display_name: str = ""
    pipeline_parallelism: bool = False
    replaceable_test_models: tuple[str, ...] = ()

    @property
    def replaceable(self) -> tuple[str, ...]:
        return tuple(name for name in self.replaceable_test_models if name != self.test_model)


@dataclass(frozen=True)
class Registration:
    """New contents of the files a registration changes, and one note per file (changed or not)."""

    files: dict[Path, bytes]
    notes: tuple[str, ...]


def model_package_dir(repo: Path, package_name: str) -> Path:
    """Where the model package goes in the checkout `repo` (ScaffoldError if `repo` is not one)."""
    for required in (AUTO_MODELS, TRAINING_INIT):
        if not (repo / required).is_file():
            raise ScaffoldError(
                f"{repo} is not an optimum-neuron checkout: {required} is missing",
                hint="pass the root of an optimum-neuron clone with --repo, or use --out DIR",
            )
    return repo / TRAINING_DIR / package_name


def plan_registration(repo: Path, names: ModelNames) -> Registration:
    """Compute (without writing) every registration edit for `names` in the checkout `repo`."""
    edits: list[tuple[Path, Callable[[_Editor, ModelNames], list[str]]]] = [
        (AUTO_MODELS, _edit_auto_models),
        (TRAINING_INIT, _edit_training_init),
        (CUSTOM_MODELING_TEST, _edit_custom_modeling_test),
        (OVERFIT_TEST, _edit_overfit_test),
        (MODELING_AUTO_TEST, _edit_modeling_auto_test),
    ]
    files: dict[Path, bytes] = {}
    notes: list[str] = []
    for relative, edit in edits:
        editor = _Editor.load(repo, relative)
        original = editor.module.code
        changes = edit(editor, names)
        if changes:
            files[repo / relative] = conform(repo / relative, original, editor.module.code).encode("utf-8")
            notes.append(f"{relative}: " + "; ".join(changes))
        else:
            notes.append(f"{relative}: already registered, unchanged")
    docs = repo / DOCS_PAGE
    text = _read_text(repo, DOCS_PAGE)
    new_text, change = add_row(
        text, TrainingRow(names.display_name or names.model_type, names.pipeline_parallelism)
    )
    if change is not None:
        files[docs] = new_text.encode("utf-8")
    notes.append(f"{DOCS_PAGE}: {change or 'already listed, unchanged'}")
    return Registration(files=files, notes=tuple(notes))


def placeholder_uses(package_dir: Path, model_type: str) -> list[tuple[Path, int]]:
    """(file, line) of every placeholder checkpoint of `model_type` left in the test lists of the checkout
    that holds `package_dir` (none when it is not in a checkout)."""
    repo = checkout_of(package_dir)
    if repo is None:
        return []
    placeholder = placeholder_test_model(model_type)
    found = []
    for relative in (CUSTOM_MODELING_TEST, OVERFIT_TEST, MODELING_AUTO_TEST):
        try:
            lines = (repo / relative).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError):
            continue
        found += [(repo / relative, number) for number, line in enumerate(lines, 1) if placeholder in line]
    return found


def checkout_of(package_dir: Path) -> Path | None:
    """The optimum-neuron checkout whose training package holds `package_dir`, if it is one."""
    package_dir = package_dir.resolve()
    depth = len(TRAINING_DIR.parts)
    if len(package_dir.parents) <= depth:
        return None
    repo = package_dir.parents[depth]
    return repo if package_dir.parent == repo / TRAINING_DIR and (repo / AUTO_MODELS).is_file() else None


def _read_text(repo: Path, relative: Path) -> str:
    try:
        return (repo / relative).read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ScaffoldError(
            f"{relative}: missing from {repo}", hint="is --repo the root of an optimum-neuron checkout?"
        ) from None
    except (OSError, UnicodeDecodeError) as error:
        raise ScaffoldError(f"{repo / relative}: cannot read: {error}") from error


class _Editor:
    """One file being edited: its module, node positions for messages, and the anchor error."""

    def __init__(self, relative: Path, module: cst.Module) -> None:
        self.relative = relative
        self.module = module
        self._positions = MetadataWrapper(module, unsafe_skip_copy=True).resolve(PositionProvider)

    @classmethod
    def load(cls, repo: Path, relative: Path) -> _Editor:
        text = _read_text(repo, relative)  # bytes decoded, not read_text: keep the file's line endings
        try:
            return cls(relative, cst.parse_module(text))
        except cst.ParserSyntaxError as error:
            raise ScaffoldError(f"{relative}:{error.raw_line}: cannot parse: {error.message}") from error

    def line(self, node: cst.CSTNode) -> int | None:
        """1-based line of a node of the file as read (None for nodes built since)."""
        position = self._positions.get(node)
        return position.start.line if position is not None else None

    def refuse(self, message: str, node: cst.CSTNode | None = None) -> ScaffoldError:
        line = self.line(node) if node is not None else None
        where = f"{self.relative}:{line}" if line is not None else str(self.relative)
        return ScaffoldError(
            f"{where}: {message}",
            hint="add the entry by hand (see the contributing guide), or fix the file and rerun",
        )


# --- the five files ---------------------------------------------------------------------------------------


def _edit_auto_models(editor: _Editor, names: ModelNames) -> list[str]:
    original = editor.module
    if not any(_defines_or_imports(statement, REGISTER) for statement in original.body):
        raise editor.refuse(f"no `{REGISTER}` defined or imported here, so nothing to register with")
    tasks = (("model", names.base_model_class), ("text-generation", names.causal_lm_class))
    missing = []
    for task, cls in tasks:
        calls = [(statement, call) for statement in original.body if (call := _registration(statement))]
        same = [(statement, call) for statement, call in calls if call[:2] == (names.model_type, task)]
        if same and same[0][1][2] != cls:
            statement, call = same[0]
            raise editor.refuse(
                f"{names.model_type!r} is already registered for {task!r} as {call[2]}, not {cls}", statement
            )
        if not same:
            if not any(call[1] == task for _, call in calls):
                raise editor.refuse(
                    f'no `{REGISTER}(..., "{task}")(...)` line to add the {task!r} registration after'
                )
            missing.append((task, cls))
    module, added = _ensure_import(original, names, [names.base_model_class, names.causal_lm_class])
    changes = [f"imported {', '.join(added)}"] if added else []
    for task, cls in missing:
        last = max(
            index
            for index, statement in enumerate(module.body)
            if (call := _registration(statement)) and call[1] == task
        )
        statement = cst.parse_statement(f"{REGISTER}({_string(names.model_type)}, {_string(task)})({cls})\n")
        module = _insert(module, last + 1, statement)
        changes.append(f'registered {cls} for "{task}"')
    editor.module = module
    return changes


def _edit_training_init(editor: _Editor, names: ModelNames) -> list[str]:
    module = editor.module
    if not any(_imports_name(statement, "auto_models", level=1) for statement in module.body):
        raise editor.refuse(
            "does not import `auto_models` (`from . import auto_models`), so registrations never run"
        )
    wanted = [names.causal_lm_class]  # optimum-neuron's own models export only their causal LM here
    module, added = _ensure_import(module, names, wanted)
    changes = [f"imported {', '.join(added)}"] if added else []
    for index, statement in enumerate(module.body):
        target = _assigned_list(statement, "__all__")
        if target is None:
            continue
        present = set(_strings(target.elements))
        missing = [name for name in sorted(wanted) if name not in present]
        if missing:
            new_list = target
            for name in missing:
                new_list = _append(new_list, cst.SimpleString(_string(name)))
            module = _replace_in_body(module, index, target, new_list)
            changes.append(f"added {', '.join(missing)} to __all__")
        break
    editor.module = module
    return changes


def _edit_custom_modeling_test(editor: _Editor, names: ModelNames) -> list[str]:
    for index, statement in enumerate(editor.module.body):
        target = _assigned_list(statement, CUSTOM_MODELINGS_LIST)
        if target is None:
            continue
        entry = next(
            (e.value for e in target.elements if _first_string(e.value) == names.causal_lm_class), None
        )
        if entry is not None:
            return _replace_test_model(
                editor, entry, names, f"for {names.causal_lm_class} in {CUSTOM_MODELINGS_LIST}"
            )
        entry = cst.parse_expression(f"({_string(names.causal_lm_class)}, {_string(names.test_model)})")
        editor.module = _replace_in_body(editor.module, index, target, _append(target, entry))
        return [f"added {names.causal_lm_class} to {CUSTOM_MODELINGS_LIST}"]
    raise editor.refuse(
        f"no top-level `{CUSTOM_MODELINGS_LIST} = [...]` list to add {names.causal_lm_class} to"
    )


def _edit_overfit_test(editor: _Editor, names: ModelNames) -> list[str]:
    function = _function(editor, OVERFIT_FUNCTION)
    for decorator in function.decorators:
        call = decorator.decorator
        if not (
            isinstance(call, cst.Call)
            and _dotted(call.func) == "pytest.mark.parametrize"
            and len(call.args) >= 2
        ):
            continue
        argnames = _literal(call.args[0].value)
        if not isinstance(argnames, str) or argnames.split(",")[0].strip() != "model_class_name":
            continue
        rows = call.args[1].value
        if not isinstance(rows, cst.List):
            raise editor.refuse("the model rows of the parametrize are not a list literal", decorator)
        existing = next(
            (e.value for e in rows.elements if _first_string(e.value) == names.causal_lm_class), None
        )
        if existing is not None:
            return _replace_test_model(
                editor, function, names, f"in the {names.causal_lm_class} row of {OVERFIT_FUNCTION}"
            )
        values = {
            "model_class_name": _string(names.causal_lm_class),
            "model_name_or_path": _string(names.test_model),
        }
        values.update(OVERFIT_DEFAULTS)
        row_names = [name.strip() for name in argnames.split(",")]
        unknown = [name for name in row_names if name not in values]
        if unknown:
            raise editor.refuse(
                f"unknown overfit parameter(s) {', '.join(unknown)}: cannot build a row", decorator
            )
        row = _row_like(rows, [cst.parse_expression(values[name]) for name in row_names])
        new_args = list(call.args)
        new_args[1] = new_args[1].with_changes(value=_append(rows, row))
        for position, argument in enumerate(new_args):
            if argument.keyword is not None and argument.keyword.value == "ids":
                if not isinstance(argument.value, cst.List):
                    raise editor.refuse("the `ids=` of the parametrize is not a list literal", decorator)
                new_args[position] = argument.with_changes(
                    value=_append(argument.value, cst.SimpleString(_string(names.test_model)))
                )
        new_function = function.with_deep_changes(call, args=new_args)
        editor.module = editor.module.deep_replace(function, new_function)
        return [f"added a {names.causal_lm_class} row to {OVERFIT_FUNCTION}"]
    raise editor.refuse(
        f'{OVERFIT_FUNCTION} has no `@pytest.mark.parametrize("model_class_name,...", [...])` to add a row to',
        function,
    )


def _edit_modeling_auto_test(editor: _Editor, names: ModelNames) -> list[str]:
    changes = []
    for name in AUTO_FUNCTIONS:
        function = _function(editor, name)
        loop = next(
            (
                node
                for node in _walk(function.body)
                if isinstance(node, cst.For)
                and isinstance(node.iter, cst.List)
                and _strings(node.iter.elements)
            ),
            None,
        )
        if loop is None:
            raise editor.refuse(
                f"{name} has no `for ... in [<checkpoints>]:` loop to add the model to", function
            )
        assert isinstance(loop.iter, cst.List)
        present = _strings(loop.iter.elements)
        if names.test_model in present:
            continue
        if any(old in present for old in names.replaceable):
            changes += _replace_test_model(editor, loop, names, f"in {name}")
            continue
        new_loop = loop.with_changes(iter=_append(loop.iter, cst.SimpleString(_string(names.test_model))))
        editor.module = editor.module.deep_replace(loop, new_loop)
        changes.append(f"added {names.test_model} to {name}")
    return changes


def _replace_test_model(editor: _Editor, scope: cst.CSTNode, names: ModelNames, where: str) -> list[str]:
    """Replace, inside `scope`, the string literals holding a replaceable checkpoint by `test_model`.

    In the overfit test `scope` is the whole function, so the row and its `ids=` entry change together.
    """
    replacer = _StringReplacer(set(names.replaceable), _string(names.test_model))
    new_scope = scope.visit(replacer)
    if not replacer.replaced:
        return []
    editor.module = editor.module.deep_replace(scope, new_scope)
    return [f"replaced {', '.join(sorted(replacer.replaced))} by {names.test_model} {where}"]


class _StringReplacer(cst.CSTTransformer):
    """Replaces every string literal whose value is in `olds` by the literal `new` (in one pass)."""

    def __init__(self, olds: set[str], new: str) -> None:
        super().__init__()
        self.olds = olds
        self.new = new
        self.replaced: set[str] = set()

    def leave_SimpleString(
        self, original_node: cst.SimpleString, updated_node: cst.SimpleString
    ) -> cst.SimpleString:
        value = _literal(original_node)
        if isinstance(value, str) and value in self.olds:
            self.replaced.add(value)
            return updated_node.with_changes(value=self.new)
        return updated_node


def _row_like(rows: cst.List, values: list[cst.BaseExpression]) -> cst.BaseExpression:
    """A list row holding `values`, laid out as the last list row of `rows` (one value per line...)."""
    siblings = [e.value for e in rows.elements if isinstance(e.value, cst.List)]
    model = siblings[-1] if siblings else None
    if model is None or len(model.elements) != len(values):
        return cst.List(elements=[cst.Element(value=value) for value in values])
    elements = [
        element.with_changes(value=value) for element, value in zip(model.elements, values, strict=True)
    ]
    return model.with_changes(elements=elements)


# --- libcst helpers ---------------------------------------------------------------------------------------


def _string(value: str) -> str:
    """A double-quoted Python string literal (the repository's style)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _literal(node: cst.BaseExpression) -> object:
    """The value of a literal expression node, or None when it is not one."""
    try:
        return ast.literal_eval(cst.Module(body=[]).code_for_node(node))
    except (ValueError, SyntaxError):
        return None


def _first_string(node: cst.BaseExpression) -> str | None:
    """First element of a tuple/list row, or first argument of `pytest.param(...)`, when a string."""
    if isinstance(node, cst.Tuple | cst.List) and node.elements:
        value = _literal(node.elements[0].value)
    elif isinstance(node, cst.Call) and node.args:
        value = _literal(node.args[0].value)
    else:
        return None
    return value if isinstance(value, str) else None


def _strings(elements: Sequence[cst.BaseElement]) -> list[str]:
    """The string values among `elements` (empty when any element is not a plain string)."""
    values = [_literal(element.value) for element in elements]
    return (
        [value for value in values if isinstance(value, str)]
        if all(isinstance(v, str) for v in values)
        else []
    )


def _dotted(node: cst.BaseExpression) -> str:
    if isinstance(node, cst.Name):
        return node.value
    if isinstance(node, cst.Attribute):
        return f"{_dotted(node.value)}.{node.attr.value}"
    return ""


def _walk(node: cst.CSTNode) -> list[cst.CSTNode]:
    found: list[cst.CSTNode] = []
    for child in node.children:
        found.append(child)
        found.extend(_walk(child))
    return found


def _function(editor: _Editor, name: str) -> cst.FunctionDef:
    for statement in editor.module.body:
        if isinstance(statement, cst.FunctionDef) and statement.name.value == name:
            return statement
    raise editor.refuse(f"no top-level function `{name}` to add the model to")


def _small(statement: cst.CSTNode) -> cst.BaseSmallStatement | None:
    """The only small statement of a one-statement line."""
    if isinstance(statement, cst.SimpleStatementLine) and len(statement.body) == 1:
        return statement.body[0]
    return None


def _assigned_list(statement: cst.CSTNode, name: str) -> cst.List | None:
    small = _small(statement)
    if (
        isinstance(small, cst.Assign)
        and len(small.targets) == 1
        and isinstance(small.targets[0].target, cst.Name)
        and small.targets[0].target.value == name
        and isinstance(small.value, cst.List)
    ):
        return small.value
    return None


def _registration(statement: cst.CSTNode) -> tuple[str, str, str] | None:
    """(model type, task, class) of a `register_neuron_model_for_training("t", "task")(Cls)` line."""
    small = _small(statement)
    if not isinstance(small, cst.Expr) or not isinstance(small.value, cst.Call):
        return None
    outer = small.value
    inner = outer.func
    if not (isinstance(inner, cst.Call) and _dotted(inner.func) == REGISTER and len(inner.args) == 2):
        return None
    model_type, task = (_literal(argument.value) for argument in inner.args)
    if not (isinstance(model_type, str) and isinstance(task, str) and len(outer.args) == 1):
        return None
    return model_type, task, _dotted(outer.args[0].value)


def _defines_or_imports(statement: cst.CSTNode, name: str) -> bool:
    if isinstance(statement, cst.FunctionDef):
        return statement.name.value == name
    small = _small(statement)
    if isinstance(small, cst.ImportFrom) and not isinstance(small.names, cst.ImportStar):
        return any(_alias_name(alias) == name for alias in small.names)
    return False


def _imports_name(statement: cst.CSTNode, name: str, level: int) -> bool:
    small = _small(statement)
    return (
        isinstance(small, cst.ImportFrom)
        and len(small.relative) == level
        and small.module is None
        and not isinstance(small.names, cst.ImportStar)
        and any(_alias_name(alias) == name for alias in small.names)
    )


def _alias_name(alias: cst.ImportAlias) -> str:
    if alias.asname is not None and isinstance(alias.asname.name, cst.Name):
        return alias.asname.name.value
    return _dotted(alias.name)


def _relative_module(statement: cst.CSTNode) -> str | None:
    """Dotted module of a level-1 relative `from .x.y import ...` line, else None."""
    small = _small(statement)
    if isinstance(small, cst.ImportFrom) and len(small.relative) == 1 and small.module is not None:
        return _dotted(small.module)
    return None


def _ensure_import(module: cst.Module, names: ModelNames, wanted: list[str]) -> tuple[cst.Module, list[str]]:
    """`from .<package>.<modeling module> import <wanted>` present, placed in isort order; returns added names."""
    dotted = f"{names.package_name}.{names.modeling_module}"
    for index, statement in enumerate(module.body):
        if _relative_module(statement) != dotted:
            continue
        small = _small(statement)
        assert isinstance(small, cst.ImportFrom)
        if isinstance(small.names, cst.ImportStar):
            return module, []
        present = [_alias_name(alias) for alias in small.names]
        missing = [name for name in wanted if name not in present]
        if not missing:
            return module, []
        merged = cst.parse_statement(f"from .{dotted} import {', '.join(sorted({*present, *missing}))}\n")
        assert isinstance(merged, cst.SimpleStatementLine)
        body = list(module.body)
        body[index] = merged.with_changes(leading_lines=statement.leading_lines)
        return module.with_changes(body=body), missing
    relatives = [(index, _relative_module(s)) for index, s in enumerate(module.body) if _relative_module(s)]
    later = [index for index, other in relatives if other is not None and other.lower() > dotted.lower()]
    if later:
        statement = cst.parse_statement(f"from .{dotted} import {', '.join(sorted(wanted))}\n")
        return _insert(module, later[0], statement, before=True), sorted(wanted)
    if relatives:
        position = relatives[-1][0] + 1
    else:
        imports = [
            index for index, s in enumerate(module.body) if isinstance(_small(s), cst.Import | cst.ImportFrom)
        ]
        position = imports[-1] + 1 if imports else 0
    statement = cst.parse_statement(f"from .{dotted} import {', '.join(sorted(wanted))}\n")
    return _insert(module, position, statement), sorted(wanted)


def _insert(
    module: cst.Module, position: int, statement: cst.BaseStatement, before: bool = False
) -> cst.Module:
    """`statement` inserted at `position`; `before`: it takes over the blank lines / comments above the
    statement it now precedes (it becomes the first of that group), else it joins the group above."""
    body = list(module.body)
    if before and position < len(body):
        following = body[position]
        if isinstance(following, cst.SimpleStatementLine | cst.FunctionDef | cst.ClassDef) and isinstance(
            statement, cst.SimpleStatementLine
        ):
            statement = statement.with_changes(leading_lines=following.leading_lines)
            body[position] = following.with_changes(leading_lines=())
    body.insert(position, statement)
    return module.with_changes(body=body)


def _replace_in_body(module: cst.Module, index: int, old: cst.CSTNode, new: cst.CSTNode) -> cst.Module:
    body = list(module.body)
    body[index] = body[index].deep_replace(old, new)
    return module.with_changes(body=body)


def _append(container: cst.List, value: cst.BaseExpression) -> cst.List:
    """`container` with `value` appended, in the layout of its existing elements (one per line or inline)."""
    elements = list(container.elements)
    if not elements:
        return container.with_changes(elements=[cst.Element(value=value)])
    last = elements[-1]
    if len(elements) >= 2 and isinstance(elements[-2].comma, cst.Comma):
        separator = elements[-2].comma
    else:
        separator = cst.Comma(whitespace_after=container.lbracket.whitespace_after)
        if (
            isinstance(separator.whitespace_after, cst.SimpleWhitespace)
            and not separator.whitespace_after.value
        ):
            separator = cst.Comma(whitespace_after=cst.SimpleWhitespace(" "))
    elements[-1] = last.with_changes(comma=separator)
    elements.append(cst.Element(value=value, comma=last.comma))
    return container.with_changes(elements=elements)
