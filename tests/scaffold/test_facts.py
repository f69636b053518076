"""Transformers facts (`scaffold.facts`) against the live transformers, and their cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import LlamaConfig, Qwen3Config
from transformers.activations import ACT2FN

from scaffold.facts import ModelFacts, OpaqueValue, collect
from scaffold.facts_cache import _load

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("model_type", "config_class"), [("llama", LlamaConfig), ("qwen3", Qwen3Config)])
def test_default_config_matches_a_real_default_instance(model_type, config_class):
    facts = collect(model_type)
    real = config_class()
    defaults = facts.config.defaults()
    assert facts.config.class_name == config_class.__name__
    assert dict(facts.config.tp_plan) == config_class.base_model_tp_plan
    for name, _ in facts.config.values:
        assert getattr(defaults, name) == getattr(real, name), name
    for name, text in facts.config.opaque:
        assert isinstance(getattr(defaults, name), OpaqueValue) and repr(getattr(defaults, name)) == text
        assert repr(getattr(real, name)) == text
    assert "head_dim" in facts.config.init_parameters
    assert callable(defaults.to_dict) and not hasattr(defaults, "no_such_attribute")


def test_json_round_trip_is_exact():
    facts = collect("llama")
    again = ModelFacts.from_json(facts.to_json())
    assert again == facts
    assert again.to_json() == facts.to_json()


def test_learnable_activations_are_those_with_parameters():
    table = dict(collect("llama").learnable_activations)
    assert "silu" not in table and "gelu" not in table
    for name, class_name in table.items():
        activation = ACT2FN[name]
        assert type(activation).__name__ == class_name
        assert any(True for _ in activation.parameters())


def test_stale_cache_entry_is_ignored(tmp_path: Path):
    path = tmp_path / "llama.json"
    path.write_text(collect("llama").to_json())
    assert _load(path) == collect("llama")
    data = json.loads(path.read_text())
    data["inputs"][0][1] = "0" * 64  # a transformers file changed since the entry was written
    path.write_text(json.dumps(data))
    assert _load(path) is None
    path.write_text("{not json")
    assert _load(path) is None


def test_command_line_reads_cached_facts_without_importing_transformers(tmp_path: Path):
    script = (
        "import sys; from scaffold.source import locate; source = locate('llama'); "
        "print(source.causal_lm_class, 'transformers' in sys.modules)"
    )
    env = {**os.environ, "NXD_SCAFFOLD_CACHE": str(tmp_path), "PYTHONPATH": str(REPO)}
    runs = [
        subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True
        ).stdout
        for _ in range(2)
    ]
    assert runs == ["LlamaForCausalLM False\n"] * 2
    (entry,) = tmp_path.rglob("llama.json")
    assert ModelFacts.from_json(entry.read_text()) == collect("llama")
