"""The rules that rewrite forwards (lm head, base model, attention) on hand-written snippets."""

from __future__ import annotations

from textwrap import dedent

import libcst as cst
from libcst.codemod import CodemodContext

from scaffold.blueprint import (
    AttentionGeometry,
    Backbone,
    ClassKind,
    CodeStyle,
    Features,
    NormScope,
    Refusal,
    Role,
)
from scaffold.emit import format_python
from scaffold.rules.attention_sequence_parallel import AttentionSequenceParallel
from scaffold.rules.attention_variants import AttentionVariants
from scaffold.rules.base_model_forward import BaseModelForward
from scaffold.rules.neuron_flash_attention import NeuronFlashAttention
from scaffold.rules.vocab_parallel_lm_head import VocabParallelLMHead

from .test_layer_rules import INIT_HELPER
from .toy import ALLOWED, FEATURES, HERE, RuleTest, blueprint, expr, klass, norm, site


class TestVocabParallelLMHead(RuleTest):
    TRANSFORM = VocabParallelLMHead
    BEFORE = """
from torch import nn


class ToyForCausalLM(ToyPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def forward(self, hidden_states, labels=None, logits_to_keep: Union[int, torch.Tensor] = 0, **kwargs):
        slice_indices = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, slice_indices, :]) * self.scale
        loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return loss, logits
"""

    def test_head_is_vocab_parallel_and_the_loss_reduces_over_the_group(self) -> None:
        after = f"""
from functools import partial
from neuronx_distributed.parallel_layers.layers import ColumnParallelLinear
from neuronx_distributed.parallel_layers.parallel_state import get_tensor_model_parallel_size
from neuronx_distributed.parallel_layers.utils import divide
import torch
from torch import nn

from ..loss_utils import ForCausalLMLoss

{INIT_HELPER}

class ToyForCausalLM(ToyPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.vocab_size = divide(config.vocab_size, get_tensor_model_parallel_size())
        init_method = partial(_init_normal, config.initializer_range)
        self.lm_head = ColumnParallelLinear(
            config.hidden_size,
            config.vocab_size,
            bias=False,
            gather_output=False,
            init_method=init_method,
            sequence_parallel_enabled=trn_config.sequence_parallel_enabled,
            sequence_dimension=0,
            dtype=config.dtype,
        )

    def forward(self, hidden_states, labels=None, **kwargs):
        logits = self.lm_head(hidden_states) * self.scale
        if self.trn_config.sequence_parallel_enabled:
            logits = logits.transpose(0, 1).contiguous()
        loss = ForCausalLMLoss(logits=logits, labels=labels, vocab_size=self.vocab_size, **kwargs)
        return loss, logits
"""
        bp = blueprint(
            classes=[klass("ToyForCausalLM", ClassKind.CAUSAL_LM)],
            sites=[site("ToyForCausalLM", "lm_head", Role.LM_HEAD, out_features="config.vocab_size")],
        )
        self.assertCodemod(self.BEFORE, after, blueprint=bp)

    def test_a_class_without_a_head_is_left_alone(self) -> None:
        self.assertUnchanged(self.BEFORE, blueprint=blueprint(classes=[klass("ToyForCausalLM")]))


ATTENTION = """
class ToyAttention(nn.Module):
    def __init__(self, config, trn_config):
        super().__init__()
        self.head_dim = config.head_dim
        self.num_key_value_groups = config.num_attention_heads // config.num_key_value_heads
        self.q_proj = nn.Linear(config.hidden_size, config.num_attention_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, config.num_key_value_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, config.num_key_value_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(config.num_attention_heads * self.head_dim, config.hidden_size, bias=False)

    def forward(self, hidden_states, attention_mask, **kwargs):
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        query_states = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        key_states = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        value_states = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        attention_interface: Callable = eager_attention_forward
        if self.config._attn_implementation != "eager":
            attention_interface = ALL_ATTENTION_FUNCTIONS[self.config._attn_implementation]
        attn_output, attn_weights = attention_interface(self, query_states, key_states, value_states, attention_mask, **kwargs)
        attn_output = attn_output.reshape(*input_shape, -1).contiguous()
        return self.o_proj(attn_output), attn_weights
"""
HEAD_HELPERS = """    def _split(self, tensor, heads):
        return tensor.view(tensor.size()[:-1] + (heads, self.head_dim)).transpose(1, 2)

    def _merge(self, tensor):
        tensor = tensor.transpose(1, 2).contiguous()
        return tensor.view(tensor.size()[:-2] + (self.num_attention_heads * self.head_dim,))

"""
GEOMETRY = AttentionGeometry(
    owner="ToyAttention",
    path="attn",
    q="q_proj",
    k="k_proj",
    v="v_proj",
    o="o_proj",
    num_heads=expr("config.num_attention_heads"),
    num_kv_heads=expr("config.num_key_value_heads"),
    head_dim=expr("config.head_dim"),
    scaling=None,
    sliding_window=None,
    softcap=None,
    q_norm=None,
    k_norm=None,
    core_call=HERE,
    eager_function="eager_attention_forward",
)


def _attention_blueprint(**overrides: object):
    sizes = {
        "q_proj": "config.num_attention_heads * self.head_dim",
        "k_proj": "config.num_key_value_heads * self.head_dim",
        "v_proj": "config.num_key_value_heads * self.head_dim",
    }
    sites = [
        site("ToyAttention", name, Role.COLUMN, out_features=size, path=f"attn.{name}")
        for name, size in sizes.items()
    ]
    return blueprint(
        classes=[klass("ToyAttention", ClassKind.ATTENTION)], sites=sites, attention=[GEOMETRY], **overrides
    )


