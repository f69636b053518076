"""Recognising sparse MoE blocks (scaffold.analysis.moe): the facts NXS040 reads, read off real
transformers files and off a hand-written block with unusual names, and the refusals of blocks it cannot
rebuild (R029 routing, R001 shape), each at the line that holds the construct."""

from __future__ import annotations

from pathlib import Path

import pytest

from scaffold.analysis import analyze
from scaffold.blueprint import Blueprint
from scaffold.emit import Request
from scaffold.package import render_package
from scaffold.source import locate

from .conftest import blueprint_of, source_line
from .emission import cached_emit
from .synthetic import REST, model_source

SPARSE = """

class Sparse(tnn.Module):
    def __init__(self, config):
        super().__init__()
        self.k = config.num_experts_per_tok
        self.flag = config.norm_topk_prob
        self.route = Dense(config.hidden_size, config.num_local_experts, bias=False)  # <- router
        self.pool = tnn.ModuleList([Feed(config) for _ in range(config.num_local_experts)])  # <- experts
        {init}

    def forward(self, x):
        scores = self.route(x)
        {routing}
        out = x
        for e in range(len(self.pool)):
            out = out + self.pool[e](x) * (picked == e).any(-1, keepdim=True) * 0
        {shared}
        return out, scores
"""
SOFTMAX_TOPK = "probs = F.softmax(scores, dim=-1)\n        top, picked = torch.topk(probs, self.k, dim=-1)"


def moe_source(init: str = "pass", routing: str = SOFTMAX_TOPK, normalise: str = "", shared: str = "") -> str:
    """The synthetic model with its feed-forward replaced by a sparse block of `Feed` experts."""
    rest = REST.replace("self.ff = Feed(config)", "self.ff = Sparse(config)").replace(
        "        return x + self.ff(self.n2(x))",
        "        y, _ = self.ff(self.n2(x))\n        x = x + y\n        return x",
    )
    text = model_source().replace(REST.format(block_init="pass"), rest.format(block_init="pass"))
    sparse = SPARSE.format(
        init=init, routing=routing + ("\n        " + normalise if normalise else ""), shared=shared
    )
    return text.replace("\n\nclass Block(", sparse + "\n\nclass Block(")


def analyse(tmp_path: Path, text: str) -> Blueprint:
    path = tmp_path / "modeling_synthetic.py"
    path.write_text(text)
    return analyze(locate("llama", path))


def line_of(text: str, marker: str) -> int:
    (line,) = [number for number, content in enumerate(text.splitlines(), 1) if marker in content]
    return line


def test_mixtral_block_facts_come_from_its_source():
    (block,) = blueprint_of("mixtral").moe
    assert (block.owner, block.router, block.experts, block.expert_class) == (
        "MixtralSparseMoeBlock",
        "gate",
        "experts",
        "MixtralBlockSparseTop2MLP",
    )
    assert (block.gate, block.up, block.down) == ("w1", "w3", "w2")  # w2(act(w1(x)) * w3(x))
    resolved = {
        field: getattr(block, field).resolved
        for field in ("num_experts", "top_k", "hidden_size", "intermediate_size", "activation", "normalize")
    }
    assert resolved == {
        "num_experts": "config.num_local_experts",
        "top_k": "config.num_experts_per_tok",
        "hidden_size": "config.hidden_size",
        "intermediate_size": "config.intermediate_size",
        "activation": "config.hidden_act",
        "normalize": "True",  # `routing_weights /= routing_weights.sum(...)` unconditionally
    }
    assert block.jitter is not None and block.jitter.resolved == "config.router_jitter_noise"
    assert (block.shared_expert, block.shared_expert_gate) == (None, None)
    assert (block.layer_class, block.layer_attribute, block.dense_layers) == (
        "MixtralDecoderLayer",
        "block_sparse_moe",
        False,
    )
    assert "class MixtralSparseMoeBlock" in source_line("mixtral", block.location.line)
    router = blueprint_of("mixtral").site("model.layers.*.block_sparse_moe.gate")
    assert router.role.value == "replicated"
    assert blueprint_of("mixtral").refusals == ()


