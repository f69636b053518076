"""Pre-refactor transformers forms read as the current ones (scaffold.analysis.current_forms).

Oracles: hand-written expected code for small snippets, the modeling files' own line numbers, and the
unchanged text of files already in the current form.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import libcst as cst
import pytest
import transformers

from scaffold.analysis.current_forms import current_forms

MODELS = Path(transformers.__file__).parent / "models"


def _normalised(source: str) -> str:
    return current_forms(cst.parse_module(textwrap.dedent(source))).code


def _lines(text: str) -> list[str]:
    """Non-blank lines, right-stripped (blank lines stand in for removed code)."""
    return [line.rstrip() for line in text.splitlines() if line.strip()]


TABLE = """
import torch
from torch import nn


class Attention(nn.Module):
    pass


class SdpaAttention(Attention):
    pass


ATTENTION_CLASSES = {"eager": Attention, "sdpa": SdpaAttention}


class Layer(nn.Module):
    def __init__(self, config, layer_idx):
        self.self_attn = ATTENTION_CLASSES[config._attn_implementation](config, layer_idx)
"""


def test_attention_table_lookup_becomes_the_eager_class_and_the_rest_goes():
    expected = """
    import torch
    from torch import nn
    class Attention(nn.Module):
        pass
    class Layer(nn.Module):
        def __init__(self, config, layer_idx):
            self.self_attn = Attention(config, layer_idx)
    """
    result = _normalised(TABLE)
    assert _lines(result) == _lines(textwrap.dedent(expected))
    assert result.count("\n") == textwrap.dedent(TABLE).count("\n")  # blank lines keep the numbering


MASK = """
import torch
from torch import nn


class Model(nn.Module):
    def forward(self, inputs_embeds, attention_mask, cache_position, past_key_values):
        causal_mask = self._update_causal_mask(
            attention_mask, inputs_embeds, cache_position, past_key_values
        )
        return causal_mask

    def _update_causal_mask(self, attention_mask, input_tensor, cache_position, past_key_values):
        return self._prepare(attention_mask, config=self.config, cache_position=cache_position)

    @staticmethod
    def _prepare(attention_mask, config, cache_position):
        min_dtype = torch.finfo(torch.float32).min
        text_config = config.get_text_config()
        if getattr(text_config, "use_sliding_window", True) and text_config.sliding_window is not None:
            min_dtype = min_dtype + 0
        return min_dtype
"""


def test_legacy_mask_helper_becomes_the_mask_builders_keeping_the_window_condition():
    expected = """
    import torch
    from torch import nn
    from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask
    class Model(nn.Module):
        def forward(self, inputs_embeds, attention_mask, cache_position, past_key_values):
            mask_function = create_sliding_window_causal_mask if getattr(self.config.get_text_config(), "use_sliding_window", True) and self.config.get_text_config().sliding_window is not None else create_causal_mask
            causal_mask = mask_function(config=self.config, input_embeds=inputs_embeds, attention_mask=attention_mask, cache_position=cache_position, past_key_values=past_key_values)
            return causal_mask
    """
    result = _normalised(MASK)
    assert _lines(result) == _lines(textwrap.dedent(expected))


def test_legacy_mask_helper_without_a_window_becomes_create_causal_mask():
    source = MASK.replace(
        '        if getattr(text_config, "use_sliding_window", True) and text_config.sliding_window is not None:\n'
        "            min_dtype = min_dtype + 0\n",
        "",
    )
    result = _normalised(source)
    assert (
        "        causal_mask = create_causal_mask(config=self.config, input_embeds=inputs_embeds, "
        "attention_mask=attention_mask, cache_position=cache_position, past_key_values=past_key_values)"
    ) in result
    assert "_update_causal_mask" not in result and "_prepare" not in result
    assert "from transformers.masking_utils import create_causal_mask\n" in result


INHERITED_MASK = """
import torch
from torch import nn


class PreTrained(nn.Module):
    base_model_prefix = "model"

    def _update_causal_mask(self, attention_mask, input_tensor, cache_position, past_key_values):
        return self._prepare(attention_mask, cache_position=cache_position)

    @staticmethod
    def _prepare(attention_mask, cache_position):
        return torch.finfo(torch.float32).min


class Model(PreTrained):
    def forward(self, inputs_embeds, attention_mask, cache_position, past_key_values):
        cache = past_key_values
        causal_mask = self._update_causal_mask(attention_mask, inputs_embeds, cache_position, cache)
        return causal_mask


class Head(PreTrained):
    def forward(self, x):
        return x