class TestAttentionVariants(RuleTest):
    TRANSFORM = AttentionVariants

    def test_one_head_count_for_q_k_and_v_is_divided_once(self) -> None:
        # GPT-Neo / GPT-J keep one `self.num_heads` for q, k and v: the K/V count reads it before it is divided.
        import dataclasses

        source = ATTENTION.replace(
            "        self.head_dim = config.head_dim\n",
            "        self.head_dim = config.head_dim\n        self.num_heads = config.num_attention_heads\n",
        )
        geometry = dataclasses.replace(
            GEOMETRY, num_heads=expr("self.num_heads"), num_kv_heads=expr("self.num_heads")
        )
        bp = dataclasses.replace(_attention_blueprint(), attention=(geometry,))
        out = AttentionVariants(CodemodContext(), bp).transform_module(cst.parse_module(source)).code
        init = out.split("def forward")[0]
        assert init.rstrip().endswith(
            "        self.num_key_value_heads = divide(self.num_heads * self.kv_size_multiplier, tp_size)\n"
            "        self.num_heads = divide(self.num_heads, tp_size)\n"
            "        self.num_key_value_groups = self.num_heads // self.num_key_value_heads"
        )
        # one count for both: the fused variant needs no comparison of the count with itself
        assert "        elif trn_config.fuse_qkv:\n" in init
        assert "self.num_heads == self.num_heads" not in init

    def test_total_head_counts_the_forward_and_its_helpers_read_become_per_rank(self) -> None:
        # GPT-J's shape: a helper splits with the count the forward passes it (the total), another reads the
        # total itself; the constructor keeps the total (the layers and the GQA spec are built from it).
        import dataclasses

        source = ATTENTION.replace(
            "        self.head_dim = config.head_dim\n",
            "        self.head_dim = config.head_dim\n        self.num_attention_heads = config.num_attention_heads\n",
        ).replace(
            "    def forward(self, hidden_states, attention_mask, **kwargs):\n",
            HEAD_HELPERS + "    def forward(self, hidden_states, attention_mask, **kwargs):\n",
        )
        source = source.replace(
            "query_states = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)",
            "query_states = self._split(self.q_proj(hidden_states), self.num_attention_heads)",
        ).replace(
            "attn_output = attn_output.reshape(*input_shape, -1).contiguous()",
            "attn_output = self._merge(attn_output)",
        )
        geometry = dataclasses.replace(
            GEOMETRY,
            num_heads=expr("self.num_attention_heads"),
            total_head_counts=(("num_attention_heads", "num_heads"),),
        )
        bp = dataclasses.replace(_attention_blueprint(), attention=(geometry,))
        out = AttentionVariants(CodemodContext(), bp).transform_module(cst.parse_module(source)).code
        init = out[: out.index("    def _split")]
        assert "self.num_attention_heads = config.num_attention_heads" in init
        assert "self.num_heads = divide(self.num_attention_heads, tp_size)" in init
        helpers = out[out.index("    def _split") : out.index("    def forward")]
        assert helpers == HEAD_HELPERS.replace("self.num_attention_heads", "self.num_heads")
        forward = out[out.index("    def forward") :]
        assert "query_states = self._split(query_states, self.num_heads)" in forward
        assert "attn_output = self._merge(attn_output)" in forward and "num_attention_heads" not in forward

    def test_projections_become_the_variant_chosen_at_construction(self) -> None:
        import libcst as cst
        from libcst.codemod import CodemodContext

        out = (
            AttentionVariants(CodemodContext(), _attention_blueprint())
            .transform_module(cst.parse_module(ATTENTION))
            .code
        )
        init, forward = out.split("def forward")
        # constructor: the three variants, per-rank counts replacing the global group count
        assert (
            "self.qkv_linear = config.num_key_value_heads < tp_size or config.num_key_value_heads % tp_size != 0"
            in init
        )
        assert "self.qkv_proj = GQAQKVColumnParallelLinear(" in init and "stride=3" in init
        assert (
            "elif trn_config.fuse_qkv and config.num_attention_heads == config.num_key_value_heads:" in init
        )
        assert "NXD-09" not in init  # no bias: no deviation note
        assert init.index("init_method = partial(") < init.index(
            "if self.qkv_linear:\n            self.qkv_proj"
        )
        assert "else:\n            self.q_proj = nn.Linear(" in init
        assert init.rstrip().endswith(
            "self.num_key_value_groups = self.num_heads // self.num_key_value_heads"
        )
        assert init.count("num_key_value_groups =") == 1
        # forward: q, k, v computed up front by variant, the source's reshapes read them
        assert (
            "query_states, key_states, value_states = self.qkv_proj(hidden_states).split(self.split_size, dim=-1)"
            in forward
        )
        assert "query_states = query_states.view(hidden_shape).transpose(1, 2)" in forward
        assert "class ToyAttention(nn.Module, CustomModule):" in out

    def test_the_fused_split_size_takes_a_name_the_class_does_not_use(self) -> None:
        import libcst as cst
        from libcst.codemod import CodemodContext

        # GPT-2's shape: the class keeps its own `self.split_size` (the full width), read elsewhere.
        source = ATTENTION.replace(
            "        self.head_dim = config.head_dim\n",
            "        self.head_dim = config.head_dim\n        self.split_size = config.hidden_size\n",
        ).replace(
            "        input_shape = hidden_states.shape[:-1]\n",
            "        input_shape = hidden_states.shape[:-1]\n        width = self.split_size\n",
        )
        out = (
            AttentionVariants(CodemodContext(), _attention_blueprint())
            .transform_module(cst.parse_module(source))
            .code
        )
        init, forward = out.split("def forward")
        assert "        self.split_size = config.hidden_size\n" in init
        assert init.count("self.split_size =") == 1
        assert "self.split_size_2 = divide(config.num_attention_heads * self.head_dim, tp_size)" in init
        assert (
            "query_states, key_states, value_states = self.qkv_proj(hidden_states).split(self.split_size_2, dim=-1)"
            in forward
        )
        assert "width = self.split_size\n" in forward

    def test_per_head_norms_get_their_gradient_sum_where_they_are_built(self) -> None:
        import libcst as cst
        from libcst.codemod import CodemodContext

        # phi's shape: LayerNorms over head_dim built only under a config flag, next to a norm built always.
        source = ATTENTION.replace(
            "        self.o_proj = nn.Linear(config.num_attention_heads * self.head_dim, config.hidden_size, bias=False)\n",
            "        self.o_proj = nn.Linear(config.num_attention_heads * self.head_dim, config.hidden_size, bias=False)\n"
            "        self.v_norm = ToyRMSNorm(self.head_dim)\n"
            "        if config.qk_layernorm:\n"
            "            self.q_layernorm = nn.LayerNorm(self.head_dim)\n"
            "            self.k_layernorm = nn.LayerNorm(self.head_dim)\n"
            "        self.dropout = nn.Dropout(config.attention_dropout)\n",
        )
        norms = [
            norm("ToyAttention", name, kind, NormScope.PER_HEAD)
            for name, kind in (("v_norm", "ToyRMSNorm"), ("q_layernorm", "torch.nn.LayerNorm"))
        ]
        norms += [norm("ToyAttention", "k_layernorm", "torch.nn.LayerNorm", NormScope.PER_HEAD)]
        norms += [norm("ToyAttention", "input_norm", "ToyRMSNorm")]  # another class's hidden norm
        out = (
            AttentionVariants(CodemodContext(), _attention_blueprint(norms=norms))
            .transform_module(cst.parse_module(source))
            .code
        )
        init = out.split("def forward")[0]
        hook = "parameter.register_hook(reduce_from_tensor_model_parallel_region)"
        assert (
            "        if config.qk_layernorm:\n"
            "            self.q_layernorm = nn.LayerNorm(self.head_dim)\n"
            "            self.k_layernorm = nn.LayerNorm(self.head_dim)\n"
            "            # The per-head norms are replicated but each rank normalises only its own heads: their "
            "gradients\n"
            "            # are summed over the tensor-parallel ranks, so every replica gets the full one.\n"
            "            for parameter in (*self.q_layernorm.parameters(), *self.k_layernorm.parameters()):\n"
            f"                {hook}\n"
            "        self.dropout = nn.Dropout(config.attention_dropout)\n"
        ) in init
        # the norm built unconditionally gets its own sum at the end of the constructor, once
        assert init.rstrip().endswith(f"for parameter in (*self.v_norm.parameters(),):\n            {hook}")
        assert init.count(hook) == 2
        assert (
            "from neuronx_distributed.parallel_layers.mappings import reduce_from_tensor_model_parallel_region"
            in out
        )

    def test_in_place_ops_on_the_projections_become_assignments(self) -> None:
        import libcst as cst
        from libcst.codemod import CodemodContext

        # olmo's clip_qkv: in-place clamps of q, k, v, which autograd refuses on the fused branch's split views.
        source = ATTENTION.replace(
            "        query_states = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)\n",
            "        query_states = self.q_proj(hidden_states)\n"
            "        if self.config.clip_qkv is not None:\n"
            "            query_states.clamp_(min=-self.config.clip_qkv, max=self.config.clip_qkv)\n"
            "            query_states *= self.scale + 1\n"
            "            hidden_states.mul_(2)\n"
            "        query_states = query_states.view(hidden_shape).transpose(1, 2)\n",
        )
        out = (
            AttentionVariants(CodemodContext(), _attention_blueprint())
            .transform_module(cst.parse_module(source))
            .code
        )
        assert (
            "        if self.config.clip_qkv is not None:\n"
            "            query_states = query_states.clamp(min=-self.config.clip_qkv, max=self.config.clip_qkv)\n"
            "            query_states = query_states * (self.scale + 1)\n"
            "            hidden_states.mul_(2)\n"  # not a projection's output: left as written
        ) in out

    def test_no_per_head_norm_no_gradient_sum(self) -> None:
        import libcst as cst
        from libcst.codemod import CodemodContext

        out = (
            AttentionVariants(CodemodContext(), _attention_blueprint(norms=[norm("ToyAttention", "x", "N")]))
            .transform_module(cst.parse_module(ATTENTION))
            .code
        )
        assert "register_hook" not in out

    def test_refused_attention_is_marked_not_converted(self) -> None:
        refusal = Refusal(
            "R025", "ToyAttention: q/k/v are built under a condition", HERE, "ToyAttention", ("NXS021",)
        )
        after = ATTENTION.replace(
            "class ToyAttention",
            "# TODO(R025): ToyAttention: q/k/v are built under a condition\nclass ToyAttention",
        )
        self.assertCodemod(
            ATTENTION, after, blueprint=_attention_blueprint(refusals=[refusal]), options=ALLOWED
        )


