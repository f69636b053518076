"""Stable codes for constructs the scaffolder refuses to convert.

A code never changes meaning once released. Every refusal is decided in analysis, before any rule runs;
`--allow-unsupported` writes `TODO(<code>)` at the location instead of refusing. Each entry says what
was found, why a plain tensor-parallel rewrite would be wrong, and what a contributor can do about it
(`scaffold rules <code>` prints it; docs/codes.md lists them all).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RefusalCode:
    """One refusal class: its code, short name, why it cannot be converted and what to do about it."""

    code: str
    name: str
    why: str
    remedy: str


MOE = RefusalCode(
    "R001",
    "mixture-of-experts",
    "a block with experts that NXS040 does not recognise: it rebuilds a sparse block on NxD's MoE only when it "
    "holds one linear router, one list of gated expert MLPs and at most a shared expert (with a sigmoid gate), "
    "or a router module and two packed-expert modules (gate | up and down, one [experts, ., .] parameter each)",
    "bring the block to that shape in a copy of the modeling file (--source), or write it with NxD's MoE "
    "(RouterTopK + ExpertMLPs) by hand from the TODO marker",
)
CONV1D_TRANSPOSED = RefusalCode(
    "R002",
    "conv1d-weights",
    "transformers' Conv1D stores linear weights transposed; analysis reads it as nn.Linear (its checkpoint "
    "weight transposed by NXS027's TransposedSourceFusedLinearSpec) only where a constructor builds it as "
    "`self.<attr> = Conv1D(nf, nx)`, two positional arguments",
    "build each Conv1D as its own attribute in the constructor, `self.<attr> = Conv1D(nf, nx)`, in a copy of "
    "the modeling file (--source), or convert it to nn.Linear with a spec that transposes its weight by hand",
)
INTERLEAVED_QKV = RefusalCode(
    "R003",
    "interleaved-fused-qkv",
    "a fused projection whose output interleaves q, k and v per head, viewed in a form other than the one "
    "analysis reads as separate linears (`t = self.x(inp).view(..., n * d)`, then transposes that keep the last "
    "dimension last, then `t.chunk(n, dim=-1)`, the shape read nowhere else, the group count computable in the "
    "constructor; or `a, b, c = self.helper(t)` where the helper's branches, tested on `self` attributes, each view "
    "`t` as (batch, seq, [groups,] heads, d) and pick the parts' heads by literal indices in order; or, in the "
    "branch of an `if`/`else` on `self` attributes whose every branch unpacks a split of the same linear, "
    "`a, b, c = self.x(inp).view(<batch, seq>, groups, n * d).transpose(1, 2).split(n * [d], dim=-1)`; NXS027), "
    "cannot be column-split contiguously",
    "rewrite the view and split in that form, or split the fused projection into separate q, k and v linears "
    "in a copy of the modeling file (--source), with a weight spec that de-interleaves the checkpoint",
)
FULL_WIDTH_NORM = RefusalCode(
    "R004",
    "full-width-norm",
    "a norm over the full width of a column-parallel output reduces across ranks; NXS026 distributes an RMS "
    "norm (with its eps given) over the whole output of the query or key projection, no other",
    "make it an RMS norm of one query or key projection in a copy of the modeling file (--source), or use "
    "templates/modules/tensor_parallel_norms.py by hand (ColumnParallelLayerNorm for a LayerNorm; its "
    "weight sharded with the columns, HeadRowsSpec for NxD's GQA layer)",
)
NON_SOFTMAX_MIXER = RefusalCode(
    "R005",
    "non-softmax-mixer",
    "convolution, state-space or recurrent token mixers have no tensor-parallel rule",
    "such models are out of scope for the scaffolder; write the training model by hand",
)
CROSS_ATTENTION = RefusalCode(
    "R006",
    "cross-attention",
    "keys and values computed from another input than the queries (encoder states) are out of scope "
    "(parameters every call binds to the same expression, `attn(x, x, x)`, count as one input); a decoder's "
    "optional cross-attention path is removed instead (NXS017) where every read of the encoder inputs "
    "(`encoder_hidden_states`, `encoder_attention_mask`, `key_value_states`) sits in a branch decided by "
    "their being None, or passes them on unchanged",
    "encoder-decoder models are out of scope; for a decoder whose cross-attention path could not be removed, "
    "move the reads of the encoder inputs under `if <input> is not None:` branches in a copy of the modeling "
    "file (--source), or write the training model by hand",
)
FUSED_PROJECTION = RefusalCode(
    "R007",
    "fused-projection",
    "a projection whose output the source splits, in a form other than the ones analysis reads as separate "
    "linears (an nn.Linear built once, called once, its output cut by `t[..., a:b]` slices, "
    "`t.chunk(n, dim=-1)` or, unpacked in the statement that calls it, `t.split(size, dim=-1)` (`dim=2` "
    "too where the linear reads the block's input) after at most in-place clamps `t = t.clamp(...)`, or "
    "first cut into groups `g = t.reshape(t.shape[:-1] + (groups, -1))` and then split by "
    "`torch.split(g, size, dim=-1)` or `g.chunk(n, dim=-1)`, and read nowhere else, part sizes and group "
    "count the constructor can compute; or, in the branches of an `if`/`else` on `self` attributes each "
    "unpacking a split of the same linear, `a, b, c = self.x(inp)[.unsqueeze(1)].split((s1, s2, s3), "
    "dim=-1)` then views of the parts `t = t.view(<batch, seq>, h, d).transpose(1, 2)`; NXS027), needs a "
    "per-part split of its weight",
    "rewrite the split in one of those forms, or split the projection into one linear per part in a copy of "
    "the modeling file (--source) with a spec that splits its checkpoint tensor",
)
UNKNOWN_ROLE = RefusalCode(
    "R008",
    "unknown-role",
    "neither the config's tp plan nor the dataflow says whether this layer is column or row parallel",
    "add the layer to the config class's `base_model_tp_plan` (colwise or rowwise) in a patched "
    "transformers, or decide its role by hand at the TODO marker",
)
ROLE_CONFLICT = RefusalCode(
    "R009",
    "role-conflict",
    "the config's tp plan and the dataflow in the source give this layer different roles",
    "check which is right: fix the tp plan entry, or the source's dataflow if it hides the role",
)
CHAINED_PROJECTION = RefusalCode(
    "R010",
    "chained-projection",
    "a linear that consumes one projection and feeds another (low-rank / latent attention) fits no role",
    "keep the low-rank layers replicated or shard them by hand; latent attention needs its own rule",
)
UNMAPPED_PARAMETER = RefusalCode(
    "R011",
    "unmapped-parameter",
    "a bare nn.Parameter outside a norm, or an activation with learnable parameters anywhere but a parallel "
    "MLP's intermediate (NXS025), has no sharding rule",
    "decide whether the parameter is replicated (and sums its gradient over TP) or sharded, by hand",
)
UNKNOWN_LAYER = RefusalCode(
    "R012",
    "unknown-layer",
    "a torch.nn layer with parameters that the analysis does not know",
    "replace the layer by a known one in a copy of the modeling file (--source), or shard it by hand; a "
    "token embedding may be a subclass of nn.Embedding whose forward only scales `super().forward(ids)`, "
    "learned positions held by the base model (or its decoder) a subclass that trains nothing but its "
    "table, a linear a subclass of nn.Linear whose only method is a forward computing the plain linear "
    "(`x @ self.weight.T` plus the bias when there is one, or `F.linear(x, self.weight, self.bias)`)",
)
LAYER_STACK = RefusalCode(
    "R013",
    "layer-stack",
    "the decoder-layer list mixes classes or builds them indirectly, so no single layer class can be planned",
    "build the layers as `nn.ModuleList([LayerClass(config, i) for i in range(n)])` in the base model, or "
    "in the one module it holds that embeds and loops over them (`self.decoder = Decoder(config)`), in a "
    "copy of the modeling file (--source)",
)
UNRECOGNISED_ATTENTION = RefusalCode(
    "R014",
    "unrecognised-attention",
    "projections are split into heads but no attention over separate q, k and v projections was found "
    "(a call taking q and k, `torch.matmul(q, k.T)` or a biased `bias.baddbmm(q, k.T)`, then v, then the "
    "output projection)",
    "rewrite the attention as q/k/v projections feeding one attention call (as transformers' Llama does) in "
    "a copy of the modeling file (--source)",
)
HEAD_SHARDED_NORM = RefusalCode(
    "R015",
    "per-head-norm-weights",
    "a norm applied per head whose weight is neither one head_dim vector (replicated) nor one head_dim row "
    "per head of its projection, `(heads, head_dim)` (sharded by head, NXS026), has no sharding rule",
    "shard the norm's weight by head by hand (templates/modules/tensor_parallel_norms.py's shard_by_head "
    "and attention_norm_weights.py's HeadRowsSpec do it for one row per head)",
)
RELATIVE_IMPORT = RefusalCode(
    "R016",
    "relative-import-outside-package",
    "a relative import climbs above the package the modeling file belongs to, so it has no absolute form",
    "make the import absolute in a copy of the modeling file (--source)",
)
INHERITED_DEFINITION = RefusalCode(
    "R017",
    "inherited-definition",
    "the rules rewrite a class's own __init__ and forward, but this class inherits the one they must change "
    "(or builds the layer in its base class)",
    "define the method in the class itself (copy it from the base) in a copy of the modeling file "
    "(--source), or convert the class by hand",
)
NO_CONFIG_PARAMETER = RefusalCode(
    "R018",
    "no-config-parameter",
    "the constructor builds parallel layers or sequence-parallel norms but takes no config parameter to "
    "read their sizes, dtype and init range from, and NXS004 cannot give it one (a call of it outside "
    "the constructor of a class that holds a config, or a `config` name or `*args` already there), or "
    "takes it as an optional parameter (`config=None`) that a call leaves out (NXS004 moves an optional "
    "config every call passes first, required)",
    "pass the model config to the constructor (as `config`, or a parameter annotated with the config "
    "class) in a copy of the modeling file (--source)",
)
CACHE_USE = RefusalCode(
    "R019",
    "cache-use",
    "the function still uses the KV cache after the cache plumbing is removed (calls it, reads its "
    "attributes or items): a use of the cache the rule does not understand",
    "remove the cache use by hand (training runs without a cache), or simplify it in a copy of the "
    "modeling file (--source)",
)
NORM_WITHOUT_SP = RefusalCode(
    "R020",
    "norm-without-sp-form",
    "a torch norm over the hidden stream has no sequence-parallel counterpart in NxD (only LayerNorm has)",
    "use a local norm class (its weight gets the sequence-parallel flag) or NxD's LayerNorm, in a copy of "
    "the modeling file (--source)",
)
MASK_BUILDERS = RefusalCode(
    "R021",
    "mask-builders",
    "the base model builds its attention masks in a way the host's create_causal_mask cannot replace",
    "build the masks with create_causal_mask / create_sliding_window_causal_mask, their arguments passed "
    "directly or from a dict literal (or a `.copy()` of one), or write the host mask call by hand",
)
LAYER_LOOP = RefusalCode(
    "R022",
    "layer-loop",
    "the base model's forward does not call its decoder layers in a loop over the layer list, so gradient "
    "checkpointing cannot wrap the calls",
    "loop `for layer in self.layers: hidden_states = layer(hidden_states, ...)` (or `for i, layer in "
    "enumerate(self.layers)`) in a copy of the modeling file (--source), or add checkpoint_with_kwargs by hand",
)
LM_HEAD_FORWARD = RefusalCode(
    "R023",
    "lm-head-forward",
    "the causal LM does not compute its logits and loss as transformers' standard head does (one lm_head, "
    "its output assigned to a name, the loss from self.loss_function)",
    "compute `logits = self.lm_head(hidden_states)` and `loss = self.loss_function(...)` in a copy of the "
    "modeling file (--source), or write the vocab-parallel head and loss by hand",
)
UNFUSABLE_GATE_UP = RefusalCode(
    "R024",
    "unfusable-gate-up",
    "the gate and up projections differ in input or bias, are built conditionally, or are not called once "
    "each on the same input, so they cannot share one fused layer",
    "build and call them as plain `self.gate_proj = nn.Linear(...)` / `self.gate_proj(x)` in a copy of the "
    "modeling file (--source), or fuse them by hand",
)
QKV_PROJECTIONS = RefusalCode(
    "R025",
    "qkv-projections",
    "the q, k and v projections differ in input or bias, are built conditionally, are not called once each "
    "on the forward's input (parameters every call binds to the same name, `attn(x, x, x)`, count as one "
    "input), or the output projection is not called once: NxD's fused and GQA layers cannot replace them",
    "build and call them as transformers' Llama attention does in a copy of the modeling file (--source), "
    "or convert the attention by hand",
)
ATTENTION_INPUT_SHAPE = RefusalCode(
    "R026",
    "attention-input-shape",
    "the attention forward reads its input's shape other than as `x.shape[:-1]` (or `x.shape[:2]` of its "
    "(B, S, D) input, the older `b, s, _ = x.size()`, or the batch alone as `b = x.shape[0]`), which under "
    "sequence parallelism is the sequence-first shard",
    "read the leading shape as `input_shape = hidden_states.shape[:-1]` in a copy of the modeling file "
    "(--source), or make the marked line batch-first over the full sequence by hand",
)
ATTENTION_DISPATCH = RefusalCode(
    "R027",
    "attention-dispatch",
    "the attention does not pick its kernel from transformers' ALL_ATTENTION_FUNCTIONS with an eager "
    "function that adds its mask as `scores = scores + mask` (nor computes eager attention inline in the "
    "older form: scores, mask block, softmax, `@ v`, `transpose(1, 2)`, on (B, h, S, d) tensors or on "
    "heads folded into the batch, `torch.bmm` over `x.reshape(bsz * h, -1, d)`, its output viewed back "
    "to (B, h, S, d)), so the Neuron flash path cannot be added; an attention that adds a per-head bias the "
    "layer stack builds for every layer (ALiBi) to scores computed inline, with a plain `if <mask> is not "
    "None:` block (`s = s + mask`, or a boolean mask's `s = s.masked_fill(mask, value)`), stays eager "
    "instead (NXS031)",
    "write the eager/flash switch by hand (nki_flash_attn_func when config._attn_implementation == "
    '"flash_attention_2") and a causal mask for calls without one',
)
LINEAR_LAYOUT = RefusalCode(
    "R028",
    "linear-layout",
    "one attribute of a class gets different roles at different module paths, or an nn.Linear's sizes "
    "cannot be read from its arguments",
    "give the instances their own attributes, or pass in_features and out_features to nn.Linear, in a copy "
    "of the modeling file (--source)",
)
UNRECOGNISED_ROUTING = RefusalCode(
    "R029",
    "unrecognised-routing",
    "the experts are routed neither by softmax -> top-k (-> renormalisation) over one linear router, which "
    "NxD's RouterTopK computes, nor by a function of the modeling file that takes the router's logits and "
    "returns `weights, indices` from config-only arguments, which a generated RouterBase subclass calls "
    "(sigmoid, grouped or bias-corrected routing written in the block's forward differ)",
    "write the router by hand (a RouterBase subclass that computes the source's affinities) at the TODO "
    "marker, keeping NxD's ExpertMLPs for the experts, or move the routing into a module function "
    "`weights, indices = route(router_logits, ...)` in a copy of the modeling file (--source)",
)
CONDITIONAL_MODULE = RefusalCode(
    "R030",
    "conditional-module",
    "a module attribute is built by a conditional expression (`a if c else b`) that is not a torch norm "
    "beside a parameter-free module (`nn.LayerNorm(...) if i else nn.Identity()`): the rules cannot tell "
    "which layer the attribute holds, so they would leave its weights unconverted (a norm's gradient "
    "partial under sequence parallelism)",
    "build the attribute with an `if`/`else` statement, or convert it by hand at the TODO marker",
)
SHARDED_TIMES_INPUT = RefusalCode(
    "R031",
    "sharded-times-input",
    "the output of a column-parallel linear (each rank holds its share of the output features) is multiplied "
    "or divided element by element by a tensor the forward takes as an argument, which holds every feature "
    "on every rank: the shapes no longer match, or the product pairs the wrong features",
    "shard the argument's features over the tensor-parallel ranks where the caller builds it (as the "
    "linear's output is), or keep the linear whole by hand at the TODO marker",
)

ALL_CODES: tuple[RefusalCode, ...] = (
    MOE,
    CONV1D_TRANSPOSED,
    INTERLEAVED_QKV,
    FULL_WIDTH_NORM,
    NON_SOFTMAX_MIXER,
    CROSS_ATTENTION,
    FUSED_PROJECTION,
    UNKNOWN_ROLE,
    ROLE_CONFLICT,
    CHAINED_PROJECTION,
    UNMAPPED_PARAMETER,
    UNKNOWN_LAYER,
    LAYER_STACK,
    UNRECOGNISED_ATTENTION,
    HEAD_SHARDED_NORM,
    RELATIVE_IMPORT,
    INHERITED_DEFINITION,
    NO_CONFIG_PARAMETER,
    CACHE_USE,
    NORM_WITHOUT_SP,
    MASK_BUILDERS,
    LAYER_LOOP,
    LM_HEAD_FORWARD,
    UNFUSABLE_GATE_UP,
    QKV_PROJECTIONS,
    ATTENTION_INPUT_SHAPE,
    ATTENTION_DISPATCH,
    LINEAR_LAYOUT,
    UNRECOGNISED_ROUTING,
    CONDITIONAL_MODULE,
    SHARDED_TIMES_INPUT,
)


def refusal_code(code: str) -> RefusalCode:
    """The refusal code `code` (KeyError when there is none)."""
    for entry in ALL_CODES:
        if entry.code == code:
            return entry
    raise KeyError(code)
