"""The kit fails the distributed q/k norms (NXS026) and the activation gradients (NXS025) when they are broken.

Copies of generated packages with one edit each; the oracle of every verdict is transformers on the same
catalogue checkpoint, inside the checks:

(a) olmo2's full-width norm without the all-reduce of its statistics (each rank normalises by its own
    columns' mean square) fails parity at TP=2: the forward departs at the attention;
(b) olmo2's key norm without the sum of its replicated entries' gradients over the kv-shared group fails the
    replicas check on the GQA layer (the K/V heads replicated, m = 2), naming the key norms;
(c) apertus' xIELU without the sum of its parameters' gradients over TP fails the replicas check, naming
    alpha_p and alpha_n, as partial gradients of a column-sharded activation.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from conformance.checks import RunSettings
from conformance.checks.parity import CHECK as PARITY
from conformance.checks.parity import ParityConfig
from conformance.checks.replicas import CHECK as REPLICAS
from conformance.checks.replicas import ReplicasConfig
from conformance.results import Status

STATISTICS_NOT_REDUCED = (
    "    total = reduce_from_tensor_model_parallel_region(copy_to_tensor_model_parallel_region(local))\n",
    "    total = local * get_tensor_model_parallel_size()\n",
)
KV_REPLICAS_NOT_SUMMED = (
    "        parameter.register_hook(sum_over_kv_replicas)\n",
    "        pass\n",
)
ACTIVATION_GRADIENTS_NOT_SUMMED = (
    "        for parameter in self.act_fn.parameters():\n"
    "            parameter.register_hook(reduce_from_tensor_model_parallel_region)\n",
    "",
)

Broken = Callable[[str, str, tuple[str, str]], Path]


@pytest.fixture
def settings(checkpoint_cache: Path) -> RunSettings:
    return RunSettings(cache_dir=checkpoint_cache)


@pytest.fixture
def broken(generated: Callable[[str], Path], tmp_path: Path) -> Broken:
    """`broken("olmo2", "tensor_parallel_norms.py", (old, new))`: a copy of the generated package with one
    file edited; `old` must occur exactly once."""

    def copy(model_type: str, file: str, replacement: tuple[str, str]) -> Path:
        target = tmp_path / "broken" / model_type
        shutil.copytree(generated(model_type), target)
        edited = target / file
        text = edited.read_text()
        old, new = replacement
        assert text.count(old) == 1, f"{old!r} occurs {text.count(old)} times in {file}"
        edited.write_text(text.replace(old, new))
        return target

    return copy


def test_a_full_width_norm_without_the_statistics_all_reduce_fails_parity(
    broken: Broken, settings: RunSettings
) -> None:
    package = broken("olmo2", "tensor_parallel_norms.py", STATISTICS_NOT_REDUCED)
    (result,) = PARITY.run(package, [ParityConfig("olmo2/gqa", 2)], settings)
    assert result.status is Status.FAIL
    assert result.figures["first_divergent_module"] == "model.layers.0.self_attn"


def test_a_key_norm_without_the_kv_group_gradient_sum_fails_replicas(
    broken: Broken, settings: RunSettings
) -> None:
    package = broken("olmo2", "tensor_parallel_norms.py", KV_REPLICAS_NOT_SUMMED)
    (result,) = REPLICAS.run(package, [ReplicasConfig("olmo2/mqa", 2)], settings)
    assert result.status is Status.FAIL
    drifting = {name for name, spread in result.figures["kv_replica_spread"].items() if spread}
    assert drifting == {f"model.layers.{i}.self_attn.k_norm.weight" for i in range(2)}
    assert any("kv-shared group is missing" in reason for reason in result.reasons)


def test_an_activation_without_its_gradient_sum_fails_replicas(broken: Broken, settings: RunSettings) -> None:
    package = broken("apertus", "modeling_apertus.py", ACTIVATION_GRADIENTS_NOT_SUMMED)
    (result,) = REPLICAS.run(package, [ReplicasConfig("apertus/gqa", 2)], settings)
    assert result.status is Status.FAIL
    parameters = {f"model.layers.{i}.mlp.act_fn.{name}" for i in range(2) for name in ("alpha_p", "alpha_n")}
    assert set(result.figures["first_gradient_step_differing"]) == parameters