class TestAttentionSequenceParallel(RuleTest):
    TRANSFORM = AttentionSequenceParallel
    BEFORE = """
class ToyAttention(nn.Module):
    def forward(self, hidden_states, attention_mask, **kwargs):
        input_shape = hidden_states.shape[:-1]
        q = self.q_proj(hidden_states)
        k = self.k_proj(hidden_states)
        v = self.v_proj(hidden_states)
        out = kernel(q.view(*input_shape, -1, 4), k, v)
        return self.o_proj(out.reshape(*input_shape, -1))
"""

    def test_projections_go_batch_first_and_the_output_back_to_sequence_first(self) -> None:
        after = """
from neuronx_distributed.parallel_layers.parallel_state import get_tensor_model_parallel_size


class ToyAttention(nn.Module):
    def forward(self, hidden_states, attention_mask, **kwargs):
        if self.trn_config.sequence_parallel_enabled:
            # The input is (S/T, B, D): sequence-first and sharded over the tensor-parallel ranks.
            input_shape = (hidden_states.shape[1], hidden_states.shape[0] * get_tensor_model_parallel_size())
        else:
            input_shape = hidden_states.shape[:-1]
        q = self.q_proj(hidden_states)
        k = self.k_proj(hidden_states)
        v = self.v_proj(hidden_states)
        if self.trn_config.sequence_parallel_enabled:
            # The column layers gathered the sequence: (S, B, h*d) -> batch-first (B, S, h*d).
            q, k, v = (
                q.transpose(0, 1),
                k.transpose(0, 1),
                v.transpose(0, 1),
            )
        out = kernel(q.view(*input_shape, -1, 4), k, v)
        attn_output = out.reshape(*input_shape, -1)
        if self.trn_config.sequence_parallel_enabled:
            # The output projection reduce-scatters along the sequence: back to sequence-first (S, B, h*d).
            attn_output = attn_output.transpose(0, 1)
        return self.o_proj(attn_output)
"""
        self.assertCodemod(self.BEFORE, after, blueprint=_attention_blueprint())

    def test_another_read_of_the_input_shape_is_marked_in_place(self) -> None:
        before = self.BEFORE.replace(
            "        q = self.q_proj", "        length = hidden_states.shape[1]\n        q = self.q_proj"
        )
        refusal = Refusal("R026", "reads the shape", HERE, "ToyAttention", ("NXS022",))
        import libcst as cst
        from libcst.codemod import CodemodContext

        rule = AttentionSequenceParallel(CodemodContext(), _attention_blueprint(refusals=[refusal]), ALLOWED)
        out = rule.transform_module(cst.parse_module(before)).code
        assert "        # TODO(R026): reads the shape\n        length = hidden_states.shape[1]\n" in out
        assert "attn_output = attn_output.transpose(0, 1)" in out  # the rest is converted

    def test_a_class_that_is_no_attention_is_left_alone(self) -> None:
        self.assertUnchanged(
            self.BEFORE.replace("ToyAttention", "ToyMixer"), blueprint=_attention_blueprint()
        )

    def test_the_first_two_sizes_of_the_input_are_its_leading_shape(self) -> None:
        # MPT: `batch_size, seq_length = hidden_states.shape[:2]` on the (B, S, D) input (R026 before).
        before = """
class ToyAttention(nn.Module):
    def forward(self, hidden_states, attention_mask, **kwargs):
        batch_size, seq_length = hidden_states.shape[:2]
        q = self.q_proj(hidden_states)
        k = self.k_proj(hidden_states)
        v = self.v_proj(hidden_states)
        out = kernel(q, k, v)
        return self.o_proj(out.reshape(batch_size, seq_length, -1))
"""
        after = """
from neuronx_distributed.parallel_layers.parallel_state import get_tensor_model_parallel_size


class ToyAttention(nn.Module):
    def forward(self, hidden_states, attention_mask, **kwargs):
        if self.trn_config.sequence_parallel_enabled:
            # The input is (S/T, B, D): sequence-first and sharded over the tensor-parallel ranks.
            input_shape = (hidden_states.shape[1], hidden_states.shape[0] * get_tensor_model_parallel_size())
        else:
            input_shape = hidden_states.shape[:2]
        batch_size, seq_length = input_shape
        q = self.q_proj(hidden_states)
        k = self.k_proj(hidden_states)
        v = self.v_proj(hidden_states)
        if self.trn_config.sequence_parallel_enabled:
            # The column layers gathered the sequence: (S, B, h*d) -> batch-first (B, S, h*d).
            q, k, v = (
                q.transpose(0, 1),
                k.transpose(0, 1),
                v.transpose(0, 1),
            )
        out = kernel(q, k, v)
        attn_output = out.reshape(batch_size, seq_length, -1)
        if self.trn_config.sequence_parallel_enabled:
            # The output projection reduce-scatters along the sequence: back to sequence-first (S, B, h*d).
            attn_output = attn_output.transpose(0, 1)
        return self.o_proj(attn_output)
"""
        self.assertCodemod(before, after, blueprint=_attention_blueprint())

    def test_other_slices_of_the_input_shape_are_no_leading_shape(self) -> None:
        from scaffold.rules.attention_sequence_parallel import other_shape_reads

        for read in ("hidden_states.shape[:1]", "hidden_states.shape[1:]", "hidden_states.size()[:3]"):
            statement = cst.parse_statement(f"x = {read}")
            assert other_shape_reads([statement], "hidden_states") == [statement], read
        for read in ("hidden_states.shape[:2]", "hidden_states.size()[:2]", "hidden_states.shape[:-1]"):
            assert other_shape_reads([cst.parse_statement(f"x = {read}")], "hidden_states") == [], read


