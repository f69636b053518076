"""Element-wise products of a column-parallel output with a tensor the forward takes as an argument.

A column-parallel linear leaves each rank with its share of the output features. Multiplying that share
element by element with a tensor passed into the forward (`gate(x) * per_layer_input`) pairs the rank's
features with the argument's full width: a shape error, or features paired wrongly where the argument
broadcasts by luck. Nothing in the source shards the argument, so such a product is refused (R031)
rather than converted.
"""

from __future__ import annotations

from collections.abc import Iterator

import libcst as cst

from ..blueprint import LayerSite, Refusal, Role
from ..refusal_codes import SHARDED_TIMES_INPUT
from .context import Context
from .dataflow import Flow, Prov

_PRODUCTS = frozenset({"*", "/"})
_PRODUCT_FUNCTIONS = frozenset({"torch.mul", "torch.multiply", "torch.div", "torch.divide"})


def sharded_times_input(context: Context, sites: list[LayerSite]) -> list[Refusal]:
    """One refusal per product of a column-parallel output (not yet split into heads) with an argument."""
    columns: dict[str, set[str]] = {}
    for site in sites:
        if site.role is Role.COLUMN:
            columns.setdefault(site.owner, set()).add(site.attribute)
    found: list[Refusal] = []
    for owner, attributes in sorted(columns.items()):
        analysis = context.classes.get(owner)
        flow = analysis.forward if analysis is not None else None
        if flow is None:
            continue
        for first, second, node in _products(flow, context):
            for sharded, argument in ((first, second), (second, first)):
                linears = _column_outputs(sharded, attributes)
                if linears and argument and all(origin.is_param for origin in argument):
                    found.append(
                        Refusal(
                            SHARDED_TIMES_INPUT.code,
                            f"{owner}: the output of {', '.join(sorted(linears))} meets the argument "
                            f"{', '.join(sorted(_names(argument)))} element by element; "
                            f"{SHARDED_TIMES_INPUT.why}",
                            context.index.location(node),
                            subject=owner,
                        )
                    )
                    break
    return found


def _products(flow: Flow, context: Context) -> Iterator[tuple[Prov, Prov, cst.CSTNode]]:
    for combine in flow.combines:
        if combine.op in _PRODUCTS:
            yield combine.left, combine.right, combine.node
    for call in flow.function_calls:
        if len(call.positional) == 2 and context.index.qualified_names(call.func) & _PRODUCT_FUNCTIONS:
            yield call.positional[0], call.positional[1], call.node


def _column_outputs(prov: Prov, attributes: set[str]) -> set[str]:
    """The column-parallel linears `prov` comes from, before any split into heads."""
    return {origin.source for origin in prov if origin.source in attributes and not origin.headed}


def _names(prov: Prov) -> set[str]:
    return {origin.source.partition(":")[2] or origin.source for origin in prov}