def test_qwen3_moe_normalises_under_norm_topk_prob_and_keeps_dense_layers():
    (block,) = blueprint_of("qwen3_moe").moe
    assert block.normalize.resolved == "config.norm_topk_prob"  # `if self.norm_topk_prob:`
    assert block.dense_layers  # built under `if ... decoder_sparse_step ...` in the decoder layer
    assert block.intermediate_size.resolved is not None
    assert block.intermediate_size.resolved.startswith("config.moe_intermediate_size")
    assert block.jitter is None
    assert blueprint_of("qwen3_moe").refusals == ()


def test_phimoe_routes_with_its_sparsemixer_which_the_block_keeps():
    (block,) = blueprint_of("phimoe").moe
    # `routing_weights, selected_experts = sparsemixer(router_logits, jitter_eps=self.router_jitter_noise,
    # training=self.training)`; `def sparsemixer(scores, jitter_eps, training, top_k=2)`
    assert (block.routing_function, block.router) == ("sparsemixer", "gate")
    assert block.routing is not None
    assert "".join(block.routing.split()) == (
        "sparsemixer(router_logits,jitter_eps=self.config.router_jitter_noise,training=self.training,)"
    )
    assert block.top_k.resolved == "2"  # the function's default, not the config's num_experts_per_tok
    assert block.normalize.resolved == "False"  # the function's weights are used as they are
    assert block.jitter is not None and block.jitter.resolved == "config.input_jitter_noise"
    assert (block.gate, block.up, block.down) == ("w1", "w3", "w2")
    assert block.logits_plumbed  # its layers take `output_router_logits`
    codes = {refusal.code for refusal in blueprint_of("phimoe").refusals}
    assert not codes & {"R001", "R008", "R029"}  # the router is the block's (R008 was its gate)


def test_qwen2_moe_shared_expert_and_gate_are_recognised_and_its_layers_return_the_logits_already():
    (block,) = blueprint_of("qwen2_moe").moe
    # `shared_expert_output = F.sigmoid(self.shared_expert_gate(hidden_states)) * shared_expert_output`
    assert (block.shared_expert, block.shared_expert_gate) == ("shared_expert", "shared_expert_gate")
    assert block.intermediate_size.resolved == "config.moe_intermediate_size"
    assert block.logits_plumbed  # its decoder layer takes `output_router_logits` and returns them
    # the older attention and mask code around it is read in its current form (analysis.current_forms)
    assert not blueprint_of("qwen2_moe").refusals


def test_a_block_with_other_names_is_recognised(tmp_path: Path):
    blueprint = analyse(tmp_path, moe_source())
    (block,) = blueprint.moe
    assert (block.owner, block.router, block.experts, block.expert_class) == (
        "Sparse",
        "route",
        "pool",
        "Feed",
    )
    assert (block.gate, block.up, block.down) == ("r", "p", "s")  # s(p(x) * silu(r(x))): r is the gate
    assert block.num_experts.resolved == "config.num_local_experts"
    assert block.top_k.resolved == "config.num_experts_per_tok"
    assert block.normalize.resolved == "False"  # no renormalisation
    assert (block.layer_class, block.layer_attribute) == ("Block", "ff")
    assert not [refusal for refusal in blueprint.refusals if refusal.code in ("R001", "R029")]


@pytest.mark.parametrize(
    ("normalise", "expected"),
    [
        ("top = top / top.sum(dim=-1, keepdim=True)", "True"),
        ("if self.flag:\n            top /= top.sum(dim=-1, keepdim=True)", "config.norm_topk_prob"),
    ],
)
def test_renormalisation_is_read_with_its_condition(tmp_path: Path, normalise: str, expected: str):
    (block,) = analyse(tmp_path, moe_source(normalise=normalise)).moe
    assert block.normalize.resolved == expected