EAGER = """
def eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    attn_weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    return torch.matmul(attn_weights.softmax(-1), value), attn_weights
"""


class TestNeuronFlashAttention(RuleTest):
    TRANSFORM = NeuronFlashAttention

    def test_eager_recomputes_the_causal_mask_and_flash_is_the_alternative(self) -> None:
        import libcst as cst
        from libcst.codemod import CodemodContext

        style = CodeStyle(optional=True, nn_alias=False)
        bp = _attention_blueprint(style=style)
        out = (
            NeuronFlashAttention(CodemodContext(), bp)
            .transform_module(cst.parse_module(EAGER + ATTENTION))
            .code
        )
        assert "attn_weights, scaling, dropout=0.0, causal: bool = False, **kwargs" in out.replace(
            "\n", " "
        ).replace("  ", " ") or ("causal: bool = False" in out.split("def neuron_flash_attention_forward")[0])
        assert "elif causal:\n        # No mask was built" in out
        assert "future = torch.ones(attn_weights.shape[-2:]" in out
        assert (
            '        if self.config._attn_implementation == "flash_attention_2":\n            attention_interface = neuron_flash_attention_forward\n'
            in out
        )
        assert "attention_mask, causal=attention_mask is None, **kwargs)" in out
        flash = out.split("def neuron_flash_attention_forward(", 1)[1].split("\nclass ", 1)[0]
        # the file's style: Optional and torch.nn, no window or softcap parameters it does not need
        assert "attention_mask: Optional[torch.Tensor]," in flash and "module: torch.nn.Module," in flash
        assert "torch.nn.functional.dropout(" in flash and "| None" not in flash
        assert "sliding_window" not in flash and "softcap" not in flash
        assert "key = key.repeat_interleave(module.num_key_value_groups, dim=1)" in flash  # no repeat_kv here
        assert "if not causal and attention_mask is None:\n        raise NotImplementedError" in flash

    def test_a_window_is_applied_in_eager_and_refused_by_flash(self) -> None:
        import libcst as cst
        from libcst.codemod import CodemodContext

        features = Features(**{**FEATURES.__dict__, "sliding_window": expr("config.sliding_window")})
        bp = _attention_blueprint(features=features, functions=["repeat_kv"])
        source = "def repeat_kv(x, n):\n    return x\n" + EAGER + ATTENTION
        out = NeuronFlashAttention(CodemodContext(), bp).transform_module(cst.parse_module(source)).code
        eager, flash = out.split("def neuron_flash_attention_forward(", 1)
        assert "sliding_window: int | None = None" in eager and "expired = torch.ones(" in eager
        assert "if sliding_window is not None and sliding_window < query.shape[-2]:" in flash
        assert "key = repeat_kv(key, module.num_key_value_groups)" in flash

    def test_refused_attention_is_marked_and_keeps_its_dispatch(self) -> None:
        refusal = Refusal("R027", "no table", HERE, "ToyAttention", ("NXS023",))
        after = (EAGER + ATTENTION).replace(
            "class ToyAttention", "# TODO(R027): no table\nclass ToyAttention"
        )
        self.assertCodemod(
            EAGER + ATTENTION, after, blueprint=_attention_blueprint(refusals=[refusal]), options=ALLOWED
        )


