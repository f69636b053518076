"""A miniature optimum-neuron checkout: the files `scaffold new-model --repo` edits, in their real shape.

Written for these tests after reading optimum-neuron's main branch: the training package's
`auto_models.py` and `__init__.py` (license header, relative imports in isort order, the registration
calls grouped by task, the causal-LM classes imported in `__init__`), the model packages (an empty
`__init__.py` for qwen3 and granite, none for llama), the three test files (the list of
`test_custom_modeling.py`, the exploded parametrize rows of `test_overfit.py` with a `pytest.param` and
its trailing comment, the checkpoint loops of `test_modeling_auto.py`), the training table of
`docs/source/supported_architectures.mdx` and the ruff settings of `pyproject.toml` (line length 119,
two blank lines after imports, `__init__.py` per-file ignores). Bodies are stubs, but every file passes
the checkout's own `ruff check` and `ruff format --check`, as the real ones do.

`build(root)` writes it and returns `root`.
"""

from __future__ import annotations

from pathlib import Path

LICENSE = """\
# coding=utf-8
# Copyright 2025 The HuggingFace Inc. team. All rights reserved.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""

PYPROJECT = """\
[project]
name = "mini-optimum-neuron"
version = "0.0.0"

[tool.ruff]
line-length = 119

[tool.ruff.lint]
ignore = ["C901", "E501", "E741", "W605"]
select = ["C", "E", "F", "I", "W"]

[tool.ruff.lint.per-file-ignores]
"__init__.py" = ["E402", "F401", "F403", "F811"]

[tool.ruff.lint.isort]
lines-after-imports = 2
known-first-party = ["optimum.neuron"]
"""

AUTO_MODELS = (
    LICENSE
    + '''
from ..auto_model import register_neuron_model
from .granite.modeling_granite import GraniteForCausalLM, GraniteModel
from .llama.modeling_llama import LlamaForCausalLM, LlamaModel
from .qwen3.modeling_qwen3 import Qwen3ForCausalLM, Qwen3Model


def register_neuron_model_for_training(model_type: str, task: str):
    """Stub of the training registration decorator."""
    return register_neuron_model(model_type, task, "training")


# Base models (no head)
register_neuron_model_for_training("llama", "model")(LlamaModel)
register_neuron_model_for_training("granite", "model")(GraniteModel)
register_neuron_model_for_training("qwen3", "model")(Qwen3Model)

# Causal LMs
register_neuron_model_for_training("llama", "text-generation")(LlamaForCausalLM)
register_neuron_model_for_training("granite", "text-generation")(GraniteForCausalLM)
register_neuron_model_for_training("qwen3", "text-generation")(Qwen3ForCausalLM)
'''
)

TRAINING_INIT = (
    LICENSE
    + """
import os

from . import auto_models  # registers the training models
from .config import TrainingNeuronConfig
from .granite.modeling_granite import GraniteForCausalLM
from .llama.modeling_llama import LlamaForCausalLM
from .modeling_auto import NeuronModel, NeuronModelForCausalLM
from .qwen3.modeling_qwen3 import Qwen3ForCausalLM
from .training_utils import patch_for_the_sdk
from .transformations_utils import (
    CustomModule,
    FusedLinearsSpec,
    GQAQKVColumnParallelLinearSpec,
)


if not os.environ.get("SKIP_PATCHING", False):
    patch_for_the_sdk()
"""
)

CUSTOM_MODELING_TEST = (
    LICENSE
    + """
import pytest


CUSTOM_MODELINGS_TO_TEST = [
    ("LlamaForCausalLM", "someone/llama-tiny-4kv-heads-random"),
    ("GraniteForCausalLM", "someone/granite-tiny-4kv-heads-random"),
    ("Qwen3ForCausalLM", "someone/qwen3-tiny-4kv-heads-random"),
]
LLAMA_CHECKPOINT = "someone/llama-tiny-4kv-heads-random"


@pytest.mark.parametrize("model_specs", CUSTOM_MODELINGS_TO_TEST, ids=[specs[0] for specs in CUSTOM_MODELINGS_TO_TEST])
def test_custom_modeling_matches_original(model_specs):
    assert model_specs
"""
)

OVERFIT_TEST = (
    LICENSE
    + """
import pytest


