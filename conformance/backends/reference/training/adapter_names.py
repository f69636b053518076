"""PEFT adapter names inside parameter names (`...q_proj.lora_A.<adapter>.weight`).

In memory a LoRA parameter carries its adapter name; saved adapter state dicts (PEFT's
`get_peft_model_state_dict`) do not. These helpers move between the two spellings exactly as
optimum-neuron does. Note that `remove_adapter_name` is not idempotent: on an already adapter-free
name such as `x.lora_A.weight` the last component is taken for the adapter and dropped (`x.lora_A`), so
call it only on in-memory names.
"""

from __future__ import annotations

import re

LORA_PATTERN = re.compile(
    r"(?P<qualified_name>(\w+\.)+?lora_(embedding_)?(A|B))\.(?P<adapter_name>\w+)(?P<remaining>(\.{0,1}\w+\.?)+)?"
)


def remove_adapter_name(name: str) -> str:
    """`...lora_B.default.weight_q` -> `...lora_B.weight_q`; names without a LoRA part are unchanged."""
    return LORA_PATTERN.sub(r"\g<qualified_name>\g<remaining>", name)


def get_adapter_name(parameter_fully_qualified_name: str) -> str | None:
    """The adapter name of an in-memory LoRA parameter name, or None for other names."""
    match = LORA_PATTERN.match(parameter_fully_qualified_name)
    return match.group("adapter_name") if match else None


def is_base_layer(name: str) -> bool:
    """Whether a name belongs to the frozen layer a PEFT wrapper holds (`...q_proj.base_layer.weight`)."""
    return "base_layer" in name