BASE = """
from torch import nn
from transformers.masking_utils import create_causal_mask


class ToyLayer(GradientCheckpointingLayer):
    pass


class ToyModel(ToyPreTrainedModel):
    def __init__(self, config, trn_config):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList([ToyLayer(config) for _ in range(config.num_hidden_layers)])
        self.gradient_checkpointing = False
        self.post_init()

    def forward(self, input_ids, attention_mask=None, cache_position=None):
        inputs_embeds = self.embed_tokens(input_ids)
        cache_position = torch.arange(0, inputs_embeds.shape[1], device=inputs_embeds.device)
        causal_mask = create_causal_mask(config=self.config, input_embeds=inputs_embeds, past_key_values=None)
        hidden_states = inputs_embeds
        for decoder_layer in self.layers:
            hidden_states = decoder_layer(hidden_states, attention_mask=causal_mask)
        return hidden_states
"""


BASE_AFTER = """
from torch import nn

from ..masking_utils import create_causal_mask
from ..training_utils import checkpoint_with_kwargs


class ToyLayer(nn.Module):
    pass


class ToyModel(ToyPreTrainedModel):
    def __init__(self, config, trn_config):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList([ToyLayer(config) for _ in range(config.num_hidden_layers)])
        self.gradient_checkpointing = trn_config.gradient_checkpointing
        self.post_init()

    def forward(self, input_ids, attention_mask=None, cache_position=None):
        inputs_embeds = self.embed_tokens(input_ids)
        # (B, S, D), or (S/T, B, D) under sequence parallelism
        sequence_length = (
            inputs_embeds.size(0) * self.trn_config.tensor_parallel_size
            if self.trn_config.sequence_parallel_enabled
            else inputs_embeds.size(1)
        )
        cache_position = torch.arange(0, sequence_length, device=inputs_embeds.device)
        if self.trn_config.recompute_causal_mask:
            causal_mask = None
        else:
            causal_mask = create_causal_mask(
                config=self.config,
                trn_config=self.trn_config,
                input_embeds=inputs_embeds,
            )
        hidden_states = inputs_embeds
        for decoder_layer in self.layers:
            if self.gradient_checkpointing and self.training:
                hidden_states = checkpoint_with_kwargs(decoder_layer, hidden_states, attention_mask=causal_mask)
            else:
                hidden_states = decoder_layer(hidden_states, attention_mask=causal_mask)
        return hidden_states
"""


