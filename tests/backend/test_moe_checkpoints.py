"""Expert-parallel checkpoints on ranks: the expert-weight specs on NxD's real MoE layer, and a tiny MoE model
from a transformers checkpoint through `from_pretrained` -> `save_pretrained` -> consolidation, bit for bit.

Both tests use four ranks. The first runs its cases in one launcher call, re-initialising the mesh per
(TP, EP); in each, every rank builds the MoE block with the specs attached under the reference host and
under the released optimum-neuron 0.4.5 host code, loads a transformers block's checkpoint through each
host's `adapt_state_dict` into the real layer (strict), and returns what it loaded: the oracle is
`moe_dense.nxd_expert_shards` on the weights read off the transformers block. The round trip runs the
tiny model package (`tiny_moe/` plus the spec template) at (TP, EP) = (2, 1), (1, 2) and (2, 2).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import MixtralConfig, MixtralForCausalLM

from conformance.backends import activate
from conformance.tensor_parallel_run import run_tensor_parallel

from .moe_dense import nxd_expert_shards
from .moe_weight_fixtures import (
    REFERENCE_HOST,
    Source,
    dense_weights,
    expert_state_dict,
    load_spec_template,
    spec_arguments,
    tiny_moe_package,
    transformers_block,
)
from .test_checkpoint_roundtrip import _rewrite_as_xser

PREFIX = "model.layers.0.block_sparse_moe."
SOURCES = {
    "mixtral": Source("mixtral", experts=4, hidden=4, intermediate=4),
    "qwen3_moe": Source("qwen3_moe", experts=4, hidden=4, intermediate=2),
    "qwen2_moe": Source("qwen2_moe", experts=2, hidden=4, intermediate=2),
    "llama4": Source("llama4", experts=4, hidden=4, intermediate=2),
    "granitemoe": Source("granitemoe", experts=4, hidden=4, intermediate=2),
}
LAYER_CASES = [
    ("mixtral", 1, 1),
    ("mixtral", 2, 1),
    ("mixtral", 1, 2),
    ("mixtral", 2, 2),
    ("qwen3_moe", 2, 2),
    ("qwen2_moe", 2, 2),
    ("llama4", 2, 2),
    ("granitemoe", 2, 2),
]


def _moe_root(host, template, source: Source):
    """`model.layers.0.block_sparse_moe`: NxD's MoE (shared experts for Qwen2-MoE) with the specs attached."""
    from neuronx_distributed.modules.moe import ExpertMLPs, MoE, RouterTopK
    from neuronx_distributed.modules.moe.shared_experts import SharedExperts
    from torch import nn

    class SparseMoeBlock(MoE, host.CustomModule):
        pass

    E, H, inter = source.experts, source.hidden, source.intermediate
    router = RouterTopK(
        num_experts=E,
        top_k=2,
        hidden_size=H,
        act_fn="softmax",
        sequence_parallel_enabled=False,
        sequence_dimension=1,
        dtype=torch.float32,
        device=torch.device("cpu"),
    )
    experts = ExpertMLPs(E, 2, H, inter, "silu", glu_mlp=True, capacity_factor=None)
    router_name = "router.layer.weight" if source.kind == "granitemoe" else "gate.weight"
    renamed = {"router.linear_router.weight": router_name}
    shared = None
    if source.kind == "qwen2_moe":
        shared = SharedExperts(
            H, 2 * inter, num_shared_experts=1, hidden_act="silu", fused_gate_up_projection=False
        )
        renamed |= {
            f"shared_experts.{n}.weight": f"shared_expert.{n}.weight"
            for n in ("gate_proj", "up_proj", "down_proj")
        }
    block = SparseMoeBlock(router, experts, shared_experts=shared, sequence_dimension=1)
    block.specs = host.ModelWeightTransformationSpecs(
        specs=[template.RenamedParametersSpec(renamed), template.ExpertMLPsSpec(**spec_arguments(source))]
    )
    root = nn.Module()
    root.model = nn.Module()
    root.model.layers = nn.ModuleList([nn.Module()])
    root.model.layers[0].block_sparse_moe = block
    root.parameters_for_current_stage = set(root.state_dict())
    host.specialize_transformation_specs_for_model(root)
    return root


