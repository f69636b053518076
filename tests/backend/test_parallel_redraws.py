"""`full_weights` / `full_parameter` (templates/definitions/parallel_redraws.py, what NXS015 inserts around a
re-draw of a tensor-parallel layer in `_init_weights`) under the reference host and the released
optimum-neuron 0.4.5 host code, ranks simulated in one process.

Oracle: the source's own re-draw on the full tensor at T=1 (a plain tensor, no helper), under the same seed;
at T=2 each rank's slice is cut from it by hand with NxD's strided rule (the full tensor cut along the
partition dimension into T * stride chunks, rank r holding chunks r, r + T, ...). A seeded re-draw must give
that model at every T, bit for bit; elements the block does not write keep the rank's values.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch import nn

from conformance.backends import activate

activate("reference")

from neuronx_distributed.parallel_layers.utils import set_tensor_model_parallel_attributes  # noqa: E402

from .oracle_optimum_neuron import ORACLE_PACKAGE, load_oracle  # noqa: E402
from .transformation_trees import tensor_parallel_rank  # noqa: E402

DEFINITIONS = Path(__file__).resolve().parents[2] / "templates" / "definitions"
load_oracle()
HOSTS = {
    "reference": "conformance.backends.reference.training",
    "released": f"{ORACLE_PACKAGE}.models.training",
}
SEED = 7
OUT, IN = 8, 6


def _helpers(host_package: str) -> ModuleType:
    """The definitions imported as `<host>.redraw_template.parallel_redraws` (their `..` is the host)."""
    name = f"{host_package}.redraw_template.parallel_redraws"
    if name not in sys.modules:
        importlib.import_module(host_package)
        package = ModuleType(f"{host_package}.redraw_template")
        package.__path__ = [str(DEFINITIONS)]
        sys.modules[package.__name__] = package
    return importlib.import_module(name)


def _hand_slice(full: torch.Tensor, dim: int, stride: int, tp: int, rank: int) -> torch.Tensor:
    chunks = torch.chunk(full, tp * stride, dim=dim)
    return torch.cat([chunks[rank + k * tp] for k in range(stride)], dim=dim)


def _layer(shard: torch.Tensor, dim: int, stride: int, tp: int) -> nn.Module:
    layer = nn.Module()
    layer.weight = nn.Parameter(shard.clone())
    set_tensor_model_parallel_attributes(layer.weight, True, dim, stride, num_partitions=tp)
    layer.bias = nn.Parameter(torch.full((3,), 5.0))  # not tensor-parallel: the block sees it as it is
    return layer


def _trunc_normal(layer: nn.Module) -> None:
    """ModernBERT's `init_weight`: a truncated normal on the layer's weight."""
    nn.init.trunc_normal_(layer.weight, mean=0.0, std=0.02, a=-0.06, b=0.06)


def _draw_then_more(layer: nn.Module) -> None:
    """A re-draw followed by another draw from the same stream (the shifted stream must not differ)."""
    layer.weight.data.normal_(mean=0.0, std=0.5)
    layer.bias.data.uniform_(-1.0, 1.0)


@pytest.mark.parametrize("host", sorted(HOSTS))
@pytest.mark.parametrize(("dim", "stride"), [(0, 1), (0, 2), (1, 1)])
@pytest.mark.parametrize("redraw", [_trunc_normal, _draw_then_more])
def test_a_redraw_in_full_weights_gives_the_t1_model_at_t2(
    host: str, dim: int, stride: int, redraw: Callable[[nn.Module], None]
) -> None:
    helpers = _helpers(HOSTS[host])
    torch.manual_seed(SEED)
    expected = _layer(torch.zeros(OUT, IN), dim, 1, 1)
    del expected.weight.tensor_model_parallel  # the source's draw: a plain tensor, no helper
    redraw(expected)
    for rank in range(2):
        shape = (OUT // 2, IN) if dim == 0 else (OUT, IN // 2)
        layer = _layer(torch.zeros(shape), dim, stride, 2)
        original = layer.weight
        with tensor_parallel_rank(2, rank):
            torch.manual_seed(SEED)
            with helpers.full_weights(layer, layer):
                assert layer.weight.shape == (OUT, IN)
                redraw(layer)
        assert layer.weight is original  # the layer keeps its own parameter (optimizer, tags)
        assert torch.equal(layer.weight, _hand_slice(expected.weight.detach(), dim, stride, 2, rank))
        assert torch.equal(layer.bias, expected.bias)


@pytest.mark.parametrize("host", sorted(HOSTS))
def test_elements_the_block_leaves_alone_keep_the_ranks_values(host: str) -> None:
    helpers = _helpers(HOSTS[host])
    for rank in range(2):
        values = torch.arange(OUT // 2 * IN, dtype=torch.float32).reshape(OUT // 2, IN) + 100 * rank
        layer = _layer(values, 0, 1, 2)
        with tensor_parallel_rank(2, rank), helpers.full_weights(layer):
            layer.weight.data[5].zero_()  # a padding row: global row 5 is rank 1's local row 1
        expected = values.clone()
        if rank == 1:
            expected[1] = 0.0
        assert torch.equal(layer.weight.detach(), expected)


@pytest.mark.parametrize("host", sorted(HOSTS))
def test_full_parameter_draws_the_full_tensor_and_keeps_the_slice(host: str) -> None:
    helpers = _helpers(HOSTS[host])
    torch.manual_seed(SEED)
    expected = torch.empty(OUT, IN).normal_(std=0.3)
    for rank in range(2):
        layer = _layer(torch.zeros(OUT, IN // 2), 1, 1, 2)
        with tensor_parallel_rank(2, rank):
            torch.manual_seed(SEED)
            with helpers.full_parameter(layer.weight) as p:
                p.data.normal_(std=0.3)
        assert torch.equal(layer.weight.detach(), _hand_slice(expected, 1, 1, 2, rank))


def test_parameters_that_are_not_tensor_parallel_are_drawn_as_they_are() -> None:
    helpers = _helpers(HOSTS["reference"])
    plain = nn.Linear(IN, OUT)
    with helpers.full_parameter(plain.weight) as p:
        assert p is plain.weight
    with helpers.full_weights(plain):
        assert plain.weight.shape == (OUT, IN)