@pytest.mark.parametrize(
    "model_class_name,model_name_or_path,learning_rate,warmup_ratio,training_kwargs,use_flash_attention_2,max_expected_loss,max_length,num_steps",
    [
        pytest.param(
            "LlamaForCausalLM",
            "someone/llama-1b-instruct",
            1e-4,
            0.03,
            {},
            True,
            0.5,
            2048,
            50,
            # Only this one runs on pull requests.
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
        "someone/llama-1b-instruct",
        "someone/qwen3-0.6b",
    ],
)
@pytest.mark.parametrize(
    "world_size,tp_size,pp_size",
    [[32, 2, 4], [32, 8, 1]],
    ids=["dp=4,tp=2,pp=4", "dp=4,tp=8"],
)
def test_overfit_custom_modeling_causal_lm(
    world_size,
    tp_size,
    pp_size,
    model_class_name,
    model_name_or_path,
    learning_rate,
    warmup_ratio,
    training_kwargs,
    use_flash_attention_2,
    max_expected_loss,
    max_length,
    num_steps,
):
    assert model_class_name
"""
)

MODELING_AUTO_TEST = (
    LICENSE
    + """
import pytest


@pytest.mark.parametrize("from_pretrained", [False, True], ids=["from_config", "from_pretrained"])
def test_auto_model_with_supported_architecture(from_pretrained):
    for model_name_or_path in [
        "someone/llama-tiny-4kv-heads-random",
        "someone/granite-tiny-4kv-heads-random",
        "someone/qwen3-tiny-4kv-heads-random",
    ]:
        print(f"Testing model: {model_name_or_path}")


def test_auto_model_with_unsupported_architecture():
    pass


@pytest.mark.parametrize("from_pretrained", [False, True], ids=["from_config", "from_pretrained"])
def test_auto_model_for_causal_lm_with_supported_architecture(from_pretrained):
    for model_name_or_path in [
        "someone/llama-tiny-4kv-heads-random",
        "someone/granite-tiny-4kv-heads-random",
        "someone/qwen3-tiny-4kv-heads-random",
    ]:
        print(f"Testing model: {model_name_or_path}")
"""
)

SUPPORTED_ARCHITECTURES = """\
<!---
Licensed under the Apache License, Version 2.0.
-->

# Supported architectures

## Training

Architectures with a custom training implementation:

| Architecture             | Task            | Tensor Parallelism | Pipeline Parallelism |
|--------------------------|-----------------|--------------------|----------------------|
| Llama, Llama 2, Llama 3  | text-generation | ✓                  | ✓                    |
| Qwen3                    | text-generation | ✓                  | ✓                    |
| Granite                  | text-generation | ✓                  | ✗                    |


## Inference

| Architecture              | Task                |
|---------------------------|---------------------|
| Mistral                   | text-generation     |
"""

LLAMA_MODELING = LICENSE + '"""A hand-written model package (stub): not generated by the kit."""\n'

FILES = {
    "pyproject.toml": PYPROJECT,
    "optimum/neuron/models/training/auto_models.py": AUTO_MODELS,
    "optimum/neuron/models/training/__init__.py": TRAINING_INIT,
    "optimum/neuron/models/training/llama/modeling_llama.py": LLAMA_MODELING,
    "optimum/neuron/models/training/qwen3/__init__.py": "",
    "optimum/neuron/models/training/qwen3/modeling_qwen3.py": LLAMA_MODELING.replace("llama", "qwen3"),
    "tests/training/test_custom_modeling.py": CUSTOM_MODELING_TEST,
    "tests/training/test_overfit.py": OVERFIT_TEST,
    "tests/training/test_modeling_auto.py": MODELING_AUTO_TEST,
    "docs/source/supported_architectures.mdx": SUPPORTED_ARCHITECTURES,
}
EDITED = (
    "optimum/neuron/models/training/auto_models.py",
    "optimum/neuron/models/training/__init__.py",
    "tests/training/test_custom_modeling.py",
    "tests/training/test_overfit.py",
    "tests/training/test_modeling_auto.py",
    "docs/source/supported_architectures.mdx",
)


def build(root: Path) -> Path:
    """Write the miniature checkout under `root` and return `root`."""
    for relative, text in FILES.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under `root` (relative path -> bytes), caches aside."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts and ".ruff_cache" not in p.parts
    }
