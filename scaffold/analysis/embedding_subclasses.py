"""Token embeddings built from a local subclass of `nn.Embedding` that only scales the table's output.

transformers writes scaled word embeddings (`embedding(ids) * sqrt(hidden_size)`) as a subclass whose
`__init__` calls the parent's and keeps the factor in a buffer or attribute, and whose `forward` returns
`super().forward(ids)` multiplied or divided by it. The lookup is the parent's, so the subclass can derive
from `ParallelEmbedding` instead (NXS010): the factor applies elementwise to whatever layout the parallel
lookup returns. Any other subclass (its own parameters, a forward that shifts the ids, reads the table or
takes more inputs, e.g. learned positions with an offset) stays refused (R012).
"""

from __future__ import annotations

import libcst as cst
import libcst.matchers as m

from ..patterns import SUPER_INIT_CALL
from ..syntax import walk
from .classes import ClassFacts
from .constructors import PARAMETERS
from .parsing import SourceIndex

SUPER_FORWARD = m.Call(func=m.Attribute(value=m.Call(func=m.Name("super"), args=[]), attr=m.Name("forward")))
TABLE_METADATA = frozenset({"dtype", "device"})  # reads of `self.weight` that do not depend on its values


def is_scaled_lookup(facts: ClassFacts, index: SourceIndex) -> bool:
    """Whether the class is a lookup of its parent table, scaled elementwise, with nothing of its own to
    train: one base, not a local class; only `__init__` and `forward`; `__init__` calls the parent's and creates no parameter or
    layer; `forward` takes one input, passes it unchanged to `super().forward` once and reads the table
    only for its dtype or device."""
    if len(facts.bases) != 1 or facts.local_bases:
        return False  # a direct subclass: NXS010 swaps that one base for ParallelEmbedding
    if set(facts.methods) != {"__init__", "forward"} or facts.init is None or facts.forward is None:
        return False
    if facts.init.params.star_kwarg is not None or not _parent_init_only(facts.init, index):
        return False
    return _scales_parent_lookup(facts.forward)


def is_replicated_lookup(facts: ClassFacts, index: SourceIndex) -> bool:
    """Whether the class is a table kept whole with nothing of its own to train: one base, not a local
    class; `__init__` calls the parent's and creates no parameter or layer (its forward may be anything)."""
    if len(facts.bases) != 1 or facts.local_bases or facts.init is None:
        return False
    return _parent_init_only(facts.init, index)


def _parent_init_only(init: cst.FunctionDef, index: SourceIndex) -> bool:
    calls = [node for node in walk(init) if isinstance(node, cst.Call)]
    if sum(m.matches(call, SUPER_INIT_CALL) for call in calls) != 1:
        return False
    for call in calls:
        names = index.qualified_names(call.func)
        if names & PARAMETERS or any(name.startswith("torch.nn.") and name[9:10].isupper() for name in names):
            return False
    return True


def _scales_parent_lookup(forward: cst.FunctionDef) -> bool:
    params = forward.params
    if isinstance(params.star_arg, cst.Param) or params.star_kwarg is not None or params.kwonly_params:
        return False
    if len(params.params) != 2:
        return False
    ids = params.params[1].name.value
    lookups = [
        node for node in walk(forward) if isinstance(node, cst.Call) and m.matches(node, SUPER_FORWARD)
    ]
    if len(lookups) != 1 or [code_of(arg) for arg in lookups[0].args] != [ids]:
        return False
    for node in walk(forward):
        if m.matches(node, m.Attribute(value=m.Name("self"), attr=m.Name("weight"))) and not _metadata_read(
            forward, node
        ):
            return False
    return True


def code_of(arg: cst.Arg) -> str:
    """A plain positional argument's name (`*`/`**` or keywords give a distinct text)."""
    if arg.keyword is not None or arg.star:
        return f"{arg.star}{arg.keyword.value if arg.keyword else ''}="
    return arg.value.value if isinstance(arg.value, cst.Name) else ""


def _metadata_read(forward: cst.FunctionDef, weight: cst.CSTNode) -> bool:
    """`self.weight` read as `self.weight.dtype` or `self.weight.device`."""
    return any(
        isinstance(node, cst.Attribute) and node.value is weight and node.attr.value in TABLE_METADATA
        for node in walk(forward)
    )
