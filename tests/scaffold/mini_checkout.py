"""A miniature optimum-neuron checkout: the files `scaffold new-model --repo` edits, in their real shape.

Only the structure the registration relies on is reproduced (relative imports, the registration calls,
the test lists and parametrize rows); bodies are stubs. `build(root)` writes it and returns `root`.
"""

from __future__ import annotations

from pathlib import Path

AUTO_MODELS = '''\
# A stand-in for optimum-neuron's training auto_models.py.

from ..auto_model import register_neuron_model
from .granite.modeling_granite import GraniteForCausalLM, GraniteModel
from .llama.modeling_llama import LlamaForCausalLM, LlamaModel
from .qwen3.modeling_qwen3 import Qwen3ForCausalLM, Qwen3Model


def register_neuron_model_for_training(model_type: str, task: str):
    """Stub."""
    return register_neuron_model(model_type, task, "training")


# Base models
register_neuron_model_for_training("llama", "model")(LlamaModel)
register_neuron_model_for_training("granite", "model")(GraniteModel)
register_neuron_model_for_training("qwen3", "model")(Qwen3Model)

# Causal LMs
register_neuron_model_for_training("llama", "text-generation")(LlamaForCausalLM)
register_neuron_model_for_training("granite", "text-generation")(GraniteForCausalLM)
register_neuron_model_for_training("qwen3", "text-generation")(Qwen3ForCausalLM)
'''

TRAINING_INIT = """\
# A stand-in for optimum-neuron's training __init__.py.

import os

from . import auto_models  # registers the training models
from .config import TrainingNeuronConfig
from .granite.modeling_granite import GraniteForCausalLM
from .llama.modeling_llama import LlamaForCausalLM
from .modeling_auto import NeuronModel, NeuronModelForCausalLM
from .qwen3.modeling_qwen3 import Qwen3ForCausalLM
from .transformations_utils import (
    CustomModule,
    FusedLinearsSpec,
)


if not os.environ.get("SOME_FLAG", False):
    pass
"""

CUSTOM_MODELING_TEST = """\
import pytest


CUSTOM_MODELINGS_TO_TEST = [
    ("LlamaForCausalLM", "someone/llama-tiny"),
    ("GraniteForCausalLM", "someone/granite-tiny"),
    ("Qwen3ForCausalLM", "someone/qwen3-tiny"),
]
OTHER = "x"


@pytest.mark.parametrize("model_specs", CUSTOM_MODELINGS_TO_TEST, ids=[specs[0] for specs in CUSTOM_MODELINGS_TO_TEST])
def test_custom_modeling_matches_original(model_specs):
    pass
"""

OVERFIT_TEST = """\
import pytest


@pytest.mark.parametrize(
    "model_class_name,model_name_or_path,learning_rate,warmup_ratio,training_kwargs,use_flash_attention_2,max_expected_loss,max_length,num_steps",
    [
        pytest.param(
            "LlamaForCausalLM",
            "someone/llama-1b",
            1e-4,
            0.03,
            {},
            True,
            0.5,
            2048,
            50,
            marks=pytest.mark.flagship_model,
        ),
        [
            "Qwen3ForCausalLM",
            "someone/qwen3-0.6b",
            1e-4,
            0.03,
            {},
            True,
            0.5,
            2048,
            50,
        ],
    ],
    ids=[
        "someone/llama-1b",
        "someone/qwen3-0.6b",
    ],
)
@pytest.mark.parametrize("world_size,tp_size,pp_size", [[32, 2, 4]], ids=["dp=4,tp=2,pp=4"])
def test_overfit_custom_modeling_causal_lm(world_size, tp_size, pp_size, model_class_name, model_name_or_path):
    pass
"""

MODELING_AUTO_TEST = """\
import pytest


@pytest.mark.parametrize("from_pretrained", [False, True], ids=["from_config", "from_pretrained"])
def test_auto_model_with_supported_architecture(from_pretrained):
    for model_name_or_path in [
        "someone/llama-tiny",
        "someone/granite-tiny",
        "someone/qwen3-tiny",
    ]:
        print(model_name_or_path)


def test_auto_model_with_unsupported_architecture():
    pass


@pytest.mark.parametrize("from_pretrained", [False, True], ids=["from_config", "from_pretrained"])
def test_auto_model_for_causal_lm_with_supported_architecture(from_pretrained):
    for model_name_or_path in ["someone/llama-tiny", "someone/granite-tiny", "someone/qwen3-tiny"]:
        print(model_name_or_path)
"""

FILES = {
    "optimum/neuron/models/training/auto_models.py": AUTO_MODELS,
    "optimum/neuron/models/training/__init__.py": TRAINING_INIT,
    "tests/training/test_custom_modeling.py": CUSTOM_MODELING_TEST,
    "tests/training/test_overfit.py": OVERFIT_TEST,
    "tests/training/test_modeling_auto.py": MODELING_AUTO_TEST,
}


def build(root: Path) -> Path:
    """Write the miniature checkout under `root` and return `root`."""
    for relative, text in FILES.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under `root` (relative path -> bytes)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