ROUTING_FUNCTION = """

def choose(scores, noise, training, top_k=2):
    weights, picked = torch.topk(scores, top_k, dim=-1)
    return weights.sigmoid(), picked
"""


def test_a_routing_function_of_the_module_is_carried_with_its_config_arguments(tmp_path: Path):
    text = moe_source(
        init="self.noise = config.rms_norm_eps * 2",
        routing="top, picked = choose(scores, self.noise, self.training)  # <- routing",
    ).replace("\n\nclass Sparse(", ROUTING_FUNCTION + "\n\nclass Sparse(")
    (block,) = analyse(tmp_path, text).moe
    assert block.routing == "choose(router_logits, self.config.rms_norm_eps * 2, self.training)"
    assert (block.routing_function, block.router, block.top_k.resolved) == ("choose", "route", "2")
    assert block.normalize.resolved == "False"


@pytest.mark.parametrize(
    ("routing", "why"),
    [
        (
            "top, picked = choose(scores, x.sum(), self.training)",
            "`x.sum()`, which the router cannot compute",
        ),
        ("top, picked = scores.sort(dim=-1)", "they go to no function of the modeling file"),
        ("both = choose(scores, 0.1, self.training)", "not unpacked as `weights, indices = choose(...)`"),
    ],
)
def test_a_routing_function_the_router_cannot_call_is_refused(tmp_path: Path, routing: str, why: str):
    text = moe_source(routing=routing).replace("\n\nclass Sparse(", ROUTING_FUNCTION + "\n\nclass Sparse(")
    blueprint = analyse(tmp_path, text)
    assert blueprint.moe == ()
    (refusal,) = [refusal for refusal in blueprint.refusals if refusal.code == "R029"]
    assert why in refusal.message
    assert refusal.location.line == line_of(text, "# <- router")


def test_a_shared_expert_and_its_sigmoid_gate_are_recognised(tmp_path: Path):
    text = moe_source(
        init="self.common = Feed(config)\n        self.weigh = Dense(config.hidden_size, 1, bias=False)",
        shared="out = out + torch.sigmoid(self.weigh(x)) * self.common(x)",
    )
    (block,) = analyse(tmp_path, text).moe
    assert (block.shared_expert, block.shared_expert_gate) == ("common", "weigh")


def test_top_k_of_raw_logits_is_refused_as_routing_at_the_router(tmp_path: Path):
    text = moe_source(routing="top, picked = torch.topk(scores, self.k, dim=-1)")
    blueprint = analyse(tmp_path, text)
    assert blueprint.moe == ()
    (refusal,) = [refusal for refusal in blueprint.refusals if refusal.code == "R029"]
    assert "other than a softmax" in refusal.message
    assert refusal.location.line == line_of(text, "# <- router")


def test_another_module_in_the_block_is_refused_at_its_line(tmp_path: Path):
    text = moe_source(init="self.extra = Norm(config.hidden_size)  # <- other")
    blueprint = analyse(tmp_path, text)
    (refusal,) = [refusal for refusal in blueprint.refusals if refusal.code == "R001"]
    assert "`extra`" in refusal.message
    assert refusal.location.line == line_of(text, "# <- other")


def test_a_package_on_nxd_moe_carries_the_expert_weight_specs_as_they_are():
    files = render_package(cached_emit(Request("mixtral"))).files
    template = Path(__file__).resolve().parents[2] / "templates" / "modules" / "moe_expert_weights.py"
    assert files["moe_expert_weights.py"] == template.read_bytes()
    assert (
        "from .moe_expert_weights import ExpertMLPsSpec, RenamedParametersSpec"
        in files["modeling_mixtral.py"].decode()
    )
    assert "moe_expert_weights.py" not in render_package(cached_emit(Request("llama"))).files