def _load_layer_cases(checkpoints: dict[str, dict[str, torch.Tensor]]) -> list[dict]:
    """On a rank: every case of LAYER_CASES under both hosts; what each rank loaded, and its ranks."""
    from neuronx_distributed.parallel_layers import parallel_state as ps

    from .oracle_optimum_neuron import ORACLE_PACKAGE, load_oracle

    hosts = {
        "reference": (
            activate("reference").host_module("transformations_utils"),
            load_spec_template(REFERENCE_HOST),
        ),
        "released": (load_oracle(), load_spec_template(f"{ORACLE_PACKAGE}.models.training")),
    }
    results = []
    for kind, tp, ep in LAYER_CASES:
        ps.destroy_model_parallel()
        ps.initialize_model_parallel(tensor_model_parallel_size=tp, expert_model_parallel_size=ep)
        loaded, roots = {}, {}
        for name, (host, template) in hosts.items():
            roots[name] = _moe_root(host, template, SOURCES[kind])
            loaded[name] = host.adapt_state_dict(roots[name], dict(checkpoints[kind]), {}, inplace=True)
            roots[name].load_state_dict(loaded[name], strict=True)
        metadata = hosts["reference"][0].create_parameter_metadata(roots["reference"])["parameters"]
        ranks = (ps.get_expert_model_parallel_rank(), ps.get_tensor_model_parallel_rank())
        results.append(
            {
                "loaded": loaded,
                "ranks": ranks,
                "expert_marks": sorted(n for n, m in metadata.items() if m.get("expert_model_parallel")),
            }
        )
    return results


def test_the_real_moe_layer_loads_nxd_layouts_under_both_hosts() -> None:
    blocks = {kind: transformers_block(source, seed=7) for kind, source in SOURCES.items()}
    checkpoints = {kind: expert_state_dict(SOURCES[kind], blocks[kind], PREFIX) for kind in SOURCES}
    for kind in ("llama4",):  # the packed experts module has no router: the dense weights' stands in
        checkpoints[kind][f"{PREFIX}gate.weight"] = dense_weights(SOURCES[kind], blocks[kind]).router
    per_rank = run_tensor_parallel(_load_layer_cases, 1, checkpoints, world_size=4)
    for index, (kind, tp, ep) in enumerate(LAYER_CASES):
        w = dense_weights(SOURCES[kind], blocks[kind])
        for rank in per_rank:
            case = rank[index]
            ep_rank, tp_rank = case["ranks"]
            expected = nxd_expert_shards(w, tp_rank, tp, ep_rank, ep)
            if kind != "qwen2_moe":
                expected = {n: t for n, t in expected.items() if not n.startswith("shared_experts.")}
            else:
                del expected["shared_experts.gate_up_proj.weight"]  # NxD's unfused shared experts
            for host in ("reference", "released"):
                got = case["loaded"][host]
                assert set(got) == {PREFIX + n for n in expected}, (kind, tp, ep, host)
                for name, tensor in expected.items():
                    assert torch.equal(got[PREFIX + name], tensor), (kind, tp, ep, host, name)
            marks = [f"{PREFIX}expert_mlps.mlp_op.{n}.weight" for n in ("down_proj", "gate_up_proj")]
            assert case["expert_marks"] == (marks if ep > 1 else []), (kind, tp, ep)


# --- the tiny model's round trip -----------------------------------------------------------------------

TINY = MixtralConfig(
    vocab_size=8,
    hidden_size=4,
    intermediate_size=4,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=2,
    num_local_experts=4,
    num_experts_per_tok=2,
)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(model package folder, transformers checkpoint folder): Mixtral's weights without attention."""
    root = tmp_path_factory.mktemp("tiny_moe")
    package = tiny_moe_package(root)
    activate("reference").load_model_package(package)  # registers the spec classes for consolidation
    torch.manual_seed(0)
    full = MixtralForCausalLM(TINY).state_dict()
    kept = {n: t.contiguous() for n, t in full.items() if "self_attn" not in n and "input_layernorm" not in n}
    checkpoint = root / "checkpoint"
    TINY.save_pretrained(checkpoint)
    save_file(kept, checkpoint / "model.safetensors", metadata={"format": "pt"})
    return package, checkpoint


