"""Facts about the file's plumbing the rules replace or follow: its mask builders, the eager attention
function, how it writes optional annotations and `torch.nn`, the config field its weights' std comes from.

Found through qualified names (the one resolver, `SourceIndex.qualified_names`), so an alias or a
relative import of `transformers.masking_utils` is recognised like the plain import.
"""

from __future__ import annotations

import libcst as cst
import libcst.matchers as m

from ..blueprint import CodeStyle
from ..rules.neuron_flash_attention import eager_default
from ..syntax import find_method, walk
from .context import Context

MASKING_MODULE = "transformers.masking_utils."


def mask_builders(context: Context) -> tuple[str, ...]:
    """The names the kept code uses for transformers' mask builders (`create_causal_mask`, ...), sorted."""
    found: set[str] = set()
    for node in context.index.nodes:
        if isinstance(node, cst.Name) and any(
            name.startswith(MASKING_MODULE) for name in context.index.qualified_names(node)
        ):
            found.add(node.value)
    return tuple(sorted(found))


def eager_function(context: Context, attention_class: str) -> str | None:
    """The module-level function an attention's forward holds in its attention variable before looking
    transformers' table up (`attention_interface = eager_attention_forward`), if it does so."""
    forward = find_method(context.classes[attention_class].facts.node, "forward")
    return eager_default(forward) if forward is not None else None


def code_style(context: Context) -> CodeStyle:
    """How the kept source writes optional annotations and `torch.nn` (inserted code follows it)."""
    optional = nn_alias = False
    for node in context.index.nodes:
        if isinstance(node, cst.Name):
            names = context.index.qualified_names(node)
            optional = optional or "typing.Optional" in names
            nn_alias = nn_alias or (node.value == "nn" and "torch.nn" in names)
    return CodeStyle(optional=optional, nn_alias=nn_alias)


DEFAULT_INIT_STD = "initializer_range"
_SELF_CONFIG = m.Attribute(value=m.Name("self"), attr=m.Name("config"))


def init_std_field(context: Context) -> str:
    """The config field the source's `_init_weights` draws its normal std from (`std = self.config.init_std`,
    or `getattr(self.config, "init_std", ...)`), else transformers' `initializer_range`."""
    for statement in context.index.module.body:
        if not isinstance(statement, cst.ClassDef) or statement.name.value not in context.closure:
            continue
        method = find_method(statement, "_init_weights")
        for node in walk(method) if method is not None else ():
            if not m.matches(node, m.Assign(targets=[m.AssignTarget(target=m.Name("std"))])):
                continue
            value = node.value  # type: ignore[attr-defined]
            if m.matches(value, m.Attribute(value=_SELF_CONFIG)):
                return value.attr.value
            if m.matches(
                value,
                m.Call(
                    func=m.Name("getattr"),
                    args=[m.Arg(_SELF_CONFIG), m.Arg(m.SimpleString()), m.ZeroOrMore()],
                ),
            ):
                return value.args[1].value.evaluated_value
    return DEFAULT_INIT_STD