"""


def test_a_mask_helper_inherited_from_a_class_of_the_file_goes_with_its_call():
    """BioGPT (like BART) keeps `_update_causal_mask` on its pretrained base class: the base model's call
    becomes the host's builder, and the helpers leave the base class (blank lines in their place)."""
    expected = """
    import torch
    from torch import nn
    from transformers.masking_utils import create_causal_mask
    class PreTrained(nn.Module):
        base_model_prefix = "model"
    class Model(PreTrained):
        def forward(self, inputs_embeds, attention_mask, cache_position, past_key_values):
            cache = past_key_values
            causal_mask = create_causal_mask(config=self.config, input_embeds=inputs_embeds, attention_mask=attention_mask, cache_position=cache_position, past_key_values=cache)
            return causal_mask
    class Head(PreTrained):
        def forward(self, x):
            return x
    """
    result = _normalised(INHERITED_MASK)
    assert _lines(result) == _lines(textwrap.dedent(expected))
    original = textwrap.dedent(INHERITED_MASK).splitlines()
    assert result.splitlines().index("class Model(PreTrained):") == original.index("class Model(PreTrained):")


def test_an_inherited_mask_helper_another_class_calls_is_left_as_written():
    source = INHERITED_MASK.replace(
        "    def forward(self, x):\n        return x\n",
        "    def forward(self, x):\n        return self._update_causal_mask(x, x, x, None)\n",
    )
    assert _normalised(source) == textwrap.dedent(source)


INLINE = """
import math

import torch
from torch import nn


class Attention(nn.Module):
    def __init__(self, config):
        self.config = config
        self.hidden_size = config.hidden_size
        self.num_heads = config.num_attention_heads

    def forward(self, hidden_states, attention_mask=None):
        bsz, q_len, _ = hidden_states.size()
        query_states = self.q_proj(hidden_states).view(bsz, q_len, self.num_heads, 4).transpose(1, 2)
        key_states = self.k_proj(hidden_states).view(bsz, q_len, -1, 4).transpose(1, 2)
        value_states = self.v_proj(hidden_states).view(bsz, q_len, -1, 4).transpose(1, 2)
        key_states = repeat_kv(key_states, self.num_key_value_groups)
        value_states = repeat_kv(value_states, self.num_key_value_groups)
        attn_weights = torch.matmul(query_states, key_states.transpose(2, 3)) / math.sqrt(4)
        if attention_mask is not None:
            attn_weights += attention_mask
        attn_weights = nn.functional.softmax(attn_weights, dim=-1)
        attn_weights = nn.functional.dropout(attn_weights, p=self.attention_dropout, training=self.training)
        attn_output = torch.matmul(attn_weights, value_states)
        if attn_output.size() != (bsz, self.num_heads, q_len, 4):
            raise ValueError("wrong size")
        attn_output = attn_output.transpose(1, 2).contiguous()
        attn_output = attn_output.reshape(bsz, q_len, self.hidden_size)
        return self.o_proj(attn_output), attn_weights
"""


def test_inline_eager_attention_moves_to_an_eager_function_picked_from_the_table():
    expected = """
    import math
    import torch
    from torch import nn
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    def eager_attention_forward(module, query_states, key_states, value_states, attention_mask, scaling, dropout=0.0, **kwargs):
        key_states = repeat_kv(key_states, module.num_key_value_groups)
        value_states = repeat_kv(value_states, module.num_key_value_groups)
        attn_weights = torch.matmul(query_states, key_states.transpose(2, 3)) / math.sqrt(4)
        if attention_mask is not None:
            attn_weights = attn_weights + attention_mask
        attn_weights = nn.functional.softmax(attn_weights, dim=-1)
        attn_weights = nn.functional.dropout(attn_weights, p=module.attention_dropout, training=module.training)
        attn_output = torch.matmul(attn_weights, value_states)
        attn_output = attn_output.transpose(1, 2).contiguous()
        return attn_output, attn_weights
    class Attention(nn.Module):
        def __init__(self, config):
            self.config = config
            self.hidden_size = config.hidden_size
            self.num_heads = config.num_attention_heads
        def forward(self, hidden_states, attention_mask=None):
            bsz, q_len = hidden_states.shape[:-1]
            query_states = self.q_proj(hidden_states).view(bsz, q_len, -1, 4).transpose(1, 2)
            key_states = self.k_proj(hidden_states).view(bsz, q_len, -1, 4).transpose(1, 2)
            value_states = self.v_proj(hidden_states).view(bsz, q_len, -1, 4).transpose(1, 2)
            attention_interface = eager_attention_forward
            if self.config._attn_implementation != "eager":
                attention_interface = ALL_ATTENTION_FUNCTIONS[self.config._attn_implementation]
            attn_output, attn_weights = attention_interface(self, query_states, key_states, value_states, attention_mask, dropout=self.attention_dropout if self.training else 0.0, scaling=1 / math.sqrt(4))
            attn_output = attn_output.reshape(bsz, q_len, -1)
            return self.o_proj(attn_output), attn_weights
    """
    assert _lines(_normalised(INLINE)) == _lines(textwrap.dedent(expected))


def test_inline_attention_without_the_transpose_back_is_left_as_written():
    source = INLINE.replace("        attn_output = attn_output.transpose(1, 2).contiguous()\n", "")
    result = _normalised(source)
    assert "eager_attention_forward" not in result
    assert "attn_weights = torch.matmul(query_states, key_states.transpose(2, 3))" in result


