"""The Blueprint: every fact the rules need about one transformers model, as plain frozen data.

Analysis builds it once from the modeling source and the config class; rules read it and never look at
the source again to decide anything. Every fact that comes from a place in the source carries that place
(`Location`), so every message the tool prints can name a file and line. Sizes are kept as *source
expressions* (`Expr`): the text as written, and the same expression rewritten in terms of `config` alone,
which `Expr.evaluate(config)` computes for a concrete configuration.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
from dataclasses import dataclass
from typing import Any

SAFE_BUILTINS: dict[str, Any] = {
    "getattr": getattr,
    "min": min,
    "max": max,
    "int": int,
    "float": float,
    "math": math,
}


@dataclass(frozen=True)
class Location:
    """A place in a source file; `file` is a stable display path (e.g. `transformers/models/...`)."""

    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class Expr:
    """A source expression and, when it depends on nothing but `config`, its config-only form.

    `variables` lists the per-instance loop variables the resolved form may also use (`layer_idx` for
    an expression that differs between decoder layers).
    """

    source: str
    resolved: str | None
    variables: tuple[str, ...] = ()

    def evaluate(self, config: Any, **variables: Any) -> Any:
        """Compute the expression for a config instance (and values of `variables`).

        Raises ValueError when the expression is not config-only.
        """
        if self.resolved is None:
            raise ValueError(f"`{self.source}` does not resolve to an expression of the config")
        missing = sorted(set(self.variables) - set(variables))
        if missing:
            raise ValueError(f"`{self.resolved}` needs values for {', '.join(missing)}")
        namespace = {"config": config, **variables}
        return eval(self.resolved, {"__builtins__": SAFE_BUILTINS}, namespace)

    def __str__(self) -> str:
        if self.resolved is None or self.resolved == self.source:
            return self.source
        return f"{self.source}  [= {self.resolved}]"


class Role(enum.StrEnum):
    """How a layer is split across tensor-parallel ranks."""

    COLUMN = "column"  # output features sharded
    ROW = "row"  # input features sharded, output all-reduced / reduce-scattered
    EMBEDDING = "embedding"  # token embedding, vocabulary sharded
    LM_HEAD = "lm_head"  # vocabulary-sharded output projection feeding the parallel loss
    REPLICATED = "replicated"  # kept whole on every rank
    UNRESOLVED = "unresolved"  # no evidence; always comes with a refusal


class LayerKind(enum.StrEnum):
    """The constructor family of a layer site."""

    LINEAR = "linear"
    EMBEDDING = "embedding"
    CONV1D_TRANSPOSED = "conv1d_transposed"  # transformers' Conv1D: a linear with a transposed weight
    CONVOLUTION = "convolution"  # torch.nn.ConvNd
    OTHER = "other"


class ClassKind(enum.StrEnum):
    """What a class in the dependency closure does, decided from its structure."""

    CAUSAL_LM = "causal_lm"
    BASE_MODEL = "base_model"
    PRETRAINED = "pretrained"
    DECODER_LAYER = "decoder_layer"
    ATTENTION = "attention"
    MLP = "mlp"
    NORM = "norm"
    ROTARY = "rotary"
    MODULE = "module"
    OTHER = "other"


class NormScope(enum.StrEnum):
    """What a norm reduces over, which decides how tensor parallelism treats it."""

    HIDDEN = "hidden"  # the residual stream: replicated weight, sequence-parallel under SP
    PER_HEAD = "per_head"  # each head's head_dim after the split into heads: local to a rank
    FULL_WIDTH = "full_width"  # all heads of a sharded projection: needs a cross-rank reduction
    HEAD_ROWS = "head_rows"  # each head's head_dim with its own weight row per head: sharded with the heads


@dataclass(frozen=True)
class LayerSite:
    """One parameterised layer instance, addressed by its module path from the causal-LM root."""

    path: str  # "model.layers.*.self_attn.q_proj"
    owner: str  # class whose __init__ builds it
    attribute: str  # "q_proj"
    kind: LayerKind
    constructor: str  # qualified name, e.g. "torch.nn.Linear"
    source: str  # the constructor call as written
    in_features: Expr  # for an embedding: num_embeddings
    out_features: Expr  # for an embedding: embedding_dim
    bias: Expr  # for an embedding: "False"
    padding_idx: Expr | None
    role: Role
    evidence: str  # why the role: tp plan style or the dataflow fact
    plan_key: str | None  # key of the config's base_model_tp_plan covering it, if any
    conditional: bool  # built under an `if` in __init__
    location: Location


@dataclass(frozen=True)
class NormSite:
    """A normalisation layer instance."""

    path: str
    owner: str
    attribute: str
    norm_class: str  # local class name or qualified torch name
    kind: str  # "rms", "layer", "group" or "other"
    width: Expr
    eps: Expr | None
    scope: NormScope
    normalises: tuple[str, ...]  # projection attributes it is applied to (q/k norms), else ()
    location: Location


@dataclass(frozen=True)
class ParameterSite:
    """A bare `nn.Parameter` created outside a norm class (sinks, lambdas, learnable scalars...)."""

    path: str
    owner: str
    attribute: str
    source: str
    location: Location


@dataclass(frozen=True)
class ClassPlan:
    """A class of the dependency closure of the base model and the causal-LM head."""

    name: str
    kind: ClassKind
    bases: tuple[str, ...]
    children: tuple[tuple[str, str], ...]  # (attribute, class or layer constructor) in __init__ order
    paths: tuple[str, ...]  # module paths where instances live ("" for the root)
    location: Location
    config_parameter: str | None = None  # the `__init__` parameter holding the model config, if any
    # the torch norm it subclasses (qualified), whose parameters it inherits
    torch_norm_base: str | None = None
    # optional linears (`if c: self.x = nn.Linear(...)` / `else: self.x = None`) left replicated as written
    optional_linears: tuple[str, ...] = ()


@dataclass(frozen=True)
class Backbone:
    """Where the standard pieces of a decoder-only model live."""

    base_model_prefix: str  # attribute of the causal LM holding the base model ("model")
    embedding: str | None  # path of the token embedding
    layers: str | None  # path of the decoder-layer list
    decoder_layer: str | None  # its class
    final_norm: str | None  # path
    rotary: str | None  # path of the rotary-embedding module
    lm_head: str | None  # path
    positions: tuple[str, ...] = ()  # paths of the base model's position embeddings (learned, replicated)
    stack_class: str = ""  # the class that embeds and loops over the layers: the base model, or its decoder
    head_transforms: tuple[
        str, ...
    ] = ()  # children of the causal LM applied to the hidden stream before lm_head


@dataclass(frozen=True)
class AttentionGeometry:
    """A softmax attention: its projections and head geometry as expressions of the config."""

    owner: str
    path: str
    q: str
    k: str
    v: str
    o: str
    num_heads: Expr
    num_kv_heads: Expr
    head_dim: Expr
    scaling: Expr | None
    sliding_window: Expr | None
    softcap: Expr | None
    q_norm: str | None
    k_norm: str | None
    core_call: Location  # the call that computes softmax(q k^T) v
    eager_function: str | None = None  # the module-level eager attention function the forward defaults to
    # Instance attributes holding a total head count that the forward's head reshapes read (directly or
    # through a helper method's arguments), each with the per-rank attribute NXS021 gives it instead.
    total_head_counts: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class MLPBlock:
    """A column -> row feed-forward block; gated when `gate` is set: down(act(gate(x)) * up(x))."""

    owner: str
    path: str
    gate: str | None
    up: str
    down: str
    activation: Expr | None
    intermediate_size: Expr
    location: Location


@dataclass(frozen=True)
class PackedExperts:
    """The experts of a sparse block held as two packed parameters `[experts, ., .]` (paths relative to the
    block): gate | up concatenated along the features, and down. `transposed`: stored `[E, out, in]`
    (applied as `F.linear`) rather than `[E, in, out]`. `classes`: the source classes the rebuilt block
    replaces (the packed-expert modules and the router module)."""

    gate_up: str
    down: str
    transposed: bool
    classes: tuple[str, ...]


@dataclass(frozen=True)
class MoEBlock:
    """A sparse mixture-of-experts block: a linear router, softmax, top-k (optionally renormalised) or a
    routing function of the source, and a list of gated expert MLPs, optionally a shared expert scaled by
    a sigmoid gate; sizes as config expressions. `normalize` is the condition under which the top-k probabilities are renormalised
    ("True", "False" or a config expression); `jitter` the router jitter of the source, if any."""

    owner: str  # the block class
    router: str  # attribute of the router linear
    experts: str  # attribute of the expert list
    expert_class: str
    gate: str  # the expert's projections
    up: str
    down: str
    num_experts: Expr
    top_k: Expr
    hidden_size: Expr
    intermediate_size: Expr
    activation: Expr
    normalize: Expr
    jitter: Expr | None
    shared_expert: str | None  # attribute of the shared expert MLP, if any
    shared_expert_gate: str | None  # attribute of its sigmoid gate (a linear to one output), if any
    layer_class: str  # the decoder layer that holds the block
    layer_attribute: str  # its attribute there
    dense_layers: bool  # the layer builds the block under a condition (other layers hold a dense MLP)
    logits_plumbed: bool  # the source's layers return the router logits already (`output_router_logits`)
    location: Location
    # A block that routes with a function of its own: the call as NxD's router writes it (`router_logits`,
    # `self.config.<field>`, `self.training`) and the function's name; None for softmax -> top-k.
    routing: str | None = None
    routing_function: str | None = None
    # Experts packed as parameters (then `experts`, `expert_class`, `gate`, `up` and `down` name the packed
    # gate | up module, its class and the packed parameters' paths); None for a list of expert MLPs.
    packed: PackedExperts | None = None


@dataclass(frozen=True)
class Scale:
    """A constant factor applied to a module's output (embedding, residual branch or logits)."""

    owner: str
    applies_to: str  # attribute whose output is scaled
    op: str  # "*" or "/"
    factor: Expr
    location: Location


