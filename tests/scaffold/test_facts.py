"""Transformers facts (`scaffold.facts`) against the live transformers, and their cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from torch import nn
from transformers import LlamaConfig, Qwen3Config
from transformers.activations import ACT2FN

from scaffold import activation_sources
from scaffold.activation_sources import ActivationFacts, activation_facts
from scaffold.facts import ModelFacts, OpaqueValue, collect
from scaffold.facts_cache import _collect_in_subprocess, _load

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


def test_default_config_reads_attribute_map_aliases_as_a_real_instance_does():
    """GPT-J's config names its fields `n_embd`, `n_head`...: `config.hidden_size` is an alias the instance
    resolves through `attribute_map` (expressions of the analysis read the standard names)."""
    from transformers import GPTJConfig

    defaults, real = collect("gptj").config.defaults(), GPTJConfig()
    for alias in GPTJConfig.attribute_map:
        assert getattr(defaults, alias) == getattr(real, alias), alias
    assert defaults.hidden_size == real.n_embd and not hasattr(defaults, "no_such_alias")


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


def _built_learnable() -> list[tuple[str, str]]:
    """The oracle: build every ACT2FN entry and keep those holding parameters."""
    found = []
    for name in sorted(ACT2FN):
        activation = ACT2FN[name]
        if isinstance(activation, nn.Module) and list(activation.parameters()):
            found.append((name, type(activation).__name__))
    return found


def test_activations_read_from_source_equal_the_built_ones(monkeypatch):
    def no_fallback():
        raise AssertionError("the sources were not readable")

    monkeypatch.setattr(activation_sources, "_built_activation_facts", no_fallback)
    read = activation_facts.__wrapped__()  # uncached, so the fallback cannot hide behind the cache
    assert list(read.learnable) == _built_learnable()
    assert ("prelu", "PReLU") in read.learnable  # a torch.nn class: its source was read
    assert any(path.endswith("torch/nn/modules/activation.py") for path in read.sources)


def test_unreadable_sources_fall_back_to_building_the_activations(monkeypatch):
    def unreadable(self):
        raise activation_sources._Unreadable("layout changed")

    monkeypatch.setattr(activation_sources._ActivationSources, "read", unreadable)
    built = activation_facts.__wrapped__()
    assert list(built.learnable) == _built_learnable()
    assert [Path(path).name for path in built.sources] == ["activations.py"]


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_source_reading_follows_bases_aliases_and_torch_classes(tmp_path: Path):
    _write(
        tmp_path / "torch/nn/modules/module.py",
        "class Module:\n    def _apply(self):\n        self.p = Parameter(self.p)\n",
    )
    _write(
        tmp_path / "torch/nn/modules/activation.py",
        "from .module import Module\n"
        "class Plain(Module):\n    pass\n"
        "class Weighted(Module):\n"
        "    def __init__(self):\n        self.weight = Parameter(torch.empty(1))\n"
        "class WeightedChild(Weighted):\n    pass\n",
    )
    _write(
        tmp_path / "transformers/activations.py",
        "from torch import nn\n"
        "class Base(nn.Module):\n"
        "    def __init__(self):\n        self.alpha = nn.Parameter(torch.zeros(1))\n"
        "class Derived(Base):\n    pass\n"
        "class Fixed(nn.Module):\n    pass\n"
        "Alias = Derived\n"
        "ACT2CLS = {'derived': (Alias, {'x': 1}), 'fixed': Fixed, 'plain': nn.Plain,\n"
        "           'child': nn.WeightedChild, 'module': nn.Module}\n",
    )
    read = activation_sources._ActivationSources(tmp_path / "transformers", tmp_path / "torch").read()
    assert read == ActivationFacts(
        learnable=(("child", "WeightedChild"), ("derived", "Derived")),
        sources=(
            str(tmp_path / "torch/nn/modules/activation.py"),
            str(tmp_path / "transformers/activations.py"),
        ),
    )
    _write(tmp_path / "transformers/activations.py", "ACT2CLS = {'x': elsewhere.Thing}\n")
    activation_sources._parsed.cache_clear()
    with pytest.raises(activation_sources._Unreadable):
        activation_sources._ActivationSources(tmp_path / "transformers", tmp_path / "torch").read()


def test_facts_subprocess_imports_no_torch(monkeypatch, tmp_path: Path):
    # a sitecustomize on the child's path writes the modules it holds when it exits
    listing = tmp_path / "modules.txt"
    _write(
        tmp_path / "site" / "sitecustomize.py",
        "import atexit, os, sys\n"
        "atexit.register(lambda: open(os.environ['FACTS_TEST_MODULES'], 'w').write('\\n'.join(sys.modules)))\n",
    )
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "site"))
    monkeypatch.setenv("FACTS_TEST_MODULES", str(listing))
    assert _collect_in_subprocess("llama") == collect("llama")
    modules = set(listing.read_text().splitlines())
    assert {
        "transformers.models.auto.modeling_auto",
        "transformers.models.llama.configuration_llama",
    } <= modules
    assert not {name for name in modules if name == "torch" or name.startswith("torch.")}