@pytest.mark.parametrize("model_type", ["llama", "mistral", "qwen3_moe", "gemma2"])
def test_files_in_the_current_form_are_unchanged(model_type):
    text = (MODELS / model_type / f"modeling_{model_type}.py").read_text()
    assert current_forms(cst.parse_module(text)).code == text


@pytest.mark.parametrize("model_type", ["qwen2_moe", "olmoe", "phimoe", "stablelm", "nemotron"])
def test_later_definitions_keep_their_line_numbers(model_type):
    """Every top-level class keeps the line it has in the modeling file (messages point into it)."""
    text = (MODELS / model_type / f"modeling_{model_type}.py").read_text()
    result = current_forms(cst.parse_module(text)).code
    original = {line: i for i, line in enumerate(text.splitlines()) if line.startswith("class ")}
    kept = {line: i for i, line in enumerate(result.splitlines()) if line.startswith("class ")}
    assert kept, model_type
    assert all(original[line] == index for line, index in kept.items())


@pytest.mark.parametrize("model_type", ["qwen2_moe", "nemotron", "stablelm", "phimoe"])
def test_models_in_the_older_forms_are_no_longer_refused_for_their_attention_masks_or_cache(model_type):
    """Their refusals were R019 (the mask helpers read the cache), R026 and R027; what is left (stablelm's
    per-head LayerNorm list, phimoe's sparsemixer router) belongs to other passes."""
    from scaffold.analysis import analyze_model_type

    codes = {refusal.code for refusal in analyze_model_type(model_type).refusals}
    assert not codes & {"R019", "R026", "R027"}


HELPER = """
import torch
from torch import nn


class Attention(nn.Module):
    def __init__(self, config):
        self.config = config
        self.scale_attn = 8.0
        self.attn_dropout = nn.Dropout(0.1)

    def _attn(self, query, key, value, attention_mask=None, head_mask=None):
        query = query.to(torch.float32)
        attn_weights = torch.matmul(query, key.transpose(-1, -2))
        attn_weights = attn_weights / self.scale_attn
        if attention_mask is not None:
            attn_weights = attn_weights + attention_mask
        attn_weights = nn.functional.softmax(attn_weights, dim=-1)
        attn_weights = self.attn_dropout(attn_weights)
        if head_mask is not None:
            attn_weights = attn_weights * head_mask
        attn_output = torch.matmul(attn_weights, value)
        return attn_output, attn_weights

    def forward(self, hidden_states, attention_mask=None, head_mask=None):
        q, k, v = self.split(hidden_states)
        attn_output, attn_weights = self._attn(q, k, v, attention_mask, head_mask)
        attn_output = self.merge(attn_output)
        return attn_output, attn_weights
"""


def test_eager_kernel_in_a_helper_method_moves_to_an_eager_function_picked_from_the_table():
    """The helper's body (upcast, separate scaling statement, head mask) becomes the current eager function,
    returning (B, S, h, d); the forward transposes back to the (B, h, S, d) its own code reads."""
    expected = """
    import torch
    from torch import nn
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    def eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, head_mask=None, **kwargs):
        query = query.to(torch.float32)
        attn_weights = torch.matmul(query, key.transpose(-1, -2))
        attn_weights = attn_weights / module.scale_attn
        if attention_mask is not None:
            attn_weights = attn_weights + attention_mask
        attn_weights = nn.functional.softmax(attn_weights, dim=-1)
        attn_weights = module.attn_dropout(attn_weights)
        if head_mask is not None:
            attn_weights = attn_weights * head_mask
        attn_output = torch.matmul(attn_weights, value)
        attn_output = attn_output.transpose(1, 2).contiguous()
        return attn_output, attn_weights
    class Attention(nn.Module):
        def __init__(self, config):
            self.config = config
            self.scale_attn = 8.0
            self.attn_dropout = nn.Dropout(0.1)
        def forward(self, hidden_states, attention_mask=None, head_mask=None):
            q, k, v = self.split(hidden_states)
            attention_interface = eager_attention_forward
            if self.config._attn_implementation != "eager":
                attention_interface = ALL_ATTENTION_FUNCTIONS[self.config._attn_implementation]
            attn_output, attn_weights = attention_interface(self, q, k, v, attention_mask, dropout=self.attn_dropout.p if self.training else 0.0, scaling=1 / self.scale_attn, head_mask=head_mask)
            attn_output = attn_output.transpose(1, 2)
            attn_output = self.merge(attn_output)
            return attn_output, attn_weights
    """
    assert _lines(_normalised(HELPER)) == _lines(textwrap.dedent(expected))


WINDOWED = (
    HELPER.replace(
        "        self.scale_attn = 8.0\n",
        "        self.scale_attn = 8.0\n"
        "        bias = torch.tril(torch.ones((4, 4), dtype=bool)).view(1, 1, 4, 4)\n"
        '        if kind == "local":\n'
        "            bias = torch.bitwise_xor(bias, torch.tril(bias, -config.window_size))\n"
        "\n"
        '        self.register_buffer("bias", bias, persistent=False)\n',
    )
    .replace(
        "        attn_weights = attn_weights / self.scale_attn\n",
        "        attn_weights = torch.where(self.bias[:, :, :4, :4], attn_weights, -1e9)\n",
    )
    .replace("def __init__(self, config):", "def __init__(self, config, kind):")
)


