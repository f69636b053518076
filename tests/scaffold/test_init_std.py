"""The std of the parallel layers' init comes from the config field the source's `_init_weights` reads.

Oracle: transformers' own configs and init code — OPT's `_init_weights` draws from `config.init_std` (its
config has no `initializer_range`), llama's from `config.initializer_range`.
"""

from __future__ import annotations

from transformers import LlamaConfig, OPTConfig

from .conftest import blueprint_of


def test_opt_draws_its_weights_from_init_std():
    assert not hasattr(OPTConfig(), "initializer_range") and OPTConfig().init_std == 0.02
    assert blueprint_of("opt").init_std == "init_std"


def test_llama_draws_its_weights_from_initializer_range():
    assert LlamaConfig().initializer_range == 0.02
    assert blueprint_of("llama").init_std == "initializer_range"
