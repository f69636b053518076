"""Hand-written modeling files for `--source`: a llama-like model with unusual names and spellings.

Nothing in these files is named like transformers' Llama (except the two class names the auto mapping
asks for), so every role must come from dataflow. Import aliases exercise qualified-name resolution.
Variants swap one piece for a construct that must be refused; `# <-` marks the line a refusal names.
"""

from __future__ import annotations

import textwrap

HEADER = """
import torch
import torch.nn as tnn
from torch.nn import Linear as Dense
from torch.nn import functional as F

from ...modeling_utils import PreTrainedModel


class Norm(tnn.Module):
    def __init__(self, width, eps=1e-6):
        super().__init__()
        self.weight = tnn.Parameter(torch.ones(width))
        self.eps = eps

    def forward(self, x):
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)


def kernel(q, k, v):
    return torch.softmax(q @ k.transpose(-1, -2), dim=-1) @ v
"""

MIXER = """
class Mixer(tnn.Module):
    def __init__(self, config):
        super().__init__()
        self.size = config.hidden_size // config.num_attention_heads
        self.c = Dense(config.hidden_size, config.num_key_value_heads * self.size)
        self.a = Dense(config.hidden_size, config.num_attention_heads * self.size)
        self.b = tnn.Linear(config.hidden_size, config.num_key_value_heads * self.size)
        self.d = torch.nn.Linear(config.num_attention_heads * self.size, config.hidden_size, bias=False)
        {mixer_init}

    def forward(self, x):
        shape = (*x.shape[:-1], -1, self.size)
        {mixer_forward}
        return self.d(out.transpose(1, 2).reshape(*x.shape[:-1], -1))
"""

PLAIN_FORWARD = """first = self.a(x).view(shape).transpose(1, 2)
second = self.b(x).view(shape).transpose(1, 2)
third = self.c(x).view(shape).transpose(1, 2)
out = kernel(first, second, third)"""

REST = """
class Feed(tnn.Module):
    def __init__(self, config):
        super().__init__()
        self.p = Dense(config.hidden_size, config.intermediate_size, bias=False)
        self.r = Dense(config.hidden_size, config.intermediate_size, bias=False)
        self.s = Dense(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x):
        return self.s(self.p(x) * F.silu(self.r(x)))


class Block(tnn.Module):
    def __init__(self, config, index):
        super().__init__()
        self.mix = Mixer(config)
        self.ff = Feed(config)
        self.n1 = Norm(config.hidden_size)
        self.n2 = Norm(config.hidden_size)
        {block_init}

    def forward(self, x):
        x = x + self.mix(self.n1(x))
        return x + self.ff(self.n2(x))


class LlamaModel(PreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.tok = tnn.Embedding(config.vocab_size, config.hidden_size)
        self.blocks = tnn.ModuleList([Block(config, i) for i in range(config.num_hidden_layers)])
        self.final = Norm(config.hidden_size)

    def forward(self, input_ids):
        h = self.tok(input_ids)
        for block in self.blocks:
            h = block(h)
        return self.final(h)


class LlamaForCausalLM(PreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.body = LlamaModel(config)
        self.out = Dense(config.hidden_size, config.vocab_size, bias=False)

    def forward(self, input_ids):
        return self.out(self.body(input_ids))
"""


def model_source(mixer_init: str = "", mixer_forward: str = PLAIN_FORWARD, block_init: str = "") -> str:
    """The synthetic modeling file with optional replacements."""
    mixer = MIXER.format(
        mixer_init=mixer_init or "pass",
        mixer_forward=textwrap.indent(mixer_forward, " " * 8).lstrip(),
    )
    return HEADER + mixer + REST.format(block_init=block_init or "pass")


def marked_line(text: str) -> int:
    """1-based line of the only `# <-` marker."""
    (line,) = [number for number, content in enumerate(text.splitlines(), 1) if "# <-" in content]
    return line
