"""Facts about the file's plumbing the rules replace or follow: its mask builders, the eager attention
function, how it writes optional annotations and `torch.nn`.

Found through qualified names (the one resolver, `SourceIndex.qualified_names`), so an alias or a
relative import of `transformers.masking_utils` is recognised like the plain import.
"""

from __future__ import annotations

import libcst as cst

from ..blueprint import CodeStyle
from ..rules.neuron_flash_attention import eager_default
from ..syntax import find_method
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
