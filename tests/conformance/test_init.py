"""The init check: the generated llama built from its config initialises every parameter as transformers'
`_init_weights` does; a hard-coded std fails naming the parameters and both statistics. The statistics'
bounds are tested on draws from known laws (the oracle: torch's own samplers, with known std and shape).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig

from conformance.checks import RunSettings
from conformance.checks.init import CHECK, InitConfig
from conformance.comparisons.init_statistics import ONES, RANDOM, ZEROS, compare_statistics, statistics
from conformance.results import Status

DEFAULT_RANGE = LlamaConfig().initializer_range


def _stds(reason: str, name: str) -> tuple[float, float]:
    """The model's and transformers' std a reason names."""
    found = re.match(
        rf"{re.escape(name)}: std (\S+) in the model's init, (\S+) in transformers' _init_weights", reason
    )
    assert found, reason
    return float(found.group(1)), float(found.group(2))


def _normal(std: float, seed: int, shape: tuple[int, ...] = (16, 64), draws: int = 4) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator) * std for _ in range(draws)]


def _uniform_with_std(std: float, seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    half_width = std * 3**0.5  # U(-a, a) has std a / sqrt(3)
    return [(torch.rand((16, 64), generator=generator) * 2 - 1) * half_width for _ in range(4)]


def test_statistics_name_the_kind_of_each_init() -> None:
    assert statistics([torch.zeros(8)]).kind == ZEROS
    assert statistics([torch.ones(8), torch.ones(8)]).kind == ONES
    random = statistics(_normal(0.02, seed=0))
    assert random.kind == RANDOM and random.count == 4 * 16 * 64
    assert random.std == pytest.approx(0.02, rel=0.05) and random.kurtosis == pytest.approx(3.0, abs=0.3)
    padded = [draw.index_fill(0, torch.tensor([5]), 0.0) for draw in _normal(0.02, seed=1)]
    assert statistics(padded).zero_rows == (5,)


def test_two_draws_of_the_same_law_agree() -> None:
    # Twenty independent pairs: a bound of six standard errors must never fire on the same law.
    for seed in range(20):
        model, reference = statistics(_normal(0.03, seed)), statistics(_normal(0.03, 100 + seed))
        assert compare_statistics("w", model, reference, {"initializer_range": 0.03}) == []


def test_another_law_fails_naming_the_parameter_and_both_statistics() -> None:
    reference = statistics(_normal(0.03, seed=7))
    (std,) = compare_statistics(
        "w", statistics(_normal(0.02, seed=8)), reference, {"initializer_range": 0.03}
    )
    mine, theirs = _stds(std, "w")
    assert mine == pytest.approx(0.02, rel=0.05) and theirs == pytest.approx(0.03, rel=0.05)
    assert "(config.initializer_range = 0.03)" in std
    uniform = compare_statistics("w", statistics(_uniform_with_std(0.03, seed=9)), reference, {})
    (shape,) = [reason for reason in uniform if "kurtosis" in reason]
    assert shape.startswith("w: kurtosis 1.") and "another distribution" in shape  # a uniform has 1.8
    (kind,) = compare_statistics("w", statistics([torch.zeros(16, 64)]), reference, {})
    assert kind.startswith("w: transformers' _init_weights makes it random (mean") and kind.endswith(
        "all zeros"
    )
    padded = [draw.index_fill(0, torch.tensor([3]), 0.0) for draw in _normal(0.03, seed=10)]
    (rows,) = compare_statistics(
        "e", statistics(_normal(0.03, seed=11)), statistics(padded), {"pad_token_id": 3}
    )
    assert rows == (
        "e: rows [3] are zero in transformers' init and rows none in the model's "
        "(config.pad_token_id = 3: the padding row)"
    )


def test_generated_llama_initialises_like_transformers(
    generated: Callable[[str], Path], checkpoint_cache: Path
) -> None:
    (result,) = CHECK.run(
        generated("llama"), [InitConfig("llama/gqa", 2)], RunSettings(cache_dir=checkpoint_cache)
    )
    assert result.status is Status.PASS, result.reasons
    figures = result.figures
    assert figures["parameters_compared"] == 21 and figures["parameters_differing"] == 0
    assert not figures["only_in_model"] and not figures["only_in_transformers"]
    assert figures["statistics"]["model.norm.weight"] == {"model": "all ones", "transformers": "all ones"}


def test_a_hard_coded_std_fails_naming_the_parameters(
    broken_copy: Callable[[str, list[tuple[str, str]]], Path],
    catalogue_variant: Callable[..., str],
    checkpoint_cache: Path,
) -> None:
    # The init method draws with transformers' default initializer_range instead of the config's.
    package = broken_copy(
        "llama",
        [
            (
                "init.normal_(tensor, mean=0.0, std=std)",
                f"init.normal_(tensor, mean=0.0, std={DEFAULT_RANGE!r})",
            )
        ],
    )
    key = catalogue_variant("llama/gqa", initializer_range=2.5 * DEFAULT_RANGE)
    (result,) = CHECK.run(package, [InitConfig(key, 1)], RunSettings(cache_dir=checkpoint_cache))
    assert result.status is Status.FAIL
    matrices = {name for name in result.figures["statistics"] if not name.endswith("norm.weight")}
    assert set(result.figures["differing"]) == matrices  # every weight the init method draws, no norm
    (reason,) = [r for r in result.reasons if r.startswith("model.layers.0.mlp.down_proj.weight: std ")]
    mine, theirs = _stds(reason, "model.layers.0.mlp.down_proj.weight")
    assert mine == pytest.approx(DEFAULT_RANGE, rel=0.05) and theirs == pytest.approx(
        2.5 * DEFAULT_RANGE, rel=0.05
    )
    assert f"(config.initializer_range = {2.5 * DEFAULT_RANGE:g})" in reason
    assert "in transformers' _init_weights" in reason


def test_parallel_linear_biases_start_at_zero_like_transformers_linear_biases(
    generated: Callable[[str], Path],
    broken_copy: Callable[[str, list[tuple[str, str]]], Path],
    checkpoint_cache: Path,
) -> None:
    # llama/features has attention and MLP biases; NxD's parallel linears draw them uniformly unless the
    # generated `_init_weights` zeroes them (NXS006). Without that branch, every bias fails, named.
    settings = RunSettings(cache_dir=checkpoint_cache)
    zeroing = "                    parameter.data.zero_()\n"
    package = broken_copy("llama", [(zeroing, "                    pass\n")])
    (good,) = CHECK.run(generated("llama"), [InitConfig("llama/features", 2)], settings)
    (bad,) = CHECK.run(package, [InitConfig("llama/features", 2)], settings)
    assert good.status is Status.PASS, good.reasons
    biases = {name for name in good.figures["statistics"] if name.endswith(".bias")}
    assert {name.split(".")[-2] for name in biases} == {"q_proj", "k_proj", "v_proj", "o_proj"} | {
        "gate_proj",
        "up_proj",
        "down_proj",
    }
    assert all(good.figures["statistics"][name] == {"model": ZEROS, "transformers": ZEROS} for name in biases)
    assert bad.status is Status.FAIL
    assert set(bad.figures["differing"]) == biases
    (reason,) = [r for r in bad.reasons if r.startswith("model.layers.0.mlp.down_proj.bias: ")]
    assert "transformers' _init_weights makes it all zeros, the model's init random" in reason