def _load_and_save(package_dir: str, checkpoint: str, saved: str) -> dict:
    """On a rank: from_pretrained at the mesh's (TP, EP), then save_pretrained."""
    from neuronx_distributed.parallel_layers import parallel_state as ps

    backend = activate("reference")
    package = backend.load_model_package(Path(package_dir))
    trn_config = backend.host_module("config").TrainingNeuronConfig(
        tensor_parallel_size=ps.get_tensor_model_parallel_size()
    )
    model, info = package.TinyMoeForCausalLM.from_pretrained(checkpoint, trn_config, output_loading_info=True)
    model.save_pretrained(saved)
    experts = model.model.layers[0].block_sparse_moe.expert_mlps.mlp_op.gate_up_proj.weight
    return {
        "keys": info["missing_keys"] + info["unexpected_keys"],
        "data_parallel_size": trn_config.data_parallel_size,
        "local_experts": experts.shape[0],
    }


def _shard_names(tp: int, ep: int) -> list[str]:
    if ep == 1:
        return [f"dp_rank_00_tp_rank_{t:02d}_pp_rank_00.pt" for t in range(tp)]
    return [f"dp_rank_00_ep_rank_{e:02d}_tp_rank_{t:02d}_pp_rank_00.pt" for e in range(ep) for t in range(tp)]


@pytest.mark.parametrize(("tp", "ep"), [(2, 1), (1, 2), (2, 2)])
def test_tiny_moe_round_trip_is_bit_exact(tp: int, ep: int, tiny_checkpoint, tmp_path: Path) -> None:
    package, checkpoint = tiny_checkpoint
    saved = tmp_path / "saved"
    results = run_tensor_parallel(
        _load_and_save, tp, str(package), str(checkpoint), str(saved), ep_size=ep, world_size=4
    )
    assert all(not r["keys"] for r in results), results[0]["keys"]
    assert {(r["data_parallel_size"], r["local_experts"]) for r in results} == {(4 // tp, 4 // ep)}
    shards = saved / "shards"
    assert sorted(p.name for p in (shards / "model").iterdir()) == _shard_names(tp, ep)
    metadata = json.loads((shards / "mp_metadata_pp_rank_0.json").read_text())["parameters"]
    marked = {n for n, m in metadata.items() if m.get("expert_model_parallel")}
    assert marked == ({n for n in metadata if ".expert_mlps." in n} if ep > 1 else set())

    from conformance.backends.reference.training.checkpointing import (
        consolidate_model_parallel_checkpoints,
        consolidate_model_parallel_checkpoints_to_unified_checkpoint,
    )

    original = load_file(checkpoint / "model.safetensors")
    out = tmp_path / "consolidated"
    consolidate_model_parallel_checkpoints_to_unified_checkpoint(saved, out)
    consolidated = load_file(out / "model.safetensors")
    assert set(consolidated) == set(original)
    for name, tensor in original.items():
        assert torch.equal(consolidated[name], tensor), name

    if ep > 1:  # NxD's xser layout: only EP rank 0 writes the tensors of non-expert parameters
        xser_shards = tmp_path / "xser"
        shutil.copytree(shards, xser_shards)
        with pytest.MonkeyPatch.context() as patch:
            _rewrite_as_xser(xser_shards / "model", patch)
        order = list(torch.load(sorted((shards / "model").iterdir())[0], weights_only=True))
        for folder in (xser_shards / "model").glob("*ep_rank_01*.tensors"):
            for tid, name in enumerate(order):
                if ".expert_mlps." not in name:
                    (folder / f"tensor_{tid}.pt").unlink()
        from_xser = consolidate_model_parallel_checkpoints(xser_shards)
        assert set(from_xser) == set(original)
        assert all(torch.equal(from_xser[n], t) for n, t in original.items())