def test_a_window_in_the_modules_own_mask_buffer_is_recorded_and_passed_as_sliding_window():
    """No scaling statement: scaling 1.0; the buffer's window (keys i - W < j <= i under the condition)
    is recorded in `__init__` in place of the blank line and passed to the attention function."""
    result = _normalised(WINDOWED)
    lines = _lines(result)
    assert '        self.sliding_window = config.window_size if kind == "local" else None' in lines
    assert lines.index('        self.sliding_window = config.window_size if kind == "local" else None') == (
        lines.index('        self.register_buffer("bias", bias, persistent=False)') - 1
    )
    assert (
        "        attn_output, attn_weights = attention_interface(self, q, k, v, attention_mask, "
        "dropout=self.attn_dropout.p if self.training else 0.0, scaling=1.0, head_mask=head_mask, "
        "sliding_window=self.sliding_window)"
    ) in lines
    assert "    attn_weights = torch.where(module.bias[:, :, :4, :4], attn_weights, -1e9)" in lines


def test_a_mask_buffer_of_another_construction_leaves_the_helper_as_written():
    """A buffer the flash kernel could not honour (not `tril(ones)` optionally windowed): R027 stays."""
    source = WINDOWED.replace("torch.tril(torch.ones((4, 4), dtype=bool))", "torch.ones((4, 4), dtype=bool)")
    result = _normalised(source)
    assert "eager_attention_forward" not in result and "def _attn(" in result


def test_a_helper_called_twice_is_left_as_written():
    source = HELPER.replace(
        "        attn_output = self.merge(attn_output)\n",
        "        attn_output = self.merge(attn_output)\n        self._attn(q, k, v, attention_mask, head_mask)\n",
    )
    result = _normalised(source)
    assert "eager_attention_forward" not in result and "def _attn(" in result


@pytest.mark.parametrize("model_type", ["gpt_neo", "gptj", "codegen"])
def test_helper_kernels_of_the_gpt_files_are_read(model_type):
    text = (MODELS / model_type / f"modeling_{model_type}.py").read_text()
    result = current_forms(cst.parse_module(text)).code
    assert "def eager_attention_forward(" in result and "def _attn(" not in result
    assert "attention_interface = ALL_ATTENTION_FUNCTIONS[self.config._attn_implementation]" in result


CONFIG_NOT_KEPT = HELPER.replace(
    "    def __init__(self, config):\n        self.config = config\n",
    "    def __init__(self, config):\n        super().__init__()\n",
).replace(
    "        attn_weights = attn_weights / self.scale_attn\n"
    "        if attention_mask is not None:\n"
    "            attn_weights = attn_weights + attention_mask\n",
    "        if attention_mask is not None:\n"
    "            attn_weights += attention_mask\n"
    "        attn_weights = attn_weights / self.scale_attn\n",
)


def test_a_constructor_not_keeping_its_config_keeps_it_and_a_scaling_after_the_mask_is_read():
    """CodeGen's form: no `self.config` (the dispatch reads it: kept on the `super().__init__()` line, so
    that later lines keep their numbers) and the scores scaled after the mask is added (`(q k^T + m) / s`:
    the flash path gets 1 / s; the eager function computes the source's order)."""
    result = _normalised(CONFIG_NOT_KEPT)
    lines = _lines(result)
    assert "        super().__init__(); self.config = config" in lines
    for text in (result, textwrap.dedent(CONFIG_NOT_KEPT)):  # the class's lines keep their distances
        every = text.splitlines()
        assert (
            every.index("    def forward(self, hidden_states, attention_mask=None, head_mask=None):")
            - (every.index("class Attention(nn.Module):"))
            == 19
        )
    call = next(line for line in lines if "= attention_interface(" in line)
    assert "scaling=1 / self.scale_attn" in call
    eager = lines[lines.index("    attn_weights = torch.matmul(query, key.transpose(-1, -2))") :]
    assert eager[1:4] == [
        "    if attention_mask is not None:",
        "        attn_weights = attn_weights + attention_mask",
        "    attn_weights = attn_weights / module.scale_attn",
    ]


def test_a_constructor_without_config_or_parent_call_leaves_the_helper_as_written():
    source = CONFIG_NOT_KEPT.replace("        super().__init__()\n", "        pass\n")
    result = _normalised(source)
    assert "eager_attention_forward" not in result and "def _attn(" in result


UNCONDITIONAL = """
import torch
from torch import nn


def eager_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    attn_weights = torch.matmul(query, key.transpose(2, 3)) * scaling

    # the mask, cut to the keys
    causal_mask = attention_mask[:, :, :, : key.shape[-2]]
    attn_weights = attn_weights + causal_mask
    attn_weights = nn.functional.softmax(attn_weights, dim=-1)
    attn_output = torch.matmul(attn_weights, value)
    return attn_output.transpose(1, 2).contiguous(), attn_weights
"""