@dataclass(frozen=True)
class ConfigField:
    """A config attribute read by the source, with its default value in the config class."""

    name: str
    default: str  # repr of the default, or "<unset>"


@dataclass(frozen=True)
class Features:
    """Behaviour the generated model must keep (DESIGN §3): each one traced to the source."""

    qkv_bias: Expr | None
    o_bias: Expr | None
    mlp_bias: Expr | None
    qk_norm: str  # "none", "per_head", "head_rows" or "full_width"
    sliding_window: Expr | None
    attention_softcap: Expr | None
    final_logit_softcap: Expr | None
    attention_scaling: Expr | None
    partial_rotary: Expr | None
    embedding_scale: Scale | None
    residual_scales: tuple[Scale, ...]
    logits_scale: Scale | None
    tie_word_embeddings: bool  # config default
    tied_weights_keys: tuple[str, ...]
    explicit_head_dim: bool  # the config class has a head_dim field
    norm_kinds: tuple[str, ...]
    activation: Expr | None
    rotary: bool
    mlp: str  # "gated", "plain" or "none"


@dataclass(frozen=True)
class CodeStyle:
    """How the source file writes what inserted code also writes, so the output does not mix styles."""

    optional: bool = False  # annotations use `Optional[X]` rather than `X | None`
    nn_alias: bool = True  # `torch.nn` is bound as `nn` (`from torch import nn`)