@pytest.mark.parametrize(
    ("model_type", "why", "written"),
    [
        # gpt_oss: one experts module holds both packed tensors, and their biases.
        (
            "gpt_oss",
            "`experts` (GptOssExperts) holds 2 packed parameters (`gate_up_proj`, `down_proj`)",
            "self.gate_up_proj = nn.Parameter(torch.empty(",
        ),
        (
            "gpt_oss",
            "holds `gate_up_proj_bias`, `down_proj_bias` besides",
            "self.gate_up_proj = nn.Parameter(",
        ),
        # jetmoe: granitemoe's block plus a parameter of its own.
        (
            "jetmoe",
            "also holds `bias` besides the router and the packed experts",
            "self.bias = torch.nn.Parameter(",
        ),
    ],
)
def test_packed_experts_of_another_shape_are_refused_at_the_construct(
    model_type: str, why: str, written: str
):
    (refusal,) = [r for r in blueprint_of(model_type).refusals if r.code == "R001" and why in r.message]
    assert written in source_line(model_type, refusal.location.line)
    assert "experts packed as one tensor" not in " ".join(
        r.message for r in blueprint_of(model_type).refusals
    )


def test_the_router_of_a_refused_block_is_covered_by_the_blocks_refusal():
    """gpt_oss's block is refused once; its router module (top-k, bare weight and bias), built only there,
    gets no top-k R001 or R011 of its own (nothing of the block is converted)."""
    refusals = blueprint_of("gpt_oss").refusals
    assert [r.code for r in refusals if r.code == "R001"] == ["R001"]
    assert not [r for r in refusals if "GptOssTopKRouter" in r.message]
    assert [r.message.split(" = ")[0] for r in refusals if r.code == "R011"] == ["GptOssAttention.sinks"]


# --- experts packed as parameters ------------------------------------------------------------------------

PACKED = """

class Bank(tnn.Module):
    def __init__(self, count, fan_in, fan_out):
        super().__init__()
        self.table = tnn.Parameter(torch.empty(count, fan_in, fan_out))  # <- table

    def forward(self, x, sizes):
        parts = x.split(sizes, dim=0)
        return torch.cat([{apply} for i in range(len(parts))], dim=0)


class Chooser(tnn.Module):
    def __init__(self, width, count, k):
        super().__init__()
        self.k = k
        self.score = Dense(width, count, bias=False)

    def forward(self, x):
        scores = self.score(x).float()
        best, picked = scores.topk(self.k, dim=-1)
        weights = torch.softmax(best, dim=-1)
        return picked, weights, scores


class Sparse(tnn.Module):
    def __init__(self, config):
        super().__init__()
        self.act = ACT2FN[config.hidden_act]
        self.chooser = Chooser(config.hidden_size, config.num_local_experts, config.num_experts_per_tok)
        self.first = Bank(config.num_local_experts, config.hidden_size, 2 * config.intermediate_size)
        self.second = Bank(config.num_local_experts, config.intermediate_size, config.hidden_size)

    def forward(self, x):  # <- forward
        picked, weights, scores = self.chooser(x)
        sizes = [int((picked == e).sum()) for e in range(weights.shape[-1])]
        both = self.first(x, sizes)
        halves = both.chunk(2, dim=-1)
        inner = {product}
        out = self.second(inner, sizes)
        return out, scores
"""
MATMUL = "parts[i] @ self.table[i]"
GATE_UP = "self.act(halves[0]) * halves[1]"


def packed_source(apply: str = MATMUL, product: str = GATE_UP) -> str:
    """The synthetic model whose feed-forward is a block of packed experts (`Bank`), routed by `Chooser`."""
    text = moe_source()
    start, end = text.index("\n\nclass Sparse("), text.index("\n\nclass Block(")
    block = PACKED.replace("{apply}", apply).replace("{product}", product)
    text = text[:start] + block + text[end:]
    return text.replace(
        "from torch.nn import functional as F\n",
        "from torch.nn import functional as F\n\nfrom ...activations import ACT2FN\n",
    )