def test_a_mask_added_unconditionally_moves_under_a_mask_check_keeping_the_line_numbers():
    expected = """
    import torch
    from torch import nn
    def eager_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
        attn_weights = torch.matmul(query, key.transpose(2, 3)) * scaling
        # the mask, cut to the keys
        if attention_mask is not None:
            causal_mask = attention_mask[:, :, :, : key.shape[-2]]
            attn_weights = attn_weights + causal_mask
        attn_weights = nn.functional.softmax(attn_weights, dim=-1)
        attn_output = torch.matmul(attn_weights, value)
        return attn_output.transpose(1, 2).contiguous(), attn_weights
    """
    result = _normalised(UNCONDITIONAL)
    assert _lines(result) == _lines(textwrap.dedent(expected))
    assert len(result.splitlines()) == len(textwrap.dedent(UNCONDITIONAL).splitlines())


def test_a_mask_added_directly_moves_under_a_mask_check():
    source = UNCONDITIONAL.replace(
        "    causal_mask = attention_mask[:, :, :, : key.shape[-2]]\n    attn_weights = attn_weights + causal_mask\n",
        "    attn_weights = attn_weights + attention_mask\n",
    )
    assert "    if attention_mask is not None:\n        attn_weights = attn_weights + attention_mask\n" in (
        _normalised(source)
    )


@pytest.mark.parametrize(
    "change",
    [
        # the mask is read again later: moving its add alone would leave that read unguarded
        (
            "    return attn_output",
            "    attn_output = attn_output + attention_mask.sum()\n    return attn_output",
        ),
        # what gets the mask is not attention scores (no q @ k^T before it)
        ("torch.matmul(query, key.transpose(2, 3)) * scaling", "query * scaling"),
        # the sliced mask is read again after the add
        (
            "    attn_weights = nn.functional.softmax",
            "    attn_weights = attn_weights * causal_mask\n    attn_weights = nn.functional.softmax",
        ),
    ],
)
def test_other_unconditional_uses_of_the_mask_are_left_as_written(change):
    source = UNCONDITIONAL.replace(*change)
    assert _normalised(source) == textwrap.dedent(source)


def test_modernbert_decoder_is_no_longer_refused_for_its_eager_mask() -> None:
    """Its eager function adds the mask sliced to the keys without checking for one (R027 before); what
    is left (its prediction head before the vocabulary projection, R008, and its own shifted
    CrossEntropyLoss, R023/R007) belongs to other passes."""
    from scaffold.analysis import analyze_model_type

    codes = {refusal.code for refusal in analyze_model_type("modernbert-decoder").refusals}
    assert "R027" not in codes


HAND_WRITTEN_LOSS = """
import torch
from torch import nn
from torch.nn import CrossEntropyLoss


class ForCausalLM(nn.Module):
    def forward(self, input_ids, labels=None):
        hidden_states = self.model(input_ids)[0]
        logits = self.decoder(self.head(hidden_states))

        loss = None
        if labels is not None:
            # Shift so that tokens < n predict n
            shift_logits = logits[..., :-1, :].contiguous()
            shift_labels = labels[..., 1:].contiguous()
            loss_fct = CrossEntropyLoss()
            shift_logits = shift_logits.view(-1, self.config.vocab_size)
            shift_labels = shift_labels.view(-1)
            shift_labels = shift_labels.to(shift_logits.device)
            loss = loss_fct(shift_logits, shift_labels)

        return loss, logits
"""


def test_a_hand_written_shifted_cross_entropy_becomes_the_transformers_loss_keeping_the_line_numbers():
    expected = """
    import torch
    from torch import nn
    from torch.nn import CrossEntropyLoss
    class ForCausalLM(nn.Module):
        def forward(self, input_ids, labels=None):
            hidden_states = self.model(input_ids)[0]
            logits = self.decoder(self.head(hidden_states))
            loss = None
            if labels is not None:
                loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size)
            return loss, logits
    """
    result = _normalised(HAND_WRITTEN_LOSS)
    assert _lines(result) == _lines(textwrap.dedent(expected))
    assert len(result.splitlines()) == len(textwrap.dedent(HAND_WRITTEN_LOSS).splitlines())


def test_the_shortest_hand_written_loss_is_read_too():
    source = """
    class ForCausalLM(nn.Module):
        def forward(self, input_ids, labels=None):
            out = self.lm_head(self.model(input_ids))
            if labels is not None:
                s = out[..., :-1, :]
                t = labels[..., 1:]
                loss = nn.CrossEntropyLoss()
                l = loss(s, t)
            return out
    """
    assert (
        "            l = self.loss_function(logits=out, labels=labels, vocab_size=self.config.vocab_size)\n"
        in (_normalised(source))
    )


@pytest.mark.parametrize(
    "change",
    [
        # another loss (label smoothing is not the plain cross-entropy)
        ("CrossEntropyLoss()", "CrossEntropyLoss(label_smoothing=0.1)"),
        # no shift: a masked-LM loss, not the causal one
        ("logits[..., :-1, :].contiguous()", "logits.contiguous()"),
        # anything else in the block
        (
            "            loss = loss_fct(",
            "            shift_logits = shift_logits * 2\n            loss = loss_fct(",
        ),
        # labels shifted the other way
        ("labels[..., 1:]", "labels[..., :-1]"),
    ],
)
def test_other_losses_are_left_as_written(change):
    source = HAND_WRITTEN_LOSS.replace(*change)
    assert _normalised(source) == textwrap.dedent(source)


