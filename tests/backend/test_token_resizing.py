"""`NeuronModelMixin.resize_token_embeddings` on the tiny parallel Llama at T = 1, 2, 4 against transformers.

The oracle is transformers' `LlamaForCausalLM` with the checkpoint's weights, resized by its own
`resize_token_embeddings(mean_resizing=False)` to the same size and given the new rows the host drew: the
host's consolidated embedding and lm_head must keep every old row bit for bit, and its logits and loss must
equal the oracle's. The released optimum-neuron 0.4.5 methods (taken from the installed file with `ast`)
are run too, to pin what deviations ON-15 and ON-16 say the release does.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import PreTrainedModel

from conformance.backends import activate
from conformance.tensor_parallel_run import run_tensor_parallel

from .host_fixtures import (
    assert_same_state_dict,
    load_weights,
    mount_tiny_llama,
    reference_model,
    tiny_llama_config,
    write_checkpoint,
)
from .oracle_optimum_neuron import oracle_source

OLD_VOCAB = 64
PAD_TOKEN = 40  # its rank or local index changes with the vocabulary size at T = 2, 4
CLOSE = {"rtol": 1e-5, "atol": 1e-5}
CONFIGS = {"untied": {"pad_token_id": PAD_TOKEN}, "tied": {"tie_word_embeddings": True}}
CASES = {
    # name: (config, new_num_tokens, pad_to_multiple_of, sequence parallelism at T > 1)
    "untied-grow": ("untied", 80, None, False),
    "untied-shrink": ("untied", 48, None, False),
    "tied-grow-padded": ("tied", 70, 8, True),
    "tied-shrink": ("tied", 40, None, False),
}
SAVED_CASE, SAVED_TP = "untied-grow", 2
NEW_SIZE = {"untied-grow": 80, "untied-shrink": 48, "tied-grow-padded": 72, "tied-shrink": 40}
TP_SIZES = (1, 2, 4)


def _batch(vocab: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(vocab)
    input_ids = torch.randint(0, vocab, (2, 8), generator=generator)
    input_ids[0, :4] = torch.arange(vocab - 4, vocab)  # the last rows, new ones when growing
    return {"input_ids": input_ids, "labels": torch.randint(0, vocab, (2, 8), generator=generator)}


def _gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    from neuronx_distributed.parallel_layers.mappings import gather_from_tensor_model_parallel_region

    return gather_from_tensor_model_parallel_region(tensor.detach().t().contiguous()).t()


def _resize_cases(folders: dict[str, str], tp: int, save_to: str | None) -> dict[str, Any]:
    """On a rank: load, resize (seeded), run the batch; the gathered tables, outputs and attributes.

    With `save_to`, the `SAVED_CASE` model is saved there after its resize.
    """
    from neuronx_distributed.parallel_layers import parallel_state
    from neuronx_distributed.parallel_layers.mappings import gather_from_tensor_model_parallel_region

    from conformance.backends.reference.training.config import TrainingNeuronConfig

    model_cls = mount_tiny_llama().LlamaForCausalLM
    results: dict[str, Any] = {}
    for name, (config, new_num_tokens, pad_to_multiple_of, sp) in CASES.items():
        trn_config = TrainingNeuronConfig(tensor_parallel_size=tp, sequence_parallel_enabled=sp and tp > 1)
        model = model_cls.from_pretrained(folders[config], trn_config)
        torch.manual_seed(7 + parallel_state.get_tensor_model_parallel_rank())  # rank 0's draw must win
        returned = model.resize_token_embeddings(new_num_tokens, pad_to_multiple_of=pad_to_multiple_of)
        embeddings, head = model.model.embed_tokens, model.lm_head
        out = model(**_batch(NEW_SIZE[name]))
        padding = None if embeddings.padding_idx is None else embeddings.start_index + embeddings.padding_idx
        results[name] = {
            "returned_is_embedding": returned is embeddings,
            "vocab_size": model.vocab_size,
            "config_vocab_size": model.config.vocab_size,
            "sizes": (embeddings.num_embeddings, head.output_size, head.output_size_per_partition),
            "tied": head.weight is embeddings.weight,
            "padding_idx": padding,
            "embedding": _gather_rows(embeddings.weight),
            "lm_head": _gather_rows(head.weight),
            "logits": gather_from_tensor_model_parallel_region(out.logits.detach()),
            "loss": out.loss.detach(),
        }
        if save_to is not None and name == SAVED_CASE:
            model.save_pretrained(save_to)
    model = model_cls.from_pretrained(folders["untied"], TrainingNeuronConfig(tensor_parallel_size=tp))
    errors = {}
    for label, call in {
        "indivisible": lambda: model.resize_token_embeddings(4 * tp + 1),  # any size divides by T=1
        "mean_resizing": lambda: model.resize_token_embeddings(80, mean_resizing=True),
    }.items():
        try:
            call()
            errors[label] = None
        except (ValueError, NotImplementedError) as error:
            errors[label] = type(error).__name__
    results["errors"] = errors
    results["rank"] = parallel_state.get_tensor_model_parallel_rank()
    return results


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("resizing")
    for name, overrides in CONFIGS.items():
        write_checkpoint(root / name, tiny_llama_config(**overrides), seed=1)
    return {name: str(root / name) for name in CONFIGS}


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("resized") / "saved"


@pytest.fixture(scope="module")
def resized(folders: dict[str, str], saved: Path) -> dict[int, list[dict[str, Any]]]:
    return {
        tp: run_tensor_parallel(_resize_cases, tp, folders, tp, str(saved) if tp == SAVED_TP else None)
        for tp in TP_SIZES
    }


def _transformers_resized(name: str, host: dict[str, Any]) -> Any:
    """transformers' Llama resized to the host's size, with the host's new rows copied in."""
    config, new_num_tokens, pad_to_multiple_of, _ = CASES[name]
    model = reference_model(tiny_llama_config(**CONFIGS[config]), seed=1)
    model.resize_token_embeddings(new_num_tokens, pad_to_multiple_of=pad_to_multiple_of, mean_resizing=False)
    with torch.no_grad():
        model.model.embed_tokens.weight[OLD_VOCAB:] = host["embedding"][OLD_VOCAB:]
        model.lm_head.weight[OLD_VOCAB:] = host["lm_head"][OLD_VOCAB:]
    return model


