"""Decide each layer's tensor-parallel role: from the config's tp plan where it shards, else dataflow.

Evidence, strongest first:
- `base_model_tp_plan` with a plain sharding style: `colwise` -> column, `rowwise` -> row. Other
  styles (`colwise_rep`, `rowwise_rep`, `local_*`, `gather`, ...) gather or replicate outputs in HF's
  own TP and say nothing about Megatron-style sharding, so they are recorded but not used.
- Dataflow inside the owner's forward: a projection whose output feeds another projection of the
  same module (through heads, attention, an activation or a product) is column; one that consumes
  other projections' outputs is row; a projection of the causal-LM head whose output is returned is
  the vocabulary-parallel lm_head. A projection that both consumes and feeds is refused (R010).
- Token embeddings (sized by the vocabulary) are vocabulary-parallel; other embeddings stay whole.
- A head transform (a module the causal LM applies to the base model's output before the vocabulary
  projection, ModernBERT-decoder's dense + activation + norm `lm_head`) runs on the hidden stream as the
  layers' norms do: a linear in it that the dataflow leaves without a role stays replicated.
Names of modules or models are never evidence.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..blueprint import Expr, LayerKind, Location, Refusal, Role
from ..refusal_codes import CHAINED_PROJECTION, ROLE_CONFLICT, UNKNOWN_ROLE
from .dataflow import Flow, sources

PLAIN_STYLES = {"colwise": Role.COLUMN, "rowwise": Role.ROW}


@dataclass(frozen=True)
class FlowRole:
    """What the dataflow of the owner's forward says about one projection."""

    role: Role | None
    evidence: str
    chained: bool = False


def dataflow_roles(flow: Flow | None, projections: frozenset[str], head_class: bool) -> dict[str, FlowRole]:
    """Roles of a class's projections from its forward's dataflow."""
    if flow is None:
        return {attr: FlowRole(None, "no forward") for attr in projections}
    producers: dict[str, set[str]] = {attr: set() for attr in projections}
    for call in flow.module_calls:
        if call.attribute in projections:
            producers[call.attribute] |= (sources(call.inputs) & projections) - {call.attribute}
    consumers: dict[str, set[str]] = {attr: set() for attr in projections}
    for consumer, feeding in producers.items():
        for producer in feeding:
            consumers[producer].add(consumer)
    returned = sources(flow.returns)
    roles: dict[str, FlowRole] = {}
    for attr in sorted(projections):
        feeds, consumes = sorted(consumers[attr]), sorted(producers[attr])
        if feeds and consumes:
            roles[attr] = FlowRole(
                None, f"consumes {', '.join(consumes)} and feeds {', '.join(feeds)}", chained=True
            )
        elif feeds:
            roles[attr] = FlowRole(Role.COLUMN, f"feeds {', '.join(feeds)}")
        elif consumes:
            suffix = "; output returned" if attr in returned else ""
            roles[attr] = FlowRole(Role.ROW, f"consumes {', '.join(consumes)}{suffix}")
        elif head_class and attr in returned:
            roles[attr] = FlowRole(Role.LM_HEAD, "output returned by the causal-LM head (logits)")
        else:
            roles[attr] = FlowRole(None, "output neither feeds nor consumes another projection")
    return roles


def head_transforms(flow: Flow | None, roles: dict[str, FlowRole], base: str) -> frozenset[str]:
    """Children of the causal LM whose forward chains them from the base model's output (`base`) into
    the vocabulary projection: `self.decoder(self.lm_head(hidden))` gives `lm_head`."""
    heads = {attr for attr, found in roles.items() if found.role is Role.LM_HEAD}
    if flow is None or not heads or not base:
        return frozenset()
    inputs: dict[str, set[str]] = {}
    for call in flow.module_calls:
        inputs.setdefault(call.attribute, set()).update(sources(call.inputs))
    found: set[str] = set()
    frontier = set().union(*(inputs.get(head, set()) for head in heads)) - heads - {base}
    while frontier:
        attribute = frontier.pop()
        feeding = inputs.get(attribute, set())
        if attribute in found or not feeding:
            continue
        found.add(attribute)
        frontier |= feeding - heads - {base} - found
    return frozenset(attr for attr in found if _reaches(attr, base, inputs))


def _reaches(attribute: str, base: str, inputs: dict[str, set[str]]) -> bool:
    """Whether `attribute`'s input comes from `base` (through other children)."""
    seen: set[str] = set()
    frontier = {attribute}
    while frontier:
        current = frontier.pop()
        if base in inputs.get(current, set()):
            return True
        seen.add(current)
        frontier |= inputs.get(current, set()) - seen
    return False


def plan_key(path: str, prefix: str) -> str | None:
    """Key of `path` in the base model's tp plan (paths are relative to the base model)."""
    return path[len(prefix) + 1 :] if prefix and path.startswith(prefix + ".") else None


@dataclass(frozen=True)
class Decision:
    """A layer's final role, the evidence behind it, and a refusal when the evidence is not enough."""

    role: Role
    evidence: str
    refusal: Refusal | None = None


def decide_projection(style: str | None, flow_role: FlowRole, location: Location, path: str) -> Decision:
    """Combine the tp-plan style and the dataflow role of one linear."""
    planned = PLAIN_STYLES.get(style or "")
    noted = f"tp plan '{style}' is not plain sharding; " if style and planned is None else ""
    if flow_role.chained:
        return Decision(
            Role.UNRESOLVED,
            f"{noted}dataflow: {flow_role.evidence}",
            Refusal(
                CHAINED_PROJECTION.code,
                f"{path} {flow_role.evidence}: {CHAINED_PROJECTION.why}",
                location,
            ),
        )
    found = flow_role.role
    if planned is not None:
        if found is None or found is planned:
            agreement = f"; dataflow agrees ({flow_role.evidence})" if found is planned else ""
            return Decision(planned, f"tp plan '{style}'{agreement}")
        return Decision(
            Role.UNRESOLVED,
            f"tp plan '{style}' vs dataflow {found.value} ({flow_role.evidence})",
            Refusal(
                ROLE_CONFLICT.code,
                f"{path}: tp plan says '{style}' but the dataflow says {found.value} "
                f"({flow_role.evidence}); {ROLE_CONFLICT.why}",
                location,
            ),
        )
    if found is not None:
        return Decision(found, f"{noted}dataflow: {flow_role.evidence}")
    return Decision(
        Role.UNRESOLVED,
        f"{noted}dataflow: {flow_role.evidence}",
        Refusal(UNKNOWN_ROLE.code, f"{path}: {flow_role.evidence}; {UNKNOWN_ROLE.why}", location),
    )


def decide_embedding(num_embeddings: Expr) -> Decision:
    """A vocabulary-sized embedding is the token embedding; others (positions...) stay replicated."""
    text = num_embeddings.resolved or num_embeddings.source
    if "vocab_size" in text:
        return Decision(Role.EMBEDDING, "token embedding (num_embeddings is the vocabulary size)")
    return Decision(Role.REPLICATED, "not sized by the vocabulary (e.g. learned positions): kept whole")


def is_projection(kind: LayerKind) -> bool:
    """Layer kinds that behave as projections in the dataflow."""
    return kind in (LayerKind.LINEAR, LayerKind.CONV1D_TRANSPOSED)