def test_modernbert_decoder_is_refused_for_nothing_these_forms_read():
    """R023 (its hand-written loss) and R007 (the slice that shifts its logits) are gone, and so is the R008
    of its prediction head's dense layer (a head transform, replicated: tests/scaffold/
    test_head_transforms_and_optional_norms.py)."""
    from scaffold.analysis import analyze_model_type

    assert not analyze_model_type("modernbert-decoder").refusals


FALCON_FORM = """
import math

import torch
from torch import nn
from torch.nn import functional as F


class Attention(nn.Module):
    def __init__(self, config):
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // self.num_heads
        self.grouped = config.grouped
        self.num_kv_heads = config.num_kv_heads if self.grouped else 1

    def forward(self, hidden_states, attention_mask, output_attentions=False):
        num_kv_heads = self.num_heads if self.grouped else self.num_kv_heads
        query, key, value = self.split(hidden_states)
        batch_size, query_length, _, _ = query.shape
        query = query.transpose(1, 2).reshape(batch_size, self.num_heads, query_length, self.head_dim)
        key = key.transpose(1, 2).reshape(batch_size, num_kv_heads, query_length, self.head_dim)
        if self.config._attn_implementation == "sdpa" and not output_attentions:
            attn_output = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask)
            scores = None
        else:
            scores = query @ key.transpose(-1, -2)
            scores /= math.sqrt(self.head_dim)
            scores = F.softmax(scores + attention_mask, dim=-1, dtype=hidden_states.dtype)
            attn_output = scores @ value
        attn_output = attn_output.view(batch_size, self.num_heads, query_length, self.head_dim)
        attn_output = attn_output.permute(0, 2, 1, 3)
        attn_output = attn_output.reshape(batch_size, query_length, self.num_heads * self.head_dim)
        return self.dense(attn_output), scores
"""


def test_an_inline_kernel_of_the_falcon_form_moves_to_an_eager_function():
    """The SDPA branch gives way to the eager one; an in-place scale, a mask added inside the softmax, a
    view of the output as itself and `permute(0, 2, 1, 3)` are read as the usual kernel; view sizes of
    unsharded head counts (a product with one, a local choosing between them) become -1."""
    expected = """
    import math
    import torch
    from torch import nn
    from torch.nn import functional as F
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    def eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
        scores = query @ key.transpose(-1, -2)
        scores /= math.sqrt(module.head_dim)
        if attention_mask is not None:
            scores = scores + attention_mask
        scores = F.softmax(scores, dim=-1, dtype=query.dtype)
        attn_output = scores @ value
        attn_output = attn_output.permute(0, 2, 1, 3)
        return attn_output, scores
    class Attention(nn.Module):
        def __init__(self, config):
            self.config = config
            self.num_heads = config.num_attention_heads
            self.head_dim = config.hidden_size // self.num_heads
            self.grouped = config.grouped
            self.num_kv_heads = config.num_kv_heads if self.grouped else 1
        def forward(self, hidden_states, attention_mask, output_attentions=False):
            num_kv_heads = self.num_heads if self.grouped else self.num_kv_heads
            query, key, value = self.split(hidden_states)
            batch_size, query_length, _, _ = query.shape
            query = query.transpose(1, 2).reshape(batch_size, -1, query_length, self.head_dim)
            key = key.transpose(1, 2).reshape(batch_size, -1, query_length, self.head_dim)
            attention_interface = eager_attention_forward
            if self.config._attn_implementation != "eager":
                attention_interface = ALL_ATTENTION_FUNCTIONS[self.config._attn_implementation]
            attn_output, scores = attention_interface(self, query, key, value, attention_mask, dropout=0.0, scaling=1 / math.sqrt(self.head_dim))
            attn_output = attn_output.reshape(batch_size, query_length, -1)
            return self.dense(attn_output), scores
    """
    assert _lines(_normalised(FALCON_FORM)) == _lines(textwrap.dedent(expected))


def test_a_mask_inside_the_softmax_that_is_no_parameter_is_left_as_written():
    source = FALCON_FORM.replace("scores + attention_mask, dim", "scores + self.bias, dim")
    result = _normalised(source)
    assert "eager_attention_forward" not in result