@dataclass(frozen=True)
class Refusal:
    """Something the rules cannot convert safely; `code` is stable (see `scaffold.refusal_codes`).

    `subject` names the class or function that holds the construct and `rules` the rules that cannot
    convert it: with `--allow-unsupported` those rules leave the subject as written, with a marker.
    """

    code: str
    message: str
    location: Location
    subject: str | None = None
    rules: tuple[str, ...] = ()

    def __str__(self) -> str:
        return f"{self.location}: {self.code} {self.message}"


@dataclass(frozen=True)
class SourceFusion:
    """One linear of the source read as `part_names` (in output-feature order).

    `part_sizes` are expressions valid in the owner's constructor where the linear was built; `bias` is
    the source's bias argument. `groups` (an expression of the same kind) is set when the parts are
    interleaved: the output features form that many equal groups, each holding its share of every part
    in part order (per head `[q k v]`); None when the parts follow one another. A linear the source builds
    as transformers' `Conv1D` is recorded even when it is not split (one part, its own name), `transposed`.
    `groups_in_forward`: the forward cuts each part's output into `groups` groups itself (CodeGen's
    `mp_num`), so each rank's heads of a part must be a multiple of `groups`.
    """

    owner: str
    source_name: str
    part_names: tuple[str, ...]
    part_sizes: tuple[str, ...]
    bias: str
    location: Location
    groups: str | None = None
    transposed: bool = False  # the checkpoint stores the weight `[in, out]` (transformers' Conv1D)
    groups_in_forward: bool = False  # the forward cuts each part into the groups (per rank, once parallel)


@dataclass(frozen=True)
class CrossAttentionGuard:
    """A constructor branch that built cross-attention modules under `test` (in `__init__` terms), read as
    absent: NXS017 makes `owner`'s constructor raise when `test` holds."""

    owner: str
    test: str
    attributes: tuple[str, ...]  # what the branch built
    location: Location


@dataclass(frozen=True)
class CrossAttentionPruning:
    """The cross-attention path analysis read as absent (`analysis.cross_attention`), for NXS017: the
    inputs to remove from signatures and calls, the guards to add, and the constructor parameters that
    only the removed branches passed (class, parameter), which go too."""

    guards: tuple[CrossAttentionGuard, ...] = ()
    inputs: tuple[str, ...] = ()
    defaulted: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class InputGuard:
    """The base-model class `owner` builds the optional input `name` of its layers only when `condition`
    (an expression of its constructor, `config.alibi`) holds; analysis read the model with it off
    (`analysis.optional_inputs`), so the generated model refuses the condition at construction (NXS028)."""

    owner: str
    name: str
    condition: str
    location: Location


