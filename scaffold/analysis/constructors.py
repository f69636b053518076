"""Classify the value of `self.<attr> = <value>` in `__init__`: a layer, a submodule, a list, ...

Torch and transformers constructors are recognised by qualified name, never by spelling, so every
import alias of `torch.nn.Linear` is a linear. Local classes are recognised by name lookup in the module.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass

import libcst as cst

from ..blueprint import LayerKind
from .classes import ModuleMap
from .parsing import SourceIndex

LAYER_CONSTRUCTORS: dict[str, LayerKind] = {
    "torch.nn.Linear": LayerKind.LINEAR,
    "torch.nn.modules.linear.Linear": LayerKind.LINEAR,
    "torch.nn.Embedding": LayerKind.EMBEDDING,
    "torch.nn.modules.sparse.Embedding": LayerKind.EMBEDDING,
    "transformers.pytorch_utils.Conv1D": LayerKind.CONV1D_TRANSPOSED,
    "transformers.modeling_utils.Conv1D": LayerKind.CONV1D_TRANSPOSED,
    "torch.nn.Conv1d": LayerKind.CONVOLUTION,
    "torch.nn.Conv2d": LayerKind.CONVOLUTION,
    "torch.nn.Conv3d": LayerKind.CONVOLUTION,
}
TORCH_NORMS: dict[str, str] = {
    "torch.nn.LayerNorm": "layer",
    "torch.nn.RMSNorm": "rms",
    "torch.nn.GroupNorm": "group",
}
MODULE_LISTS = frozenset({"torch.nn.ModuleList", "torch.nn.modules.container.ModuleList"})
PARAMETERS = frozenset({"torch.nn.Parameter", "torch.nn.parameter.Parameter"})
ACTIVATION_TABLES = frozenset({"transformers.activations.ACT2FN", "transformers.activations.ACT2CLS"})
ACTIVATION_FACTORIES = frozenset({"transformers.activations.get_activation"})
ACTIVATION_MODULES = frozenset(
    f"torch.nn.{name}"
    for name in (
        "SiLU",
        "GELU",
        "ReLU",
        "Tanh",
        "Sigmoid",
        "Mish",
        "SELU",
        "ELU",
        "LeakyReLU",
        "Softplus",
        "GLU",
    )
)
ACTIVATION_FUNCTIONS = frozenset(
    [
        f"torch.nn.functional.{name}"
        for name in ("silu", "gelu", "relu", "tanh", "sigmoid", "mish", "softplus")
    ]
    + [f"torch.{name}" for name in ("relu", "sigmoid", "tanh")]
)
STATELESS_MODULES = frozenset(
    f"torch.nn.{name}" for name in ("Dropout", "Identity", "Softmax", "Flatten", "AdaptiveAvgPool1d")
)


class ChildKind(enum.Enum):
    """What an attribute assigned in `__init__` holds."""

    LAYER = "layer"  # torch / transformers layer with weights (see LayerKind)
    TORCH_NORM = "torch_norm"
    CLASS = "class"  # instance of a class defined in the module
    LIST = "list"  # nn.ModuleList of class instances or layers
    ACTIVATION = "activation"
    PARAMETER = "parameter"
    STATELESS = "stateless"
    UNKNOWN_LAYER = "unknown_layer"  # some other torch.nn constructor
    VALUE = "value"  # a plain value (head_dim, scaling, config...)


@dataclass(frozen=True)
class Construct:
    """The classified value of one `self.<attr> = ...`."""

    kind: ChildKind
    call: cst.Call | None = None  # the constructor call (the element call for a list)
    qualified: str = ""  # constructor's qualified name, or the local class name
    layer_kind: LayerKind | None = None
    norm_kind: str | None = None
    element: Construct | None = None  # for a list: what each element is
    loop_targets: tuple[str, ...] = ()  # for a list comprehension: its target names
    heterogeneous: bool = False  # list of several classes, or a class chosen through a table
    optional: bool = False  # one arm of `a if c else b`, the other a parameter-free module
    dispatch_table: str | None = None  # module-level dict the class was looked up in
    subclass_of: str | None = None  # for a local subclass of a torch layer: that layer's qualified name


def classify(value: cst.BaseExpression, index: SourceIndex, mapping: ModuleMap) -> Construct:
    """Classify an `__init__` assignment value (an optional child, `None if c else X(...)` or
    `X(...) if c else None`, as the child it builds when it builds one; an optional norm, `_optional_norm`)."""
    if isinstance(value, cst.IfExp):
        branches = [value.body, value.orelse]
        built = [b for b in branches if not (isinstance(b, cst.Name) and b.value == "None")]
        if len(built) == 1 and isinstance(built[0], cst.Call):
            construct = _classify_call(built[0], index, mapping)
            if construct.kind is ChildKind.CLASS:
                return construct
        return _optional_norm(value, index, mapping)
    if isinstance(value, cst.Subscript) and index.qualified_names(value.value) & ACTIVATION_TABLES:
        return Construct(ChildKind.ACTIVATION, qualified=next(iter(index.qualified_names(value.value))))
    if not isinstance(value, cst.Call):
        names = index.qualified_names(value)
        if names & ACTIVATION_FUNCTIONS:
            return Construct(ChildKind.ACTIVATION, qualified=min(names & ACTIVATION_FUNCTIONS))
        return Construct(ChildKind.VALUE)
    return _classify_call(value, index, mapping)


def _optional_norm(value: cst.IfExp, index: SourceIndex, mapping: ModuleMap) -> Construct:
    """`norm(...) if c else nn.Identity()` (either way round): the norm's construct, marked `optional`
    (the member holds it on the instances where the test picks it). Any other conditional construction is
    a plain value here, and refused in analysis when one of its arms builds weights (R030)."""
    arms = (classify(value.body, index, mapping), classify(value.orelse, index, mapping))
    for built, other in (arms, arms[::-1]):
        if built.kind is ChildKind.TORCH_NORM and other.kind is ChildKind.STATELESS:
            return dataclasses.replace(built, optional=True)
    return Construct(ChildKind.VALUE)


def _classify_call(call: cst.Call, index: SourceIndex, mapping: ModuleMap) -> Construct:
    func = call.func
    if isinstance(func, cst.Name) and func.value in mapping.classes:
        base = torch_base(func.value, index, mapping)
        if base in LAYER_CONSTRUCTORS:
            return Construct(
                ChildKind.LAYER,
                call=call,
                qualified=func.value,
                layer_kind=LAYER_CONSTRUCTORS[base],
                subclass_of=base,
            )
        return Construct(ChildKind.CLASS, call=call, qualified=func.value)
    if isinstance(func, cst.Subscript) and isinstance(func.value, cst.Name):
        table = mapping.assignments.get(func.value.value)
        classes = _table_classes(table, mapping)
        if classes:
            return Construct(
                ChildKind.CLASS,
                call=call,
                qualified=classes[0],
                heterogeneous=len(set(classes)) > 1,
                dispatch_table=func.value.value,
            )
        if index.qualified_names(func.value) & ACTIVATION_TABLES:
            return Construct(ChildKind.ACTIVATION, call=call, qualified="ACT2FN")
    names = index.qualified_names(func)
    for name in sorted(names):
        if name in LAYER_CONSTRUCTORS:
            return Construct(ChildKind.LAYER, call=call, qualified=name, layer_kind=LAYER_CONSTRUCTORS[name])
        if name in TORCH_NORMS:
            return Construct(ChildKind.TORCH_NORM, call=call, qualified=name, norm_kind=TORCH_NORMS[name])
        if name in MODULE_LISTS:
            return _classify_list(call, index, mapping)
        if name in PARAMETERS:
            return Construct(ChildKind.PARAMETER, call=call, qualified=name)
        if name in ACTIVATION_MODULES or name in ACTIVATION_FACTORIES:
            return Construct(ChildKind.ACTIVATION, call=call, qualified=name)
        if name in STATELESS_MODULES:
            return Construct(ChildKind.STATELESS, call=call, qualified=name)
    torch_layers = sorted(name for name in names if name.startswith("torch.nn.") and name[9:10].isupper())
    if torch_layers:
        return Construct(ChildKind.UNKNOWN_LAYER, call=call, qualified=torch_layers[0])
    return Construct(ChildKind.VALUE, call=call)


def torch_base(class_name: str, index: SourceIndex, mapping: ModuleMap, depth: int = 0) -> str | None:
    """The torch layer or norm a local class derives from (through local bases), if any."""
    node = mapping.classes.get(class_name)
    if node is None or depth > 16:
        return None
    for base in node.bases:
        for name in sorted(index.qualified_names(base.value)):
            if name in LAYER_CONSTRUCTORS or name in TORCH_NORMS:
                return name
        if isinstance(base.value, cst.Name) and base.value.value in mapping.classes:
            found = torch_base(base.value.value, index, mapping, depth + 1)
            if found is not None:
                return found
    return None


def _classify_list(call: cst.Call, index: SourceIndex, mapping: ModuleMap) -> Construct:
    if not call.args:
        return Construct(ChildKind.LIST, call=call, heterogeneous=True)
    argument = call.args[0].value
    if isinstance(argument, cst.ListComp | cst.GeneratorExp):
        element = classify(argument.elt, index, mapping)
        targets = _comprehension_targets(argument.for_in)
        heterogeneous = element.heterogeneous or element.kind not in (ChildKind.CLASS, ChildKind.LAYER)
        return Construct(
            ChildKind.LIST,
            call=element.call,
            qualified=element.qualified,
            element=element,
            loop_targets=targets,
            heterogeneous=heterogeneous,
        )
    if isinstance(argument, cst.List) and argument.elements:
        elements = [classify(item.value, index, mapping) for item in argument.elements]
        first = elements[0]
        same = all(item.kind == first.kind and item.qualified == first.qualified for item in elements)
        return Construct(
            ChildKind.LIST,
            call=first.call,
            qualified=first.qualified,
            element=first,
            heterogeneous=not same,
        )
    return Construct(ChildKind.LIST, call=call, heterogeneous=True)


def _comprehension_targets(for_in: cst.CompFor) -> tuple[str, ...]:
    names: list[str] = []
    current: cst.CompFor | None = for_in
    while current is not None:
        target = current.target
        if isinstance(target, cst.Name):
            names.append(target.value)
        elif isinstance(target, cst.Tuple):
            names.extend(item.value.value for item in target.elements if isinstance(item.value, cst.Name))
        current = current.inner_for_in
    return tuple(names)


def _table_classes(table: cst.BaseExpression | None, mapping: ModuleMap) -> list[str]:
    """Local classes listed as values of a module-level dict (`X_ATTENTION_CLASSES = {...}`)."""
    if not isinstance(table, cst.Dict):
        return []
    return [
        element.value.value
        for element in table.elements
        if isinstance(element, cst.DictElement)
        and isinstance(element.value, cst.Name)
        and element.value.value in mapping.classes
    ]