BATCHED = """
import torch
from torch import nn
from transformers.modeling_attn_mask_utils import _prepare_4d_causal_attention_mask


class Attention(nn.Module):
    def __init__(self, embed_dim, num_heads, dropout=0.0):
        super().__init__()
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.dropout = dropout
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)

    def forward(self, hidden_states, attention_mask=None, layer_head_mask=None, output_attentions=False):
        bsz, tgt_len, _ = hidden_states.size()
        query_states = self.q_proj(hidden_states)
        key_states = self.k_proj(hidden_states).view(bsz, tgt_len, -1, self.head_dim).transpose(1, 2)
        value_states = self.v_proj(hidden_states).view(bsz, tgt_len, -1, self.head_dim).transpose(1, 2)
        proj_shape = (bsz * self.num_heads, -1, self.head_dim)
        query_states = query_states.view(bsz, tgt_len, self.num_heads, self.head_dim).transpose(1, 2)
        query_states = query_states.reshape(*proj_shape)
        key_states = key_states.reshape(*proj_shape)
        value_states = value_states.reshape(*proj_shape)
        src_len = key_states.size(1)
        attn_weights = torch.bmm(query_states, key_states.transpose(1, 2))
        if attn_weights.size() != (bsz * self.num_heads, tgt_len, src_len):
            raise ValueError("size")
        if attention_mask is not None:
            attn_weights = attn_weights.view(bsz, self.num_heads, tgt_len, src_len) + attention_mask
            attn_weights = attn_weights.view(bsz * self.num_heads, tgt_len, src_len)
        attn_weights = nn.functional.softmax(attn_weights, dim=-1)
        if layer_head_mask is not None:
            attn_weights = layer_head_mask.view(1, -1, 1, 1) * attn_weights.view(bsz, self.num_heads, tgt_len, src_len)
            attn_weights = attn_weights.view(bsz * self.num_heads, tgt_len, src_len)
        if output_attentions:
            attn_weights_reshaped = attn_weights.view(bsz, self.num_heads, tgt_len, src_len)
            attn_weights = attn_weights_reshaped.view(bsz * self.num_heads, tgt_len, src_len)
        else:
            attn_weights_reshaped = None
        attn_probs = nn.functional.dropout(attn_weights, p=self.dropout, training=self.training)
        attn_output = torch.bmm(attn_probs, value_states)
        attn_output = attn_output.view(bsz, self.num_heads, tgt_len, self.head_dim)
        attn_output = attn_output.transpose(1, 2)
        attn_output = attn_output.reshape(bsz, tgt_len, self.embed_dim)
        return self.out_proj(attn_output), attn_weights_reshaped


class Layer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.self_attn = Attention(config.hidden_size, config.num_attention_heads)


class Positions(nn.Module):
    def forward(self, position_ids):
        position_ids += 2
        return position_ids


class Model(nn.Module):
    def forward(self, inputs_embeds, attention_mask, input_shape):
        return _prepare_4d_causal_attention_mask(attention_mask, input_shape, inputs_embeds, 0)
"""


def test_attention_over_heads_folded_into_the_batch_is_read_in_4d_and_outlined():
    """XGLM's form: q, k, v folded to (B*h, S, d), `torch.bmm`, views between the folded and 4-D scores.
    In 4-D it is the current kernel; the copy of the weights for `output_attentions` follows the call, the
    head mask becomes a keyword parameter, the attention takes its callers' config (it kept none), and
    the output's width read from the projections' size becomes -1 (each rank holds a part)."""
    expected = """
    import torch
    from torch import nn
    from transformers.modeling_attn_mask_utils import _prepare_4d_causal_attention_mask
    from transformers.masking_utils import create_causal_mask
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    def eager_attention_forward(module, query_states, key_states, value_states, attention_mask, scaling, dropout=0.0, layer_head_mask=None, **kwargs):
        attn_weights = torch.matmul(query_states, key_states.transpose(2, 3))
        if attention_mask is not None:
            attn_weights = attn_weights + attention_mask
        attn_weights = nn.functional.softmax(attn_weights, dim=-1)
        if layer_head_mask is not None:
            attn_weights = layer_head_mask.view(1, -1, 1, 1) * attn_weights
        attn_probs = nn.functional.dropout(attn_weights, p=module.dropout, training=module.training)
        attn_output = torch.matmul(attn_probs, value_states)
        attn_output = attn_output.transpose(1, 2)
        return attn_output, attn_weights
    class Attention(nn.Module):
        def __init__(self, config, embed_dim, num_heads, dropout=0.0):
            super().__init__(); self.config = config
            self.embed_dim = embed_dim
            self.num_heads = num_heads
            self.head_dim = embed_dim // num_heads
            self.dropout = dropout
            self.q_proj = nn.Linear(embed_dim, embed_dim)
            self.k_proj = nn.Linear(embed_dim, embed_dim)
            self.v_proj = nn.Linear(embed_dim, embed_dim)
            self.out_proj = nn.Linear(embed_dim, embed_dim)
        def forward(self, hidden_states, attention_mask=None, layer_head_mask=None, output_attentions=False):
            bsz, tgt_len = hidden_states.shape[:-1]
            query_states = self.q_proj(hidden_states)
            key_states = self.k_proj(hidden_states).view(bsz, tgt_len, -1, self.head_dim).transpose(1, 2)
            value_states = self.v_proj(hidden_states).view(bsz, tgt_len, -1, self.head_dim).transpose(1, 2)
            query_states = query_states.view(bsz, tgt_len, self.num_heads, self.head_dim).transpose(1, 2)
            src_len = key_states.size(2)
            attention_interface = eager_attention_forward
            if self.config._attn_implementation != "eager":
                attention_interface = ALL_ATTENTION_FUNCTIONS[self.config._attn_implementation]
            attn_output, attn_weights = attention_interface(self, query_states, key_states, value_states, attention_mask, dropout=self.dropout if self.training else 0.0, scaling=1.0, layer_head_mask=layer_head_mask)
            if output_attentions:
                attn_weights_reshaped = attn_weights
            else:
                attn_weights_reshaped = None
            attn_output = attn_output.reshape(bsz, tgt_len, -1)
            return self.out_proj(attn_output), attn_weights_reshaped
    class Layer(nn.Module):
        def __init__(self, config):
            super().__init__()
            self.self_attn = Attention(config, config.hidden_size, config.num_attention_heads)
    class Positions(nn.Module):
        def forward(self, position_ids):
            position_ids = position_ids + 2
            return position_ids
    class Model(nn.Module):
        def forward(self, inputs_embeds, attention_mask, input_shape):
            return create_causal_mask(config=self.config, input_embeds=inputs_embeds, attention_mask=attention_mask, cache_position=torch.arange(0, 0 + input_shape[-1], device=inputs_embeds.device), past_key_values=None)
    """
    result = _normalised(BATCHED)
    assert _lines(result) == _lines(textwrap.dedent(expected))


