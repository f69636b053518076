"""Analysis of hand-written sources: roles from dataflow alone, aliases, refusals at exact lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from scaffold.analysis import analyze
from scaffold.blueprint import Blueprint
from scaffold.errors import ScaffoldError
from scaffold.source import locate

from .synthetic import marked_line, model_source


def analyse_text(tmp_path: Path, text: str) -> Blueprint:
    path = tmp_path / "modeling_synthetic.py"
    path.write_text(text)
    return analyze(locate("llama", path))


def test_roles_come_from_dataflow_when_names_say_nothing(tmp_path: Path):
    blueprint = analyse_text(tmp_path, model_source())
    roles = {site.path: site.role.value for site in blueprint.sites}
    assert roles == {
        "body.tok": "embedding",
        "body.blocks.*.mix.c": "column",
        "body.blocks.*.mix.a": "column",
        "body.blocks.*.mix.b": "column",
        "body.blocks.*.mix.d": "row",
        "body.blocks.*.ff.p": "column",
        "body.blocks.*.ff.r": "column",
        "body.blocks.*.ff.s": "row",
        "out": "lm_head",
    }
    assert all(site.plan_key is None and "tp plan" not in site.evidence for site in blueprint.sites)
    assert {site.constructor for site in blueprint.sites if site.kind.value == "linear"} == {
        "torch.nn.Linear"
    }
    # Nothing structural; only what the rules need and this toy lacks: a loss through transformers'
    # `loss_function` (R023) and an attention kernel picked from ALL_ATTENTION_FUNCTIONS (R027).
    assert {(refusal.code, refusal.subject) for refusal in blueprint.refusals} == {
        ("R023", "LlamaForCausalLM"),
        ("R027", "Mixer"),
    }


def test_attention_order_and_gate_come_from_the_dataflow(tmp_path: Path):
    blueprint = analyse_text(tmp_path, model_source())
    (attention,) = blueprint.attention
    # Constructed c, a, b, d but passed to the kernel as (a, b, c): the call order decides q, k, v.
    assert (attention.q, attention.k, attention.v, attention.o) == ("a", "b", "c", "d")
    assert attention.head_dim.resolved == "config.hidden_size // config.num_attention_heads"
    assert attention.num_kv_heads.source == "config.num_key_value_heads"
    # The activated factor is the gate, even though it is written second.
    (mlp,) = blueprint.mlps
    assert (mlp.gate, mlp.up, mlp.down) == ("r", "p", "s")
    assert mlp.activation is not None and mlp.activation.source == "F.silu"
    assert blueprint.backbone.base_model_prefix == "body"
    assert blueprint.backbone.layers == "body.blocks.*"


def test_tp_plan_and_dataflow_disagreeing_is_refused(tmp_path: Path):
    # Name the output projection like the plan's column "q_proj" and the query like its row "o_proj".
    text = model_source().replace("self.a", "self.o_proj").replace("self.d", "self.q_proj")
    text = (
        text.replace("self.mix", "self.self_attn")
        .replace("self.blocks", "self.layers")
        .replace("self.body", "self.model")
    )
    blueprint = analyse_text(tmp_path, text)
    conflicts = [refusal for refusal in blueprint.refusals if refusal.code == "R009"]
    assert {refusal.message.split(":")[0] for refusal in conflicts} == {
        "model.layers.*.self_attn.o_proj",
        "model.layers.*.self_attn.q_proj",
    }
    assert blueprint.site("model.layers.*.self_attn.b").role.value == "column"  # plan does not cover it


@pytest.mark.parametrize(
    ("code", "parts"),
    [
        (
            "R004",
            dict(
                mixer_init="self.qn = tnn.LayerNorm(config.num_attention_heads * self.size)",
                mixer_forward="first = self.qn(self.a(x)).view(shape).transpose(1, 2)  # <-\n"
                "second = self.b(x).view(shape).transpose(1, 2)\n"
                "third = self.c(x).view(shape).transpose(1, 2)\n"
                "out = kernel(first, second, third)",
            ),
        ),
        (
            "R003",
            dict(
                mixer_init="self.qkv = Dense(config.hidden_size, 3 * config.hidden_size)",
                mixer_forward="fused = self.qkv(x).view(x.shape[0], x.shape[1], self.heads, 3, self.size)  # <-\n"
                "out = fused.sum(-2)",
            ),
        ),
        (
            "R007",
            dict(
                mixer_init="self.qkv = Dense(config.hidden_size, 3 * config.hidden_size)",
                mixer_forward="first, second, third = self.qkv(x).chunk(3, dim=-1)  # <-\n"
                "out = kernel(first.view(shape), second.view(shape), third.view(shape))",
            ),
        ),
        (
            "R010",
            dict(
                mixer_init="self.low = Dense(config.hidden_size, 8)\n        self.high = Dense(8, config.hidden_size)",
                mixer_forward="first = self.high(self.low(x)).view(shape).transpose(1, 2)\n"
                "second = self.b(x).view(shape).transpose(1, 2)\n"
                "third = self.c(x).view(shape).transpose(1, 2)\n"
                "out = kernel(first, second, third)",
            ),
        ),
        (
            "R011",
            dict(mixer_init="self.sinks = tnn.Parameter(torch.zeros(config.num_attention_heads))  # <-"),
        ),
        (
            "R014",
            dict(
                mixer_forward="first = self.a(x).view(shape).transpose(1, 2)  # <-\n"
                "out = first + self.b(x).view(shape).transpose(1, 2) + self.c(x).view(shape).transpose(1, 2)"
            ),
        ),
        (
            "R015",
            dict(
                mixer_init="self.qn = Norm((2 * config.num_attention_heads, self.size))  # <-",
                mixer_forward="first = self.qn(self.a(x).view(shape)).transpose(1, 2)\n"
                "second = self.b(x).view(shape).transpose(1, 2)\n"
                "third = self.c(x).view(shape).transpose(1, 2)\n"
                "out = kernel(first, second, third)",
            ),
        ),
        ("R005", dict(block_init="self.conv = tnn.Conv1d(config.hidden_size, config.hidden_size, 4)  # <-")),
        (
            "R001",
            dict(
                block_init="self.experts = tnn.ModuleList([Feed(config) for _ in range(config.num_experts)])  # <-"
            ),
        ),
    ],
)
def test_refusal_codes_and_lines(tmp_path: Path, code: str, parts: dict[str, str]):
    text = model_source(**parts)
    blueprint = analyse_text(tmp_path, text)
    found = [refusal for refusal in blueprint.refusals if refusal.code == code]
    assert found, [str(refusal) for refusal in blueprint.refusals]
    lines = text.splitlines()
    if "# <-" in text:
        assert found[0].location.line == marked_line(text)
    else:  # R010: the chained projection's constructor
        assert "self.high = Dense" in lines[found[0].location.line - 1]
    assert found[0].location.file == str(tmp_path / "modeling_synthetic.py")


@pytest.mark.parametrize(
    ("norm", "applied", "scope", "code"),
    [
        # an RMS norm over the whole query output, eps given: NXS026 distributes it
        (
            "Norm(config.num_attention_heads * self.size, eps=1e-5)",
            "self.qn(self.a(x)).view(shape)",
            "full_width",
            None,
        ),
        # the class's default eps is read; a torch LayerNorm stays refused
        (
            "tnn.LayerNorm(config.num_attention_heads * self.size)",
            "self.qn(self.a(x)).view(shape)",
            "full_width",
            "R004",
        ),
        (
            "Norm(config.num_attention_heads * self.size)",
            "self.qn(self.a(x) + self.a(x)).view(shape)",
            "full_width",
            None,
        ),
        # one weight row per head of the query projection: sharded by head
        (
            "Norm((config.num_attention_heads, self.size))",
            "self.qn(self.a(x).view(shape))",
            "head_rows",
            None,
        ),
        # rows of another count: refused
        (
            "Norm((config.num_key_value_heads + 1, self.size))",
            "self.qn(self.a(x).view(shape))",
            "per_head",
            "R015",
        ),
    ],
)
def test_qk_norm_scopes_and_what_stays_refused(
    tmp_path: Path, norm: str, applied: str, scope: str, code: str | None
):
    text = model_source(
        mixer_init=f"self.qn = {norm}",
        mixer_forward=f"first = {applied}.transpose(1, 2)\n"
        "second = self.b(x).view(shape).transpose(1, 2)\n"
        "third = self.c(x).view(shape).transpose(1, 2)\n"
        "out = kernel(first, second, third)",
    )
    blueprint = analyse_text(tmp_path, text)
    (site,) = [site for site in blueprint.norms if site.attribute == "qn"]
    assert site.scope.value == scope
    norm_codes = {refusal.code for refusal in blueprint.refusals} & {"R004", "R015"}
    assert norm_codes == ({code} if code else set()), [str(refusal) for refusal in blueprint.refusals]


def test_unparsable_file_names_file_and_line(tmp_path: Path):
    path = tmp_path / "modeling_broken.py"
    path.write_text("import torch\n\n\nclass LlamaModel:\n    def forward(self, x:\n        return x\n")
    with pytest.raises(ScaffoldError) as caught:
        analyze(locate("llama", path))
    assert f"{path}:5:" in caught.value.message or f"{path}:6:" in caught.value.message
    assert "cannot parse" in caught.value.message


def test_missing_classes_are_reported(tmp_path: Path):
    path = tmp_path / "modeling_other.py"
    path.write_text("class Something:\n    pass\n")
    with pytest.raises(
        ScaffoldError, match=r"does not define LlamaModel, LlamaForCausalLM \(classes defined: Something\)"
    ):
        analyze(locate("llama", path))


def test_analysis_is_deterministic(tmp_path: Path):
    first = analyse_text(tmp_path, model_source()).to_json()
    second = analyse_text(tmp_path, model_source()).to_json()
    assert first == second


def test_rebinding_config_in_init_keeps_sizes_resolvable(tmp_path: Path):
    # transformers' Gemma3TextModel starts with `config = copy.deepcopy(config)`.
    text = "import copy\n" + model_source().replace(
        "        self.tok = tnn.Embedding",
        "        config = copy.deepcopy(config)\n        self.tok = tnn.Embedding",
    )
    blueprint = analyse_text(tmp_path, text)
    assert blueprint.site("body.tok").in_features.resolved == "config.vocab_size"
    assert blueprint.site("body.blocks.*.mix.a").out_features.resolved == (
        "config.num_attention_heads * (config.hidden_size // config.num_attention_heads)"
    )