@pytest.mark.parametrize("tp", TP_SIZES)
@pytest.mark.parametrize("name", CASES)
def test_resized_model_matches_transformers(resized: dict, name: str, tp: int) -> None:
    new_size = NEW_SIZE[name]
    original = reference_model(tiny_llama_config(**CONFIGS[CASES[name][0]]), seed=1)
    oracle = _transformers_resized(name, resized[tp][0][name])
    expected = oracle(**_batch(new_size))
    kept = min(OLD_VOCAB, new_size)
    for rank, results in enumerate(resized[tp]):
        host = results[name]
        assert results["rank"] == rank
        assert host["returned_is_embedding"], name
        assert host["sizes"] == (new_size, new_size, new_size // tp), name
        assert host["vocab_size"] == new_size // tp, f"{name}: the per-rank vocab_size must stay per-rank"
        assert host["config_vocab_size"] == new_size == oracle.config.vocab_size
        assert host["tied"] == (CASES[name][0] == "tied"), name
        pad_rank = PAD_TOKEN // (new_size // tp)  # the rank holding the pad row in the new layout
        expected_padding = oracle.model.embed_tokens.padding_idx if rank == pad_rank else None
        assert host["padding_idx"] == expected_padding, name
        for table, weight in (("embedding", original.model.embed_tokens), ("lm_head", original.lm_head)):
            assert host[table].shape == (new_size, 32), (name, table)
            assert torch.equal(host[table][:kept], weight.weight.detach()[:kept]), (name, table)
        torch.testing.assert_close(host["logits"], expected.logits.detach(), **CLOSE)
        torch.testing.assert_close(host["loss"], expected.loss.detach(), **CLOSE)


@pytest.mark.parametrize("name", [n for n in CASES if NEW_SIZE[n] > OLD_VOCAB])
def test_new_rows_are_seeded_and_independent_of_the_tp_size(resized: dict, name: str) -> None:
    host = resized[1][0][name]
    for table in ("embedding", "lm_head"):
        new_rows = host[table][OLD_VOCAB:]
        assert new_rows.abs().max() > 0, (name, table)
        assert new_rows.std() < 0.1, (name, table)  # _init_weights: normal(0, initializer_range=0.02)
        for tp in TP_SIZES[1:]:
            assert torch.equal(resized[tp][0][name][table][OLD_VOCAB:], new_rows), (name, table, tp)
    assert not torch.equal(host["embedding"][OLD_VOCAB:], resized[1][0]["untied-grow"]["lm_head"][OLD_VOCAB:])


def test_resized_model_saves_and_consolidates_to_the_transformers_state_dict(
    resized: dict, saved: Path, tmp_path: Path
) -> None:
    activate("reference")
    from conformance.backends.reference.training.checkpointing import (
        consolidate_model_parallel_checkpoints_to_unified_checkpoint,
    )

    consolidate_model_parallel_checkpoints_to_unified_checkpoint(saved, tmp_path / "consolidated")
    expected = _transformers_resized(SAVED_CASE, resized[SAVED_TP][0][SAVED_CASE]).state_dict()
    assert_same_state_dict(load_weights(tmp_path / "consolidated"), dict(expected))
    assert json.loads((saved / "config.json").read_text())["vocab_size"] == NEW_SIZE[SAVED_CASE]


@pytest.mark.parametrize("tp", TP_SIZES)
def test_errors_as_the_release(resized: dict, tp: int) -> None:
    errors = resized[tp][0]["errors"]
    assert errors["mean_resizing"] == "NotImplementedError"
    assert errors["indivisible"] == ("ValueError" if tp > 1 else None)


# --- the released methods, to pin deviations ON-15 and ON-16 ----------------------------------------------

_RELEASED_METHODS = (
    "resize_token_embeddings",
    "_get_resized_embeddings",
    "_get_resized_lm_head",
    "_get_resized_parallel_embeddings",
    "_get_resized_parallel_lm_head",
)


class _SuperToPreTrainedModel(ast.NodeTransformer):
    """`super().name(args)` -> `PreTrainedModel.name(self, args)`: the release's super is transformers'."""

    def visit_Call(self, node: ast.Call) -> ast.Call:
        self.generic_visit(node)
        callee = node.func
        if (
            isinstance(callee, ast.Attribute)
            and isinstance(callee.value, ast.Call)
            and getattr(callee.value.func, "id", None) == "super"
        ):
            node.func = ast.Attribute(ast.Name("PreTrainedModel", ast.Load()), callee.attr, ast.Load())
            node.args = [ast.Name("self", ast.Load()), *node.args]
        return node


def _released_resizing() -> type:
    """A class holding the release's five resizing methods from NeuronModelMixin (on the reference layers)."""
    from neuronx_distributed.parallel_layers.layers import ColumnParallelLinear, ParallelEmbedding
    from neuronx_distributed.parallel_layers.parallel_state import get_tensor_model_parallel_size

    path = Path(oracle_source()).with_name("modeling_utils.py")
    mixin = next(
        node
        for node in ast.parse(path.read_text()).body
        if isinstance(node, ast.ClassDef) and node.name == "NeuronModelMixin"
    )
    methods = [n for n in mixin.body if isinstance(n, ast.FunctionDef) and n.name in _RELEASED_METHODS]
    assert sorted(m.name for m in methods) == sorted(_RELEASED_METHODS)
    body = [_SuperToPreTrainedModel().visit(method) for method in methods]
    module = ast.fix_missing_locations(ast.Module([ast.ClassDef("Released", [], [], body, [])], []))
    namespace = {
        "torch": torch,
        "nn": torch.nn,
        "PreTrainedModel": PreTrainedModel,
        "ParallelEmbedding": ParallelEmbedding,
        "ColumnParallelLinear": ColumnParallelLinear,
        "get_tensor_model_parallel_size": get_tensor_model_parallel_size,
    }
    exec(compile(module, str(path), "exec"), namespace)
    return namespace["Released"]


def _released_resize(folder: str, new_num_tokens: int | None, pad_to_multiple_of: int | None) -> dict:
    from conformance.backends.reference.training.config import TrainingNeuronConfig

    tiny = mount_tiny_llama().LlamaForCausalLM
    model_cls = type("ReleasedLlamaForCausalLM", (_released_resizing(), tiny), {})
    model = model_cls.from_pretrained(folder, TrainingNeuronConfig(tensor_parallel_size=2))
    model.resize_token_embeddings(new_num_tokens, pad_to_multiple_of=pad_to_multiple_of)
    embeddings = model.model.embed_tokens
    return {
        "padding_idx": embeddings.padding_idx,
        "vocab_size": model.vocab_size,
        "embedding": _gather_rows(model.model.embed_tokens.weight),
        "lm_head_size": model.lm_head.output_size,
    }


def test_release_moves_rows_and_stores_the_global_size_at_tp2(folders: dict[str, str]) -> None:
    original = reference_model(tiny_llama_config(**CONFIGS["untied"]), seed=1).model.embed_tokens.weight
    grown_ranks, unchanged_ranks, padded_ranks = (
        run_tensor_parallel(_released_resize, 2, folders["untied"], new, pad)
        for new, pad in ((80, None), (None, None), (70, 16))
    )
    grown, unchanged, padded = grown_ranks[0], unchanged_ranks[0], padded_ranks[0]
    # rank 1's old rows 32..63 land at global rows 40..71; rows 32..39 are new
    assert torch.equal(grown["embedding"][:32], original[:32].detach())
    assert torch.equal(grown["embedding"][40:72], original[32:].detach())
    assert not torch.equal(grown["embedding"][32:64], original[32:].detach())
    assert grown["vocab_size"] == 80 and unchanged["vocab_size"] == 64  # per-rank sizes would be 40 and 32
    assert padded["lm_head_size"] == 40  # the embedding's local size, while the embedding holds 80 rows
    # the pad row (global 40, local 8 on rank 1) is passed on as global index 8: no rank keeps it
    assert [r["padding_idx"] for r in grown_ranks] == [None, None]
    assert [r["padding_idx"] for r in unchanged_ranks] == [None, 8]
