"""A block that routes with a function of its own (PhiMoE's `sparsemixer`), as NXS040 generates it on NxD's
`MoE`, against transformers' block with the same weights: outputs, router logits and gradients, at TP 1 and
2, with and without sequence parallelism, in training and evaluation (forward only with SP: NxD's evaluation
path under SP is an inference one).

The oracle is transformers' `PhimoeSparseMoeBlock` itself. Its routing is random in training wherever the
jitter leaves two experts within `2 * router_jitter_noise` of each other (Gumbel sampling): there both
blocks draw from the same seed over the same batch-major tokens (SP off), so they sample alike; with SP
the generated block routes the sequence-first tokens, so the jitter is off (the top-2 by logits, as the
conformance catalogue runs it). In evaluation `sparsemixer` is deterministic at any jitter.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch
from transformers import PhimoeConfig
from transformers.models.phimoe.modeling_phimoe import PhimoeSparseMoeBlock

from conformance.backends import activate
from conformance.tensor_parallel_run import run_tensor_parallel
from scaffold.emit import Request, emit_model
from scaffold.package import render_package

from .moe_dense import DenseWeights, nxd_expert_shards

BATCH, SEQUENCE = 2, 8
ATOL = 1e-5


def _config(jitter: float) -> PhimoeConfig:
    return PhimoeConfig(
        hidden_size=16,
        intermediate_size=8,
        num_local_experts=4,
        num_experts_per_tok=2,
        router_jitter_noise=jitter,
        input_jitter_noise=0.0,
        hidden_act="silu",
        dtype=torch.float32,
    )


@pytest.fixture(scope="module")
def phimoe_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The generated phimoe package (its attention's refusals are another pass's: the block is complete)."""
    folder = tmp_path_factory.mktemp("generated") / "phimoe"
    folder.mkdir()
    for name, content in render_package(emit_model(Request("phimoe", allow_unsupported=True))).files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(content)
    return folder


def _compare(package_dir: str, sequence_parallel: bool, training: bool, jitter: float) -> dict[str, float]:
    """On a rank: both blocks on the same tokens; the largest differences of what they compute."""
    import torch.distributed as dist
    from neuronx_distributed.parallel_layers import parallel_state as ps

    backend = activate("reference")
    package = backend.load_model_package(Path(package_dir))
    modeling = importlib.import_module(f"{package.__name__}.modeling_phimoe")
    tp, rank = ps.get_tensor_model_parallel_size(), ps.get_tensor_model_parallel_rank()
    config = _config(jitter)
    torch.manual_seed(0)
    theirs = PhimoeSparseMoeBlock(config)
    trn_config = backend.host_module("config").TrainingNeuronConfig(
        tensor_parallel_size=tp, sequence_parallel_enabled=sequence_parallel
    )
    ours = modeling.PhimoeSparseMoeBlock(config, trn_config)
    weights = DenseWeights(
        router=theirs.gate.weight,
        gate=torch.stack([expert.w1.weight for expert in theirs.experts]),
        up=torch.stack([expert.w3.weight for expert in theirs.experts]),
        down=torch.stack([expert.w2.weight for expert in theirs.experts]),
    )
    with torch.no_grad():
        for name, tensor in nxd_expert_shards(weights, rank, tp, 0, 1).items():
            ours.get_parameter(name).copy_(tensor)
    theirs.train(training)
    ours.train(training)

    generator = torch.Generator().manual_seed(1)
    tokens = torch.randn(BATCH, SEQUENCE, 16, generator=generator)
    probe = torch.randn(BATCH, SEQUENCE, 16, generator=generator)
    reference_input = tokens.clone().requires_grad_(True)
    torch.manual_seed(2)
    reference, reference_logits = theirs(reference_input)
    (reference * probe).sum().backward()

    if sequence_parallel:  # (S / T, B, H): this rank's part of the sequence-first tokens
        ours_input = tokens.transpose(0, 1).chunk(tp, dim=0)[rank].clone().requires_grad_(True)
        ours_probe = probe.transpose(0, 1).chunk(tp, dim=0)[rank]
        expected = reference.detach().transpose(0, 1).chunk(tp, dim=0)[rank]
        expected_input_grad = reference_input.grad.transpose(0, 1).chunk(tp, dim=0)[rank]
    else:
        ours_input = tokens.clone().requires_grad_(True)
        ours_probe, expected, expected_input_grad = probe, reference.detach(), reference_input.grad
    torch.manual_seed(2)
    output, logits = ours(ours_input)
    (output * ours_probe).sum().backward()

    router_grad = ours.router.linear_router.weight.grad
    if sequence_parallel and training:  # the gathered logits' backward splits: each rank holds a part
        dist.all_reduce(router_grad, group=ps.get_tensor_model_parallel_group())
    experts = nxd_expert_shards(
        DenseWeights(
            router=theirs.gate.weight.grad,
            gate=torch.stack([expert.w1.weight.grad for expert in theirs.experts]),
            up=torch.stack([expert.w3.weight.grad for expert in theirs.experts]),
            down=torch.stack([expert.w2.weight.grad for expert in theirs.experts]),
        ),
        rank,
        tp,
        0,
        1,
    )
    found = {
        "output": float((output - expected).abs().max()),
        "router_logits": float((logits - reference_logits.detach()).abs().max()),
    }
    if sequence_parallel and not training:
        # NxD's MoE keeps the router on the shard out of training and gathers the chosen affinities: an
        # inference path whose backward (a split of the gather) no training run takes.
        return found
    return {
        **found,
        "input_grad": float((ours_input.grad - expected_input_grad).abs().max()),
        "router_grad": float((router_grad - theirs.gate.weight.grad).abs().max()),
        "router_grad_size": float(theirs.gate.weight.grad.abs().max()),
        **{
            name: float((ours.get_parameter(name).grad - expected).abs().max())
            for name, expected in experts.items()
            if name.startswith("expert_mlps")
        },
    }


@pytest.mark.parametrize(
    ("tp", "sequence_parallel", "training", "jitter"),
    [
        (1, False, True, 0.01),  # Gumbel sampling, same seed and token order
        (2, False, True, 0.01),
        (2, True, True, 0.0),
        (2, True, False, 0.01),  # evaluation: the threshold keeps near-max experts, softmax over them
        (1, False, False, 0.5),
    ],
)
def test_generated_function_router_matches_transformers(
    phimoe_package: Path, tp: int, sequence_parallel: bool, training: bool, jitter: float
) -> None:
    results = run_tensor_parallel(
        _compare, tp, str(phimoe_package), sequence_parallel, training, jitter, world_size=tp
    )
    for found in results:
        sizes = {name: value for name, value in found.items() if name.endswith("_size")}
        differences = {name: value for name, value in found.items() if name not in sizes}
        assert max(differences.values()) < ATOL, found
    if not sequence_parallel and (not training or jitter):  # the weights' backward reaches the router
        assert results[0]["router_grad_size"] > 1e-3
