"""`TrainingNeuronConfig`, `trn_config.json`, registration and the auto classes, and `from_pretrained`'s
handling of arguments, dtypes and incomplete or malformed checkpoints (training semantics §1, §3.2, §4).
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from transformers import BertConfig

from conformance.backends import activate
from conformance.launcher import run_on_ranks
from conformance.tensor_parallel_run import run_tensor_parallel

from .host_fixtures import load_weights, mount_tiny_llama, tiny_llama_config, write_checkpoint

FIELDS = {
    "tensor_parallel_size": 1,
    "sequence_parallel_enabled": False,
    "kv_size_multiplier": None,
    "pipeline_parallel_size": 1,
    "virtual_pipeline_parallel_size": 1,
    "pipeline_parallel_num_microbatches": 1,
    "pipeline_parallel_use_zero1_optimizer": False,
    "gradient_checkpointing": False,
    "checkpoint_dir": None,
    "num_local_ranks_per_step": 8,
    "use_xser": True,
    "async_save": False,
    "fuse_qkv": False,
    "recompute_causal_mask": True,
    "transpose_nki_inputs": True,
}


def _host():
    activate("reference")
    from conformance.backends.reference import training

    return training


# --- TrainingNeuronConfig ----------------------------------------------------------------------------------


def test_config_fields_and_defaults_match_optimum_neuron() -> None:
    config_cls = _host().TrainingNeuronConfig
    assert {f.name: f.default for f in dataclasses.fields(config_cls)} == FIELDS


def test_config_requires_torch_distributed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    assert not dist.is_initialized()
    with pytest.raises(ValueError, match="requires torch distributed to be initialized"):
        _host().TrainingNeuronConfig()


@pytest.mark.parametrize(
    ("field", "message"), [("tensor_parallel_size", "tensor"), ("pipeline_parallel_size", "pipeline")]
)
def test_config_rejects_sizes_below_one(field: str, message: str) -> None:
    with pytest.raises(ValueError, match=f"The {message} parallel size must be >= 1, but 0 was given here."):
        _host().TrainingNeuronConfig(**{field: 0})


def _config_checks() -> dict:
    """On 2 ranks whose model-parallel state is NOT initialised yet."""
    from neuronx_distributed.parallel_layers import parallel_state

    from conformance.backends.reference.training.config import TrainingNeuronConfig

    results = {"initialised_before": parallel_state.model_parallel_is_initialized()}
    try:
        config = TrainingNeuronConfig(
            tensor_parallel_size=2, sequence_parallel_enabled=True, checkpoint_dir="ck"
        )
        results["initialised_after"] = parallel_state.model_parallel_is_initialized()
        results["tp"] = parallel_state.get_tensor_model_parallel_size()
        results["values"] = (
            config.tensor_parallel_size,
            config.pipeline_parallel_size,
            config.data_parallel_size,
            config.sequence_parallel_enabled,
            config.checkpoint_dir,
            config.model_parallelism_enabled,
        )
        results["auto_kv"] = [config.auto_kv_size_multiplier(kv) for kv in (1, 2, 4)]
        with pytest.raises(ValueError, match="kv size multiplier was already specified"):
            TrainingNeuronConfig(tensor_parallel_size=2, kv_size_multiplier=1).auto_kv_size_multiplier(1)
        # Deviation ON-08: a request that does not match the live groups names both sizes.
        with pytest.raises(
            ValueError, match="tensor parallel size 1 was requested but the model-parallel groups use 2"
        ):
            TrainingNeuronConfig()
        with pytest.raises(ValueError, match=r"pipeline parallel size 2 was requested .* use 1"):
            TrainingNeuronConfig(tensor_parallel_size=2, pipeline_parallel_size=2)
    finally:
        parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=1)
    try:
        config = TrainingNeuronConfig(sequence_parallel_enabled=True)
        results["tp1"] = (
            config.data_parallel_size,
            config.sequence_parallel_enabled,
            config.model_parallelism_enabled,
        )
    finally:
        parallel_state.destroy_model_parallel()
    return results


def test_config_initialises_model_parallelism_and_records_live_sizes() -> None:
    # The same worker_init as run_tensor_parallel's, so the rank pool is shared; no parallel state is set up.
    for result in run_on_ranks(_config_checks, 2, worker_init=functools.partial(activate, "reference")):
        assert not result["initialised_before"] and result["initialised_after"] and result["tp"] == 2
        assert result["values"] == (2, 1, 1, True, Path("ck"), True)
        assert result["auto_kv"] == [2, 1, 1]
        assert result["tp1"] == (2, False, False)


# --- save_pretrained: trn_config.json and config.json ------------------------------------------------------


def _save(src: str, dst: str) -> None:
    from conformance.backends.reference.training.config import TrainingNeuronConfig

    trn_config = TrainingNeuronConfig(
        tensor_parallel_size=2, sequence_parallel_enabled=True, checkpoint_dir="some/dir", use_xser=False
    )
    mount_tiny_llama().LlamaForCausalLM.from_pretrained(src, trn_config).save_pretrained(dst)


def test_trn_config_json_is_the_dataclass(tmp_path: Path) -> None:
    write_checkpoint(tmp_path / "hf", tiny_llama_config())
    run_tensor_parallel(_save, 2, str(tmp_path / "hf"), str(tmp_path / "saved"))
    text = (tmp_path / "saved" / "trn_config.json").read_text()
    expected = {**FIELDS, "tensor_parallel_size": 2, "sequence_parallel_enabled": True, "use_xser": False}
    expected["checkpoint_dir"] = "some/dir"
    assert text == json.dumps(expected, indent=4)
    config = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert config["dtype"] == "float32" and config["architectures"] == ["LlamaForCausalLM"]
    assert config["num_key_value_heads"] == 2 and config["vocab_size"] == 64
    assert not (tmp_path / "saved" / "generation_config.json").exists()


# --- registration and auto classes -------------------------------------------------------------------------


def test_registry_lookup_and_error_message() -> None:
    _host()
    from conformance.backends.reference.training.auto_models import register_neuron_model_for_training
    from conformance.backends.reference.training.model_registry import get_neuron_model_class

    class Dummy:
        pass

    assert register_neuron_model_for_training("dummy-type", "model")(Dummy) is Dummy
    assert get_neuron_model_class("dummy-type", "model", "training") is Dummy
    with pytest.raises(ValueError) as info:
        get_neuron_model_class("bert", "model", "training")
    message = str(info.value)
    assert message.startswith("Model type bert is not supported for task model in neuron in training mode.")
    supported = ast.literal_eval(message.split("Supported types are: ", 1)[1].rstrip("."))
    assert "dummy-type" in supported
    with pytest.raises(
        ValueError, match=r"^Model type dummy-type is not supported for task text-generation in neuron"
    ):
        get_neuron_model_class("dummy-type", "text-generation", "training")


def test_auto_class_refuses_an_unregistered_model_type(tmp_path: Path) -> None:
    BertConfig(vocab_size=32, hidden_size=8, num_hidden_layers=1, num_attention_heads=2).save_pretrained(
        tmp_path
    )
    with pytest.raises(
        ValueError, match=r"Model type bert is not supported for task model in neuron in training mode\."
    ):
        _host().NeuronModel.from_pretrained(tmp_path, None)


def _auto_classes(src: str) -> dict:
    from transformers import AutoConfig

    from conformance.backends.reference.training import (
        NeuronModel,
        NeuronModelForCausalLM,
        TrainingNeuronConfig,
    )
    from conformance.backends.reference.training.training_utils import is_custom_modeling_model

    package = mount_tiny_llama()
    trn_config = TrainingNeuronConfig(tensor_parallel_size=2, use_xser=False)
    causal = NeuronModelForCausalLM.from_pretrained(src, trn_config, dtype=torch.bfloat16)
    base, info = NeuronModel.from_pretrained(src, trn_config, output_loading_info=True)
    fresh = NeuronModelForCausalLM.from_config(AutoConfig.from_pretrained(src), trn_config)
    return {
        "types": [
            type(m) is cls for m, cls in ((causal, package.LlamaForCausalLM), (base, package.LlamaModel))
        ]
        + [type(fresh) is package.LlamaForCausalLM],
        "custom": [is_custom_modeling_model(m) for m in (causal, base, fresh)],
        "dtype": {p.dtype for p in causal.parameters()},
        "base_unexpected": info["unexpected_keys"],
        "base_embed": base.embed_tokens.weight.detach().clone(),
        "training": (causal.training, base.training, fresh.training),
    }


def test_auto_classes_pick_the_registered_model(tmp_path: Path) -> None:
    write_checkpoint(tmp_path, tiny_llama_config())
    embed = load_weights(tmp_path)["model.embed_tokens.weight"]
    results = run_tensor_parallel(_auto_classes, 2, str(tmp_path))
    for rank, result in enumerate(results):
        assert result["types"] == [True, True, True] and result["custom"] == [True, True, True]
        assert result["dtype"] == {torch.bfloat16}
        # A base model loads the "model." part of a causal-LM checkpoint; the head is reported unused.
        assert result["base_unexpected"] == ["lm_head.weight"]
        assert torch.equal(result["base_embed"], embed.chunk(2)[rank])
        assert result["training"] == (False, False, True)


def test_host_exports_resolve_without_mounting_a_model() -> None:
    import sys

    host = _host()
    for name in host.__all__:
        assert getattr(host, name) is not None, name
    assert callable(host.ALL_ATTENTION_FUNCTIONS["flash_attention_2"])
    mounted = [
        m for m in sys.modules if m.startswith(host.__name__ + ".") and m.rsplit(".", 1)[1].startswith("tiny")
    ]
    assert not mounted


def test_is_custom_modeling_model_is_false_for_transformers_models() -> None:
    from transformers import LlamaForCausalLM

    from conformance.backends.reference.training.training_utils import is_custom_modeling_model

    _host()
    assert not is_custom_modeling_model(LlamaForCausalLM(tiny_llama_config()))


# --- from_pretrained: arguments, dtypes, incomplete checkpoints ----------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"state_dict": {}}, NotImplementedError, "Providing a `state_dict`"),
        ({"from_tf": True}, NotImplementedError, "TensorFlow or Flax"),
        ({"low_cpu_mem_usage": True}, NotImplementedError, "low_cpu_mem_usage"),
        ({"use_flash_attention_2": True}, ValueError, "use_flash_attention_2"),
        ({"device_map": "auto"}, RuntimeError, "device map values supported"),
        ({"offload_folder": "x"}, NotImplementedError, "offload_folder"),
        ({"load_in_8bit": True}, NotImplementedError, "Quantization"),
        ({"quantization_config": {"a": 1}}, NotImplementedError, "Quantization"),
        ({"gguf_file": "x.gguf"}, NotImplementedError, "GGUF"),
        ({"adapter_name": "a"}, NotImplementedError, "NeuronPeftModelForXXX"),
    ],
)
def test_unsupported_arguments_are_refused(kwargs: dict, error: type, match: str, tmp_path: Path) -> None:
    host = _host()
    with pytest.raises(error, match=match):
        host.NeuronModelMixin.from_pretrained(tmp_path, None, **kwargs)


def _bad_inputs(folders: dict[str, str]) -> dict:
    from conformance.backends.reference.training.config import TrainingNeuronConfig

    model_cls = mount_tiny_llama().LlamaForCausalLM
    trn_config = TrainingNeuronConfig(tensor_parallel_size=2, use_xser=False)
    errors = {}
    attempts = {
        "no-weights": lambda: model_cls.from_pretrained(folders["no-weights"], trn_config),
        "missing-shard": lambda: model_cls.from_pretrained(folders["missing-shard"], trn_config),
        "adapter": lambda: model_cls.from_pretrained(folders["adapter"], trn_config),
        "no-trn-config": lambda: model_cls.from_pretrained(folders["good"], None),
        "sdpa": lambda: model_cls.from_pretrained(folders["good"], trn_config, attn_implementation="sdpa"),
        "flex": lambda: model_cls.from_pretrained(
            folders["good"], trn_config, attn_implementation="flex_attention"
        ),
        "bad-dtype": lambda: model_cls.from_pretrained(folders["good"], trn_config, dtype=3),
        "unknown-kwarg": lambda: model_cls.from_pretrained(folders["good"], trn_config, not_an_option=1),
        "split-group": lambda: model_cls.from_pretrained(folders["split-group"], trn_config),
        "safe-save": lambda: model_cls.from_pretrained(folders["good"], trn_config).save_pretrained(
            folders["out"], safe_serialization=True
        ),
        "not-a-folder": lambda: model_cls.from_pretrained(folders["out"] + "/absent/model", trn_config),
        "push": lambda: model_cls.from_pretrained(folders["good"], trn_config).save_pretrained(
            folders["out"], push_to_hub=True
        ),
    }
    for name, attempt in attempts.items():
        try:
            attempt()
        except Exception as exc:
            errors[name] = (type(exc).__name__, str(exc))
        else:
            errors[name] = None
    return errors


def test_bad_inputs_give_clear_errors(tmp_path: Path) -> None:
    good = tmp_path / "good"
    write_checkpoint(good, tiny_llama_config())
    no_weights = tmp_path / "no-weights"
    tiny_llama_config().save_pretrained(no_weights)
    missing_shard = tmp_path / "missing-shard"
    write_checkpoint(missing_shard, tiny_llama_config(), max_shard_size="20KB")
    index = json.loads((missing_shard / "model.safetensors.index.json").read_text())
    lost = index["weight_map"]["model.layers.1.mlp.up_proj.weight"]
    (missing_shard / lost).unlink()
    adapter = tmp_path / "adapter"
    write_checkpoint(adapter, tiny_llama_config())
    (adapter / "adapter_config.json").write_text("{}")
    # A checkpoint that never provides up_proj of layer 1: the gate/up fusion cannot complete (ON-03).
    split_group = tmp_path / "split-group"
    write_checkpoint(split_group, tiny_llama_config())
    from safetensors.torch import load_file, save_file

    weights = load_file(split_group / "model.safetensors")
    del weights["model.layers.1.mlp.up_proj.weight"]
    save_file(weights, split_group / "model.safetensors", metadata={"format": "pt"})

    folders = {
        name: str(tmp_path / name)
        for name in ("good", "no-weights", "missing-shard", "adapter", "split-group")
    }
    folders["out"] = str(tmp_path / "out")
    errors = run_tensor_parallel(_bad_inputs, 2, folders)[0]
    expected = {
        "no-weights": ("OSError", "No model weights in .*model.safetensors, model.safetensors.index.json"),
        "missing-shard": ("OSError", f"names shard files that do not exist: .*{lost}"),
        "adapter": ("NotImplementedError", "Loading adapters directly"),
        "no-trn-config": ("ValueError", "`trn_config` is required"),
        "sdpa": ("ValueError", "SDPA is not supported in optimum-neuron"),
        "flex": ("ValueError", "Flex Attention is not supported in optimum-neuron"),
        "bad-dtype": ("ValueError", "`dtype` can be one of"),
        "unknown-kwarg": ("TypeError", r"unexpected keyword arguments \['not_an_option'\]"),
        "split-group": ("ValueError", "model.layers.1.mlp.gate_proj.weight"),
        "safe-save": ("NotImplementedError", "`safe_serialization` is not supported"),
        "push": ("RuntimeError", "`push_to_hub` is not supported"),
        "not-a-folder": ("OSError", "is not a local folder and could not be resolved"),
    }
    for name, (error_type, pattern) in expected.items():
        assert errors[name] is not None, f"{name}: no error raised"
        assert errors[name][0] == error_type, f"{name}: {errors[name]}"
        assert re.search(pattern, errors[name][1]), f"{name}: {errors[name][1]}"


def _dtypes_and_missing(folders: dict[str, str]) -> dict:
    from conformance.backends.reference.training.config import TrainingNeuronConfig

    model_cls = mount_tiny_llama().LlamaForCausalLM
    trn_config = TrainingNeuronConfig(tensor_parallel_size=2, use_xser=False)

    def dtypes(model) -> set:
        return {p.dtype for p in model.parameters()}

    from transformers import AutoConfig

    explicit_config = AutoConfig.from_pretrained(folders["fp32"], dtype="bfloat16")
    results = {
        "default": dtypes(model_cls.from_pretrained(folders["bf16"], trn_config)),
        "config_object": dtypes(
            model_cls.from_pretrained(folders["fp32"], trn_config, config=explicit_config)
        ),
        "config_auto": dtypes(
            model_cls.from_pretrained(folders["fp32"], trn_config, config=explicit_config, dtype="auto")
        ),
        "auto": dtypes(model_cls.from_pretrained(folders["bf16"], trn_config, dtype="auto")),
        "auto_untyped": dtypes(model_cls.from_pretrained(folders["bf16-untyped"], trn_config, dtype="auto")),
        "auto_fp32": dtypes(model_cls.from_pretrained(folders["fp32"], trn_config, dtype="auto")),
        "string": dtypes(model_cls.from_pretrained(folders["fp32"], trn_config, dtype="bfloat16")),
        "torch_dtype": dtypes(
            model_cls.from_pretrained(folders["fp32"], trn_config, torch_dtype=torch.float16)
        ),
        "default_after": torch.get_default_dtype(),
    }
    model, info = model_cls.from_pretrained(folders["no-head"], trn_config, output_loading_info=True)
    results["missing"] = info["missing_keys"]
    results["unexpected"] = info["unexpected_keys"]
    results["head"] = model.lm_head.weight.detach().clone()
    results["embed"] = model.model.embed_tokens.weight.detach().clone()
    return results


def test_dtypes_and_missing_weights(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    write_checkpoint(tmp_path / "fp32", tiny_llama_config())
    write_checkpoint(tmp_path / "bf16", tiny_llama_config(), dtype=torch.bfloat16)
    shutil.copytree(tmp_path / "bf16", tmp_path / "bf16-untyped")
    config_file = tmp_path / "bf16-untyped" / "config.json"
    config = json.loads(config_file.read_text())
    assert config["dtype"] == "bfloat16"
    config_file.write_text(json.dumps({**config, "dtype": None}))
    no_head = tmp_path / "no-head"
    write_checkpoint(no_head, tiny_llama_config())
    weights = load_file(no_head / "model.safetensors")
    del weights["lm_head.weight"]
    weights["extra.tensor"] = torch.zeros(2)
    save_file(weights, no_head / "model.safetensors", metadata={"format": "pt"})

    folders = {name: str(tmp_path / name) for name in ("fp32", "bf16", "bf16-untyped", "no-head")}
    for rank, result in enumerate(run_tensor_parallel(_dtypes_and_missing, 2, folders)):
        assert result["default"] == {torch.float32}
        assert result["config_object"] == {torch.float32}  # a config's dtype is not a dtype request
        assert result["config_auto"] == {torch.bfloat16}  # ... unless dtype="auto" asks for it
        assert result["auto"] == {torch.bfloat16}  # config.dtype
        assert result["auto_untyped"] == {
            torch.bfloat16
        }  # the first floating tensor, config.dtype being null
        assert result["auto_fp32"] == {torch.float32}
        assert result["string"] == {torch.bfloat16}
        assert result["torch_dtype"] == {torch.float16}
        assert result["default_after"] == torch.float32
        assert result["missing"] == ["lm_head.weight"] and result["unexpected"] == ["extra.tensor"]
        # The head was initialised (normal, std = initializer_range), not left as allocated memory.
        head = result["head"]
        assert torch.isfinite(head).all() and 0.01 < head.std().item() < 0.04
        assert torch.equal(result["embed"], weights["model.embed_tokens.weight"].chunk(2)[rank])