class TestBaseModelForward(RuleTest):
    TRANSFORM = BaseModelForward
    BACKBONE = Backbone("model", "model.embed_tokens", "model.layers.*", "ToyLayer", None, None, None)

    def test_sequence_parallel_positions_host_mask_and_checkpointing(self) -> None:
        after = BASE_AFTER
        bp = blueprint(
            classes=[klass("ToyModel", ClassKind.BASE_MODEL), klass("ToyLayer", ClassKind.DECODER_LAYER)],
            backbone=self.BACKBONE,
            mask_builders=["create_causal_mask"],
        )
        self.assertCodemod(BASE, after, blueprint=bp)

    def test_learned_positions_move_into_the_stream_layout(self) -> None:
        before = """
from torch import nn


class ToyModel(ToyPreTrainedModel):
    def __init__(self, config, trn_config):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.wpe = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.post_init()

    def forward(self, input_ids, position_ids):
        inputs_embeds = self.embed_tokens(input_ids)
        position_embeds = self.wpe(position_ids)
        hidden_states = inputs_embeds + position_embeds
        # a lookup inside a larger expression is bound to a name of its own first
        return hidden_states + self.wpe(position_ids).to(hidden_states.dtype)
"""
        after = """
from neuronx_distributed.parallel_layers.mappings import scatter_to_sequence_parallel_region
from torch import nn


class ToyModel(ToyPreTrainedModel):
    def __init__(self, config, trn_config):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.wpe = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.gradient_checkpointing = trn_config.gradient_checkpointing
        self.post_init()

    def forward(self, input_ids, position_ids):
        inputs_embeds = self.embed_tokens(input_ids)
        position_embeds = self.wpe(position_ids)
        if self.trn_config.sequence_parallel_enabled:  # (B, S, D) -> the stream's (S/T, B, D)
            position_embeds = scatter_to_sequence_parallel_region(position_embeds.transpose(0, 1).contiguous())
        hidden_states = inputs_embeds + position_embeds
        # a lookup inside a larger expression is bound to a name of its own first
        position_embeds_2 = self.wpe(position_ids)
        if self.trn_config.sequence_parallel_enabled:  # (B, S, D) -> the stream's (S/T, B, D)
            position_embeds_2 = scatter_to_sequence_parallel_region(position_embeds_2.transpose(0, 1).contiguous())
        return hidden_states + position_embeds_2.to(hidden_states.dtype)
"""
        backbone = Backbone(
            "model", "model.embed_tokens", None, None, None, None, None, positions=("model.wpe",)
        )
        bp = blueprint(classes=[klass("ToyModel", ClassKind.BASE_MODEL)], backbone=backbone)
        self.assertCodemod(before, after, blueprint=bp)

    def test_the_decoder_a_base_model_wraps_is_rewritten_not_the_wrapper(self) -> None:
        wrapper = """

class ToyWrapper(ToyPreTrainedModel):
    def __init__(self, config, trn_config):
        super().__init__(config)
        self.decoder = ToyModel(config, trn_config)

    def forward(self, input_ids):
        return self.decoder(input_ids)
"""
        backbone = Backbone(
            "model",
            "model.decoder.embed_tokens",
            "model.decoder.layers.*",
            "ToyLayer",
            None,
            None,
            None,
            stack_class="ToyModel",
        )
        bp = blueprint(
            classes=[klass("ToyWrapper", ClassKind.BASE_MODEL), klass("ToyLayer", ClassKind.DECODER_LAYER)],
            backbone=backbone,
            mask_builders=["create_causal_mask"],
            base_model_class="ToyWrapper",
        )
        # the decoder reads as the flat base model's hand-written `after`; the wrapper stays as written
        self.assertCodemod(BASE + wrapper, BASE_AFTER + wrapper, blueprint=bp)

    def test_a_file_binding_nn_as_torch_nn_gets_no_second_binding(self) -> None:
        bp = blueprint(
            classes=[klass("ToyModel", ClassKind.BASE_MODEL), klass("ToyLayer", ClassKind.DECODER_LAYER)],
            backbone=self.BACKBONE,
            mask_builders=["create_causal_mask"],
        )
        source = BASE.replace("from torch import nn", "import torch.nn as nn")
        out = BaseModelForward(CodemodContext(), bp).transform_module(cst.parse_module(source)).code
        assert "class ToyLayer(nn.Module):" in out and "from torch import nn" not in out

    def test_a_conversion_of_the_mask_moves_into_the_branch_that_builds_it(self) -> None:
        # MPT: `causal_mask = causal_mask.bool()` right after the builder; no mask to convert when the
        # attention recomputes it.
        bp = blueprint(
            classes=[klass("ToyModel", ClassKind.BASE_MODEL), klass("ToyLayer", ClassKind.DECODER_LAYER)],
            backbone=self.BACKBONE,
            mask_builders=["create_causal_mask"],
        )
        built = "        causal_mask = create_causal_mask(config=self.config, input_embeds=inputs_embeds, past_key_values=None)\n"
        assert built in BASE
        before = BASE.replace(built, built + "        causal_mask = causal_mask.bool()\n")
        built_after = """                input_embeds=inputs_embeds,
            )
"""
        assert built_after in BASE_AFTER
        after = BASE_AFTER.replace(
            built_after, built_after + "            causal_mask = causal_mask.bool()\n"
        )
        self.assertCodemod(before, after, blueprint=bp)
        # a statement reading the mask otherwise stays where it is (and runs on None: as written)
        other = BASE.replace(built, built + "        other = causal_mask.bool()\n")
        out = BaseModelForward(CodemodContext(), bp).transform_module(cst.parse_module(other)).code
        assert "\n        other = causal_mask.bool()\n" in out  # at the forward's level, not in the branch

    def test_refused_base_model_keeps_transformers_masks(self) -> None:
        refusal = Refusal("R022", "no loop", HERE, "ToyModel", ("NXS012",))
        bp = blueprint(backbone=self.BACKBONE, mask_builders=["create_causal_mask"], refusals=[refusal])
        after = BASE.replace("class ToyModel(", "# TODO(R022): no loop\nclass ToyModel(").replace(
            "class ToyLayer(GradientCheckpointingLayer)", "class ToyLayer(nn.Module)"
        )
        self.assertCodemod(BASE, after, blueprint=bp, options=ALLOWED)

    def test_a_copy_of_the_mask_arguments_carries_the_host_arguments(self) -> None:
        before = """
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask


class ToyModel(ToyPreTrainedModel):
    def __init__(self, config, trn_config):
        super().__init__(config)
        self.post_init()

    def forward(self, inputs_embeds, attention_mask=None):
        mask_kwargs = {"config": self.config, "input_embeds": inputs_embeds, "past_key_values": None}
        sliding_mask_kwargs = mask_kwargs.copy()
        masks = {
            "full": create_causal_mask(**mask_kwargs),
            "sliding": create_sliding_window_causal_mask(**sliding_mask_kwargs),
        }
        return masks
"""
        after = """
from ..masking_utils import create_causal_mask


class ToyModel(ToyPreTrainedModel):
    def __init__(self, config, trn_config):
        super().__init__(config)
        self.gradient_checkpointing = trn_config.gradient_checkpointing
        self.post_init()

    def forward(self, inputs_embeds, attention_mask=None):
        mask_kwargs = {
            "config": self.config,
            "trn_config": self.trn_config,
            "input_embeds": inputs_embeds,
        }
        sliding_mask_kwargs = mask_kwargs.copy()
        masks = {
            "full": None if self.trn_config.recompute_causal_mask else create_causal_mask(**mask_kwargs),
            "sliding": None
            if self.trn_config.recompute_causal_mask
            else _create_sliding_window_causal_mask(**sliding_mask_kwargs),
        }
        return masks
"""
        bp = blueprint(
            classes=[klass("ToyModel", ClassKind.BASE_MODEL)],
            mask_builders=["create_causal_mask", "create_sliding_window_causal_mask"],
        )
        context = CodemodContext()
        out = BaseModelForward(context, bp).transform_module(cst.parse_module(dedent(before).lstrip())).code
        model = out[out.index("class ToyModel") :]
        self.assertEqual(format_python(after[after.index("class ToyModel") :]), format_python(model))
        assert "def _create_sliding_window_causal_mask(" in out  # the local helper the copy is spread into

    def test_an_enumerated_layer_loop_is_checkpointed(self) -> None:
        before = """
class ToyModel(ToyPreTrainedModel):
    def __init__(self, config, trn_config):
        super().__init__(config)
        self.post_init()

    def forward(self, hidden_states, attention_mask=None):
        for idx, decoder_layer in enumerate(self.layers):
            if self.training and torch.rand([]) < self.layerdrop:
                continue
            layer_outputs = decoder_layer(hidden_states, attention_mask, layer_index=idx)
            hidden_states = layer_outputs[0]
        return hidden_states
"""
        after = """
from ..training_utils import checkpoint_with_kwargs


class ToyModel(ToyPreTrainedModel):
    def __init__(self, config, trn_config):
        super().__init__(config)
        self.gradient_checkpointing = trn_config.gradient_checkpointing
        self.post_init()

    def forward(self, hidden_states, attention_mask=None):
        for idx, decoder_layer in enumerate(self.layers):
            if self.training and torch.rand([]) < self.layerdrop:
                continue
            if self.gradient_checkpointing and self.training:
                layer_outputs = checkpoint_with_kwargs(
                    decoder_layer, hidden_states, attention_mask, layer_index=idx
                )
            else:
                layer_outputs = decoder_layer(hidden_states, attention_mask, layer_index=idx)
            hidden_states = layer_outputs[0]
        return hidden_states
"""
        bp = blueprint(classes=[klass("ToyModel", ClassKind.BASE_MODEL)], backbone=self.BACKBONE)
        self.assertCodemod(before, after, blueprint=bp)

    def test_a_view_of_the_stream_to_batch_first_runs_without_sequence_parallelism_only(self) -> None:
        # GPT-Neo, GPT-J and CodeGen end their base model with `hidden_states.view(output_shape)`, output_shape
        # `(-1, seq_length, D)`: the identity on (B, S, D), a scramble of the (S/T, B, D) stream under SP.
        before = """
class ToyModel(ToyPreTrainedModel):
    def __init__(self, config, trn_config):
        super().__init__(config)
        self.post_init()

    def forward(self, input_ids):
        inputs_embeds = self.embed_tokens(input_ids)
        seq_length = inputs_embeds.shape[1]
        hidden_states = inputs_embeds
        output_shape = (-1, seq_length, hidden_states.size(-1))
        flat = hidden_states.view(-1, hidden_states.size(-1))
        hidden_states = hidden_states.reshape(-1, seq_length, hidden_states.shape[-1])
        hidden_states = hidden_states.view(output_shape)
        return hidden_states, flat
"""
        after = """
class ToyModel(ToyPreTrainedModel):
    def __init__(self, config, trn_config):
        super().__init__(config)
        self.gradient_checkpointing = trn_config.gradient_checkpointing
        self.post_init()

    def forward(self, input_ids):
        inputs_embeds = self.embed_tokens(input_ids)
        # (B, S, D), or (S/T, B, D) under sequence parallelism
        sequence_length = (
            inputs_embeds.size(0) * self.trn_config.tensor_parallel_size
            if self.trn_config.sequence_parallel_enabled
            else inputs_embeds.size(1)
        )
        seq_length = sequence_length
        hidden_states = inputs_embeds
        output_shape = (-1, seq_length, hidden_states.size(-1))
        flat = hidden_states.view(-1, hidden_states.size(-1))
        if not self.trn_config.sequence_parallel_enabled:  # a (B, S, D) view; SP has (S/T, B, D)
            hidden_states = hidden_states.reshape(-1, seq_length, hidden_states.shape[-1])
        if not self.trn_config.sequence_parallel_enabled:  # a (B, S, D) view; SP has (S/T, B, D)
            hidden_states = hidden_states.view(output_shape)
        return hidden_states, flat
"""
        bp = blueprint(classes=[klass("ToyModel", ClassKind.BASE_MODEL)], backbone=self.BACKBONE)
        self.assertCodemod(before, after, blueprint=bp)

    def test_a_view_to_the_input_shape_joined_with_the_features_runs_without_sequence_parallelism_only(
        self,
    ) -> None:
        # GPT-2: output_shape = (-1,) + input_shape[1:] + (D,), input_shape the ids' (B, S) or the embeddings'
        # leading shape: on a (B, S) input that is (-1, S, D), the identity on (B, S, D). A slice of another
        # shape (`other[1:]`, not only an input's leading shape) is kept.
        before = """
class ToyModel(ToyPreTrainedModel):
    def __init__(self, config, trn_config):
        super().__init__(config)
        self.post_init()

    def forward(self, input_ids=None, inputs_embeds=None, other=None):
        if input_ids is not None:
            input_shape = input_ids.size()
        else:
            input_shape = inputs_embeds.size()[:-1]
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        seq_length = inputs_embeds.shape[1]
        hidden_states = inputs_embeds
        output_shape = (-1,) + input_shape[1:] + (hidden_states.size(-1),)
        other_shape = (-1,) + other[1:] + (hidden_states.size(-1),)
        hidden_states = hidden_states.view(other_shape)
        hidden_states = hidden_states.view(output_shape)
        return hidden_states
"""
        after = """
class ToyModel(ToyPreTrainedModel):
    def __init__(self, config, trn_config):
        super().__init__(config)
        self.gradient_checkpointing = trn_config.gradient_checkpointing
        self.post_init()

    def forward(self, input_ids=None, inputs_embeds=None, other=None):
        if input_ids is not None:
            input_shape = input_ids.size()
        else:
            input_shape = inputs_embeds.size()[:-1]
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        # (B, S, D), or (S/T, B, D) under sequence parallelism
        sequence_length = (
            inputs_embeds.size(0) * self.trn_config.tensor_parallel_size
            if self.trn_config.sequence_parallel_enabled
            else inputs_embeds.size(1)
        )
        seq_length = sequence_length
        hidden_states = inputs_embeds
        output_shape = (-1,) + input_shape[1:] + (hidden_states.size(-1),)
        other_shape = (-1,) + other[1:] + (hidden_states.size(-1),)
        hidden_states = hidden_states.view(other_shape)
        if not self.trn_config.sequence_parallel_enabled:  # a (B, S, D) view; SP has (S/T, B, D)
            hidden_states = hidden_states.view(output_shape)
        return hidden_states
"""
        bp = blueprint(classes=[klass("ToyModel", ClassKind.BASE_MODEL)], backbone=self.BACKBONE)
        self.assertCodemod(before, after, blueprint=bp)

    def test_a_view_to_the_whole_input_shape_joined_with_the_features_runs_without_sequence_parallelism_only(
        self,
    ) -> None:
        # GPTBigCode: output_shape = input_shape + (D,), input_shape the ids' (B, S) or the embeddings' leading
        # shape: (B, S, D), the identity on the stream's (B, S, D). The same join of a shape that is not an
        # input's leading one (`other`) is kept.
        before = """
class ToyModel(ToyPreTrainedModel):
    def __init__(self, config, trn_config):
        super().__init__(config)
        self.post_init()

    def forward(self, input_ids=None, inputs_embeds=None, other=None):
        if input_ids is not None:
            input_shape = input_ids.size()
        else:
            input_shape = inputs_embeds.size()[:-1]
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        seq_length = inputs_embeds.shape[1]
        hidden_states = inputs_embeds
        output_shape = input_shape + (hidden_states.size(-1),)
        other_shape = other + (hidden_states.size(-1),)
        hidden_states = hidden_states.view(other_shape)
        hidden_states = hidden_states.view(output_shape)
        return hidden_states
"""
        after = """
class ToyModel(ToyPreTrainedModel):
    def __init__(self, config, trn_config):
        super().__init__(config)
        self.gradient_checkpointing = trn_config.gradient_checkpointing
        self.post_init()

    def forward(self, input_ids=None, inputs_embeds=None, other=None):
        if input_ids is not None:
            input_shape = input_ids.size()
        else:
            input_shape = inputs_embeds.size()[:-1]
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        # (B, S, D), or (S/T, B, D) under sequence parallelism
        sequence_length = (
            inputs_embeds.size(0) * self.trn_config.tensor_parallel_size
            if self.trn_config.sequence_parallel_enabled
            else inputs_embeds.size(1)
        )
        seq_length = sequence_length
        hidden_states = inputs_embeds
        output_shape = input_shape + (hidden_states.size(-1),)
        other_shape = other + (hidden_states.size(-1),)
        hidden_states = hidden_states.view(other_shape)
        if not self.trn_config.sequence_parallel_enabled:  # a (B, S, D) view; SP has (S/T, B, D)
            hidden_states = hidden_states.view(output_shape)
        return hidden_states
"""
        bp = blueprint(classes=[klass("ToyModel", ClassKind.BASE_MODEL)], backbone=self.BACKBONE)
        self.assertCodemod(before, after, blueprint=bp)

    def test_a_batch_size_unpacked_with_the_length_is_read_from_the_layout(self) -> None:
        # BioGPT: `batch_size, seq_length = inputs_embeds.size()[:-1]`, the batch size read later. Under
        # SP the embeddings are (S/T, B, D): the batch is dim 1 (-2), the length T times dim 0.
        before = """
class ToyModel(ToyPreTrainedModel):
    def __init__(self, config, trn_config):
        super().__init__(config)
        self.post_init()

    def forward(self, input_ids):
        inputs_embeds = self.embed_tokens(input_ids)
        batch_size, seq_length = inputs_embeds.size()[:-1]
        attention_mask = torch.ones(batch_size, seq_length)
        return inputs_embeds, attention_mask
"""
        after = """
class ToyModel(ToyPreTrainedModel):
    def __init__(self, config, trn_config):
        super().__init__(config)
        self.gradient_checkpointing = trn_config.gradient_checkpointing
        self.post_init()

    def forward(self, input_ids):
        inputs_embeds = self.embed_tokens(input_ids)
        batch_size = inputs_embeds.size(-2) if self.trn_config.sequence_parallel_enabled else inputs_embeds.size(0)
        # (B, S, D), or (S/T, B, D) under sequence parallelism
        sequence_length = (
            inputs_embeds.size(0) * self.trn_config.tensor_parallel_size
            if self.trn_config.sequence_parallel_enabled
            else inputs_embeds.size(1)
        )
        seq_length = sequence_length
        attention_mask = torch.ones(batch_size, seq_length)
        return inputs_embeds, attention_mask
"""
        bp = blueprint(classes=[klass("ToyModel", ClassKind.BASE_MODEL)], backbone=self.BACKBONE)
        self.assertCodemod(before, after, blueprint=bp)
        # the same with the batch unread: only the length is kept
        unread = before.replace("torch.ones(batch_size, seq_length)", "torch.ones(seq_length)")
        out = (
            BaseModelForward(CodemodContext(), bp)
            .transform_module(cst.parse_module(unread.strip() + "\n"))
            .code
        )
        assert "batch_size" not in out and "        seq_length = sequence_length\n" in out

    def test_views_of_other_shapes_or_names_are_kept(self) -> None:
        body = """
        shape = (-1, seq_length, other.size(-1))
        shape = shape + (1,)
        hidden_states = other.view(-1, seq_length, inputs_embeds.size(-1))
        hidden_states = hidden_states.view(shape)
        hidden_states = hidden_states.view(seq_length, -1, hidden_states.size(-1))
        hidden_states = hidden_states.view(-1, seq_length, other.size(-1))
        return hidden_states
"""
        before = """
class ToyModel(ToyPreTrainedModel):
    def __init__(self, config, trn_config):
        super().__init__(config)
        self.gradient_checkpointing = False
        self.post_init()

    def forward(self, input_ids, other):
        inputs_embeds = self.embed_tokens(input_ids)
        seq_length = inputs_embeds.shape[1]
"""
        after = """
class ToyModel(ToyPreTrainedModel):
    def __init__(self, config, trn_config):
        super().__init__(config)
        self.gradient_checkpointing = trn_config.gradient_checkpointing
        self.post_init()

    def forward(self, input_ids, other):
        inputs_embeds = self.embed_tokens(input_ids)
        # (B, S, D), or (S/T, B, D) under sequence parallelism
        sequence_length = (
            inputs_embeds.size(0) * self.trn_config.tensor_parallel_size
            if self.trn_config.sequence_parallel_enabled
            else inputs_embeds.size(1)
        )
        seq_length = sequence_length
"""
        bp = blueprint(classes=[klass("ToyModel", ClassKind.BASE_MODEL)], backbone=self.BACKBONE)
        self.assertCodemod(before + body, after + body, blueprint=bp)