def test_packed_experts_are_read_from_the_forward_and_the_shapes(tmp_path: Path):
    blueprint = analyse(tmp_path, packed_source())
    (block,) = blueprint.moe
    assert block.packed is not None
    # `x @ table[i]`: stored [E, in, out]; `act(halves[0]) * halves[1]`: gate | up; `second` takes the product.
    assert (block.packed.gate_up, block.packed.down, block.packed.transposed) == (
        "first.table",
        "second.table",
        False,
    )
    assert block.packed.classes == ("Bank", "Chooser")
    assert (block.router, block.experts, block.expert_class) == ("chooser.score", "first", "Bank")
    resolved = {
        field: getattr(block, field).resolved
        for field in ("num_experts", "top_k", "hidden_size", "intermediate_size", "activation", "normalize")
    }
    assert resolved == {
        "num_experts": "config.num_local_experts",
        "top_k": "config.num_experts_per_tok",
        "hidden_size": "config.hidden_size",
        "intermediate_size": "config.intermediate_size",
        "activation": "config.hidden_act",
        "normalize": "True",  # a softmax over the top-k logits: the renormalised top-k probabilities
    }
    assert not [refusal for refusal in blueprint.refusals if refusal.code in ("R001", "R008", "R011", "R029")]


def test_packed_experts_applied_as_linear_are_transposed(tmp_path: Path):
    text = packed_source(apply="F.linear(parts[i], self.table[i])").replace(
        "torch.empty(count, fan_in, fan_out)", "torch.empty(count, fan_out, fan_in)"
    )
    (block,) = analyse(tmp_path, text).moe
    assert block.packed is not None and block.packed.transposed is True
    assert block.intermediate_size.resolved == "config.intermediate_size"


@pytest.mark.parametrize(
    ("apply", "product", "why", "marker"),
    [
        (MATMUL, "self.act(halves[1]) * halves[0]", "up | gate order", "# <- forward"),
        ("parts[i].sum() * self.table[i]", GATE_UP, "does not apply one expert's slice", "# <- table"),
        (
            "F.linear(parts[i], self.table[i])",  # a [E, in, out] table applied as F.linear: shapes disagree
            GATE_UP,
            "is not the gate | up of",
            "# <- table",
        ),
    ],
)
def test_packed_experts_of_another_shape_are_refused_precisely(
    tmp_path: Path, apply: str, product: str, why: str, marker: str
):
    text = packed_source(apply=apply, product=product)
    blueprint = analyse(tmp_path, text)
    assert blueprint.moe == ()
    (refusal,) = [
        refusal
        for refusal in blueprint.refusals
        if refusal.code == "R001" and "experts packed as parameters" in refusal.message
    ]
    assert why in refusal.message
    assert refusal.location.line == line_of(text, marker)


def test_a_router_module_that_picks_along_another_dimension_is_refused(tmp_path: Path):
    text = packed_source().replace(
        "best, picked = scores.topk(self.k, dim=-1)", "best, picked = scores.topk(self.k, 0)"
    )
    blueprint = analyse(tmp_path, text)
    assert blueprint.moe == ()
    assert any("does not pick along the experts" in refusal.message for refusal in blueprint.refusals)


def test_granitemoe_packed_experts_come_from_its_source():
    (block,) = blueprint_of("granitemoe").moe
    assert block.packed is not None
    # F.linear(x, self.weight[i]) on [E, out, in]; act(chunk[0]) * chunk[1]; output_linear takes the product.
    assert (block.packed.gate_up, block.packed.down, block.packed.transposed) == (
        "input_linear.weight",
        "output_linear.weight",
        True,
    )
    assert (block.router, block.layer_attribute, block.logits_plumbed) == (
        "router.layer",
        "block_sparse_moe",
        True,
    )
    assert (block.intermediate_size.resolved, block.normalize.resolved) == (
        "config.intermediate_size",
        "True",
    )