def test_the_4d_reading_equals_the_folded_kernel_numerically():
    """Oracle: the source's own attention module, run against the rewritten one with the same weights (a
    padding mask, a head mask, the weights returned)."""
    import types

    import torch

    def attention(text: str, *args: object) -> torch.nn.Module:
        namespace: dict = {}
        exec(compile(text, "<snippet>", "exec"), namespace)
        return namespace["Attention"](*args)

    torch.manual_seed(0)
    b, s, h, d = 2, 5, 3, 4
    config = types.SimpleNamespace(_attn_implementation="eager")
    source = attention(textwrap.dedent(BATCHED), h * d, h)
    rewritten = attention(_normalised(BATCHED), config, h * d, h)
    rewritten.load_state_dict(source.state_dict())
    x = torch.randn(b, s, h * d)
    mask = torch.where(torch.rand(b, 1, s, s) > 0.3, 0.0, torch.finfo(torch.float32).min)
    arguments = dict(attention_mask=mask, layer_head_mask=torch.rand(h), output_attentions=True)
    expected, expected_weights = source.eval()(x, **arguments)
    out, weights = rewritten.eval()(x, **arguments)
    assert torch.allclose(out, expected, atol=1e-6) and torch.allclose(weights, expected_weights)


def test_a_folded_kernel_of_another_shape_is_left_as_written():
    # the output is not viewed back to 4 sizes before its transpose: nothing is rewritten
    source = BATCHED.replace(
        "        attn_output = attn_output.view(bsz, self.num_heads, tgt_len, self.head_dim)\n", ""
    )
    result = _normalised(source)
    assert "torch.bmm(query_states, key_states.transpose(1, 2))" in result
    assert "eager_attention_forward" not in result


SAME_INPUT = """
import torch
from torch import nn


class Attention(nn.Module):
    def forward(self, v, k, q, mask, head_mask=None):
        batch_size = q.shape[0]
        q = self.Wq(q)
        k = self.Wk(k)
        v = self.Wv(v)
        return q, k, v, mask, batch_size


class Layer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.attention = Attention()

    def forward(self, x, mask):
        normed = self.norm(x)
        return self.attention(normed, normed, normed, mask, head_mask=None)
"""


def test_parameters_every_call_binds_to_one_name_are_one_input():
    """CTRL's `MultiHeadAttention.forward(v, k, q, mask)`, called as `attn(normed, normed, normed, mask)`:
    one input (what R006 already reads so), its projections then all read it (R025); the batch read off
    the input's dim 0 reads the leading shape (R026)."""
    expected = """
    import torch
    from torch import nn
    class Attention(nn.Module):
        def forward(self, v, mask, head_mask=None):
            batch_size = v.shape[:-1][0]
            q = self.Wq(v)
            k = self.Wk(v)
            v = self.Wv(v)
            return q, k, v, mask, batch_size
    class Layer(nn.Module):
        def __init__(self, config):
            super().__init__()
            self.attention = Attention()
        def forward(self, x, mask):
            normed = self.norm(x)
            return self.attention(normed, mask, head_mask=None)
    """
    assert _lines(_normalised(SAME_INPUT)) == _lines(textwrap.dedent(expected))


@pytest.mark.parametrize(
    "change",
    [
        ("self.attention(normed, normed, normed, mask", "self.attention(normed, a, b, mask"),  # differ
        (
            "        self.attention = Attention()\n",
            "        self.attention = Attention()\n        self.other = self.attention\n",
        ),
    ],
)
def test_parameters_bound_otherwise_are_left_as_written(change):
    result = _normalised(SAME_INPUT.replace(*change))
    assert "def forward(self, v, k, q, mask, head_mask=None):" in result