@dataclass(frozen=True)
class HeadBias:
    """The layer stack `owner` builds `name`, a tensor with one slice per attention head (an ALiBi bias),
    from the total head count `heads` (as its forward writes it, `self.num_heads`) in the statement at
    `location`, and passes it to every layer; the attention adds it to its scores. Heads are sharded over
    TP, so NXS031 keeps each rank's heads of it. `mask` is the forward's padding-mask parameter where the
    statement reads it (ALiBi positions counted over the unpadded tokens)."""

    owner: str
    name: str
    heads: str
    location: Location
    mask: str | None = None


@dataclass(frozen=True)
class CacheCallee:
    """A function NXS002 removes parameters from, as a call of it sees it."""

    function: str  # "GPT2Block.forward"
    parameters: tuple[str, ...]  # the parameters a positional argument binds, in order (`self` left out)
    removed: tuple[str, ...]  # the ones NXS002 removes: cache parameters and those the cache reaches


@dataclass(frozen=True)
class CacheForwarding:
    """Where the KV cache travels between the file's functions, for NXS002 to follow it.

    A cache passed under another name (`layer(..., layer_past=past_key_values)`) makes the callee's
    parameter of that name a cache parameter too (`aliases`); a call whose callee loses parameters has
    the arguments bound to them dropped, positional ones included (`calls`); a method that takes the
    cache and that nothing in the file calls serves generation only (`helpers`).
    """

    aliases: tuple[tuple[str, tuple[str, ...]], ...] = ()  # function -> parameters the cache reaches
    calls: tuple[tuple[str, str, CacheCallee], ...] = ()  # (caller, callee as written, callee)
    helpers: tuple[str, ...] = ()  # "Class.method"

    def aliases_of(self, function: str) -> frozenset[str]:
        """The parameters of `function` that receive the cache under another name."""
        return frozenset(name for owner, names in self.aliases if owner == function for name in names)

    def callees_of(self, function: str) -> dict[str, CacheCallee]:
        """The calls in `function` whose callee loses parameters, by the callee as written."""
        return {written: callee for caller, written, callee in self.calls if caller == function}


@dataclass(frozen=True)
class Blueprint:
    """Everything known about one model, in deterministic order (source order, then path)."""

    model_type: str
    transformers_version: str
    source_file: str
    config_class: str
    base_model_class: str
    causal_lm_class: str
    tp_plan: tuple[tuple[str, str], ...]
    backbone: Backbone
    classes: tuple[ClassPlan, ...]
    functions: tuple[str, ...]  # module-level helper functions in the closure, source order
    sites: tuple[LayerSite, ...]
    norms: tuple[NormSite, ...]
    parameters: tuple[ParameterSite, ...]
    attention: tuple[AttentionGeometry, ...]
    mlps: tuple[MLPBlock, ...]
    features: Features
    config_fields: tuple[ConfigField, ...]
    refusals: tuple[Refusal, ...]
    source_package: str = ""  # the dotted package the source's relative imports resolve against
    mask_builders: tuple[str, ...] = ()  # names the file binds to transformers' mask builders
    style: CodeStyle = CodeStyle()
    init_std: str = "initializer_range"  # the config field the source's _init_weights draws its std from
    fusions: tuple[SourceFusion, ...] = ()  # linears the source splits into parts (read as separate)
    input_guards: tuple[InputGuard, ...] = ()  # config flags the model was read without (NXS028 refuses them)
    moe: tuple[MoEBlock, ...] = ()  # sparse MoE blocks that NXS040 rebuilds on NxD's MoE
    # (owner, attribute) of activations with learnable parameters applied to a parallel MLP's intermediate
    learnable_activations: tuple[tuple[str, str], ...] = ()
    cache: CacheForwarding = CacheForwarding()  # where the KV cache travels (NXS002)
    cross_attention: CrossAttentionPruning = CrossAttentionPruning()  # read as absent (NXS017)
    head_biases: tuple[HeadBias, ...] = ()  # per-head attention biases the layer stack builds (NXS031)

    def site(self, path: str) -> LayerSite:
        """The layer site at `path` (KeyError when there is none)."""
        for site in self.sites:
            if site.path == path:
                return site
        raise KeyError(path)

    def class_plan(self, name: str) -> ClassPlan:
        """The closure class named `name` (KeyError when there is none)."""
        for plan in self.classes:
            if plan.name == name:
                return plan
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-compatible data, fields in declaration order."""
        return _plain(dataclasses.asdict(self))

    def to_json(self) -> str:
        """Deterministic JSON text of `to_dict()`."""
        return json.dumps(self.to_dict(), indent=2)


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value
