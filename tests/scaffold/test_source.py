"""Locating a model's modeling file and classes from its model type."""

from __future__ import annotations

from pathlib import Path

import pytest
import transformers
from transformers import LlamaConfig, Qwen3Config

from scaffold.errors import ScaffoldError
from scaffold.source import locate


def test_llama_resolves_to_the_installed_modeling_file():
    source = locate("llama")
    expected = Path(transformers.__file__).parent / "models" / "llama" / "modeling_llama.py"
    assert source.modeling_file == expected
    assert source.display_path == "transformers/models/llama/modeling_llama.py"
    assert (source.base_model_class, source.causal_lm_class) == ("LlamaModel", "LlamaForCausalLM")
    assert source.config_class is LlamaConfig
    assert source.package == "transformers.models.llama"
    assert source.transformers_version == transformers.__version__


def test_alias_type_uses_the_module_that_defines_its_class():
    # code_llama has no modeling file of its own: its causal LM is LlamaForCausalLM.
    assert locate("code_llama").modeling_file == locate("llama").modeling_file


def test_qwen3_config_class():
    assert locate("qwen3").config_class is Qwen3Config


def test_unknown_type_lists_close_matches():
    with pytest.raises(ScaffoldError) as caught:
        locate("lamma")
    assert "unknown model type 'lamma'" in caught.value.message
    assert caught.value.hint is not None and "llama" in caught.value.hint.split("did you mean ")[1]


def test_type_without_causal_lm_is_refused():
    with pytest.raises(ScaffoldError, match="no causal-LM class"):
        locate("vit")


def test_source_override(tmp_path: Path):
    copy = tmp_path / "modeling_copy.py"
    copy.write_text(locate("llama").modeling_file.read_text())
    source = locate("llama", copy)
    assert source.modeling_file == copy.resolve()
    assert source.display_path == str(copy)
    assert source.package == "transformers.models.llama"  # relative imports resolve as if installed


def test_missing_source_file(tmp_path: Path):
    with pytest.raises(ScaffoldError, match="no such file"):
        locate("llama", tmp_path / "absent.py")
