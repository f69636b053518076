"""LoRA round trip: a PEFT adapter loads, saves and consolidates with the host's documented semantics.

For each configuration (variant, T, `fuse_qkv`):

1. Here, with the `peft` library: a deterministic LoRA adapter on the catalogue checkpoint (seeded values,
   lora_B non-zero, rank 4, every attention and MLP projection targeted: the transformers model's linear
   layers other than the LM head, by name, so `qkv_proj` and `gate_up_proj` where the source fuses them; a
   mixture of experts' attention projections only, `adapters.target_modules`), saved as PEFT does
   (`adapter_model.safetensors`, `adapter_config.json`).
2. On T ranks, through the active backend: the package's causal LM `from_pretrained`, the adapter applied
   with the host's `get_peft_model` and loaded with `load_adapter` (through the transformation specs),
   logits on a fixed batch (vocab-parallel shards gathered, or the full vocabulary of a replicated
   `lm_head`), the adapter saved (`save_pretrained`, sharded) and, on rank 0, consolidated by the host's
   `consolidate_model_parallel_checkpoints_to_unified_checkpoint`.
3. Here: the consolidated adapter against the original one and against transformers.
   - The same keys, and the saved `adapter_config.json` names the original target modules.
   - Every lora_B and every lora_A outside a fused group comes back bit for bit.
   - The lora_A of a fused group (gate/up always, as DESIGN §3 makes every gated MLP fuse them; q/k/v
     when the attention layout is the fused `qkv_proj` or the GQA layer) is the mean of the group's
     original lora_A (training semantics §2.5(c), §2.6(c), §8.6: loading averages them, consolidation
     copies the average back to each linear).
   - transformers' `PeftModel` with the consolidated adapter gives the parallel model's logits: the
     parallel model ran with the averaged lora_A, which is exactly what the consolidated adapter holds.

A mixture of experts whose config also gives some layers a dense MLP (Qwen-MoE's `decoder_sparse_step`,
`mlp_only_layers`), or whose layers hold one beside the experts (GraniteMoeShared's `shared_mlp`), is a SKIP: its adapter can only target the attention (a LoRA on the experts or the router
is refused by the expert-weight specs, and the dense MLP's projection names are the experts' too), which
leaves the dense layers' fused `gate_up_proj` un-adapted, and neither the kit's host nor optimum-neuron 0.4.5
can consolidate such an adapter (docs/moe-expert-weights.md).

The expected fused groups come from the generated-model contract and the catalogue's attention layout,
not from the model's own specs, so a model that drops or renames a fusion spec is caught.
"""

from __future__ import annotations

import importlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import torch

from conformance.comparisons.adapters import FP32, Tolerances, compare_adapters, listed
from conformance.harness.protocol import Check, CheckConfig, Exercised, Verdict, Workspace
from conformance.harness.rank_steps import is_rank_zero, local_step, rank_step
from conformance.model_runs.adapters import ADAPTER_CONFIG, ADAPTER_FILE, make_adapter, target_modules
from conformance.model_runs.attention_layouts import attention_layouts
from conformance.model_runs.fixed_batch import checkpoint_batch
from conformance.model_runs.logits import logits_of
from conformance.model_runs.parallel_model import load_parallel
from reference_models import variant

if TYPE_CHECKING:
    from conformance.profiles import ModelCatalogue

TOLERANCE = FP32.reason


@dataclass(frozen=True)
class LoraConfig(CheckConfig):
    """A catalogue variant with a LoRA adapter, at a TP size, with or without `fuse_qkv`."""

    tp_size: int
    fuse_qkv: bool = False

    def exercised(self) -> Exercised:
        return Exercised((self.tp_size,), (("fuse_qkv", self.fuse_qkv),))


@dataclass(frozen=True)
class LoraJob:
    config: LoraConfig
    checkpoint: str
    adapter_dir: str
    work_dir: str
    vocab_size: int
    attention: str | None

    @property
    def tp_size(self) -> int:
        return self.config.tp_size

    @property
    def saved_dir(self) -> str:
        return str(Path(self.work_dir) / "saved")

    @property
    def consolidated_dir(self) -> str:
        return str(Path(self.work_dir) / "consolidated")


class LoraRoundTrip(Check[LoraConfig, LoraJob, dict[str, Any] | None]):
    name = "lora_round_trip"
    order = 40
    config_type = LoraConfig
    tolerance = TOLERANCE
    key_figures = (
        "keys_compared",
        "lora_B_max_abs_diff",
        "lora_A_max_abs_diff",
        "lora_A_fused_vs_mean_max_abs_diff",
        "logits_max_abs_diff",
    )
    tolerances: Tolerances = FP32

    def plan(self, profile: str, catalogue: ModelCatalogue) -> list[LoraConfig]:
        gqa, gqa_tp = catalogue.smallest_gqa()
        if profile == "quick":
            return [LoraConfig(gqa, gqa_tp)]
        return [LoraConfig(catalogue.base, 2), LoraConfig(gqa, gqa_tp), LoraConfig(catalogue.base, 4)]

    def skip_reason(self, config: LoraConfig) -> str | None:
        entry = variant(config.variant)
        if entry.is_moe:
            dense = dense_mlp_layers(config.variant)
            if dense:
                return (
                    f"{config.variant} also has dense MLP layers ({', '.join(dense)}): a MoE adapter targets the "
                    "attention only (the experts and the router take no LoRA, and a dense MLP's projection names "
                    "are the experts' too), which leaves their fused gate_up_proj un-adapted, and the host cannot "
                    "consolidate such an adapter (optimum-neuron 0.4.5 neither)"
                )
        return super().skip_reason(config)

    def prepare(self, config: LoraConfig, workspace: Workspace, index: int) -> LoraJob:
        entry = variant(config.variant)
        checkpoint = workspace.checkpoint(entry)
        work_dir = workspace.folder(index)
        targets = target_modules(entry.model_type)
        return LoraJob(
            config=config,
            checkpoint=checkpoint,
            adapter_dir=str(make_adapter(checkpoint, work_dir / "adapter", targets=targets)),
            work_dir=str(work_dir),
            vocab_size=entry.config().vocab_size,
            attention=entry.attention(config.tp_size, config.fuse_qkv),
        )

    def on_rank(self, package: ModuleType, job: LoraJob) -> dict[str, Any] | None:
        """Load, apply the adapter, forward, save and (rank 0) consolidate; what rank 0 reports."""
        from peft import LoraConfig as PeftLoraConfig
        from peft.tuners.lora import LoraLayer

        from conformance.backends import active

        host = active()
        model, _, info = load_parallel(package, job.checkpoint, job.tp_size, fuse_qkv=job.config.fuse_qkv)
        attention = attention_layouts(model)  # before PEFT wraps the projections

        def apply_adapter() -> tuple[Any, Any]:
            peft = importlib.import_module(host.peft_package)
            peft_model = peft.get_peft_model(model, PeftLoraConfig.from_pretrained(job.adapter_dir))
            loaded = peft_model.load_adapter(job.adapter_dir, "default")
            return peft_model.eval(), loaded

        peft_model, loaded = rank_step(f"loading the adapter at T={job.tp_size}", apply_adapter)
        inputs = checkpoint_batch(job.checkpoint).model_inputs(labels=False)
        logits = rank_step(
            f"the forward at T={job.tp_size}", lambda: logits_of(peft_model, inputs, job.vocab_size)
        )
        lora_layers = {
            name: type(module).__name__
            for name, module in peft_model.named_modules()
            if isinstance(module, LoraLayer)
        }
        rank_step(f"saving the adapter at T={job.tp_size}", lambda: peft_model.save_pretrained(job.saved_dir))
        if not is_rank_zero():
            return None

        def consolidate() -> None:
            checkpointing = host.host_module("checkpointing")
            checkpointing.consolidate_model_parallel_checkpoints_to_unified_checkpoint(
                job.saved_dir, job.consolidated_dir, save_format="safetensors"
            )
            shutil.copy(Path(job.saved_dir) / "adapter_default" / ADAPTER_CONFIG, Path(job.consolidated_dir))

        local_step("consolidating the adapter", consolidate)
        return {
            "logits": logits,
            "attention": attention,
            "lora_layers": lora_layers,
            "base_missing_keys": list(info.get("missing_keys", [])),
            "base_unexpected_keys": list(info.get("unexpected_keys", [])),
            "adapter_missing_keys": list(loaded.missing_keys),
            "adapter_unexpected_keys": list(loaded.unexpected_keys),
        }

    def judge(self, job: LoraJob, value: dict[str, Any] | None) -> Verdict:
        from safetensors.torch import load_file

        assert value is not None
        verdict = Verdict()
        figures, reasons = verdict.figures, verdict.reasons
        figures["attention"] = sorted(set(value["attention"].values()))
        figures["expected_attention"] = job.attention
        classes = list(value["lora_layers"].values())
        figures["lora_layers"] = ", ".join(f"{cls} x{classes.count(cls)}" for cls in sorted(set(classes)))
        wrong_layout = {name: found for name, found in value["attention"].items() if found != job.attention}
        if wrong_layout:
            reasons.append(f"attention layout should be {job.attention!r}, got {wrong_layout}")
        for what, key in (("base checkpoint", "base"), ("adapter", "adapter")):
            missing, unexpected = value[f"{key}_missing_keys"], value[f"{key}_unexpected_keys"]
            if missing or unexpected:
                reasons.append(
                    f"{what} keys not loaded on the ranks: missing [{listed(missing)}], "
                    f"unexpected [{listed(unexpected)}]"
                )
        original = load_file(Path(job.adapter_dir) / ADAPTER_FILE)
        consolidated = load_file(Path(job.consolidated_dir) / ADAPTER_FILE)
        tensor_figures, tensor_reasons = compare_adapters(
            original, consolidated, job.attention, self.tolerances
        )
        figures.update(tensor_figures)
        reasons += tensor_reasons
        saved_targets = json.loads((Path(job.consolidated_dir) / ADAPTER_CONFIG).read_text())[
            "target_modules"
        ]
        figures["saved_target_modules"] = sorted(saved_targets)
        original_targets = json.loads((Path(job.adapter_dir) / ADAPTER_CONFIG).read_text())["target_modules"]
        if sorted(saved_targets) != sorted(original_targets):
            reasons.append(
                f"the saved adapter_config.json targets {sorted(saved_targets)}, the original adapter "
                f"{sorted(original_targets)}"
            )
        reasons += logits_reasons(value["logits"], _transformers_logits(job), figures, self.tolerances)
        return verdict


CHECK = LoraRoundTrip()


def dense_mlp_layers(key: str) -> list[str]:
    """The dense MLPs of a catalogue variant's transformers model, built on the meta device: the modules
    outside the experts (no expert list holds them) with two or more linears of their own, none of which the
    MoE adapter targets (Qwen-MoE's dense `mlp`, GraniteMoeShared's `shared_mlp`: its `input_linear` and
    `output_linear` share the experts' names). The router holds one linear, the attention targeted ones, the
    sparse block its expert list."""
    from transformers import AutoModelForCausalLM

    entry = variant(key)
    targets = set(target_modules(entry.model_type) or ())
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(entry.config())
    modules = dict(model.named_modules())
    found = []
    for name, module in modules.items():
        linears = {child for child, layer in module.named_children() if isinstance(layer, torch.nn.Linear)}
        parent = modules.get(name.rpartition(".")[0]) if name else None
        expert = isinstance(parent, torch.nn.ModuleList)  # one of an expert list
        sparse = any(
            isinstance(child, torch.nn.ModuleList) for child in module.children()
        )  # holds the experts
        if len(linears) >= 2 and not linears & targets and not expert and not sparse:
            found.append(name)
    return found


def logits_reasons(
    logits: torch.Tensor, reference: dict[str, torch.Tensor], figures: dict[str, Any], tolerances: Tolerances
) -> list[str]:
    """The parallel model's logits against transformers' PeftModel with the consolidated adapter, and
    whether the adapter changes the logits enough for that comparison to mean something."""
    if logits.shape != reference["consolidated"].shape:
        return [
            f"logits have shape {tuple(logits.shape)}, transformers' {tuple(reference['consolidated'].shape)}"
        ]
    reasons = []
    figures["logits_max_abs_diff"] = float((logits - reference["consolidated"]).abs().max())
    figures["logits_vs_original_adapter_max_abs_diff"] = float((logits - reference["original"]).abs().max())
    effect = float((reference["consolidated"] - reference["base"]).abs().max())
    figures["adapter_effect_on_logits"] = effect
    if not figures["logits_max_abs_diff"] <= tolerances.logits_atol:
        reasons.append(
            f"logits differ from transformers' PeftModel with the consolidated adapter: max |delta| "
            f"{figures['logits_max_abs_diff']:.3g} > {tolerances.logits_atol:g}"
        )
    if effect <= 100 * tolerances.logits_atol:
        reasons.append(
            f"the adapter changes transformers' logits by only {effect:.3g}: the logits comparison cannot "
            "tell an applied adapter from none"
        )
    return reasons


def _transformers_logits(job: LoraJob) -> dict[str, torch.Tensor]:
    """transformers' logits: the base model, with the consolidated adapter, with the original adapter."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    # The parallel model recomputes the causal mask (optimum-neuron's default): the causal mask only here.
    # Fresh inputs for each forward: a model may update one in place (XGLM's `position_ids`).
    batch = checkpoint_batch(job.checkpoint)

    def inputs() -> dict[str, torch.Tensor]:
        return batch.reference_inputs(honours_padding=False, labels=False)

    base = AutoModelForCausalLM.from_pretrained(
        job.checkpoint, attn_implementation="eager", dtype=torch.float32
    )
    base.eval()
    with torch.no_grad():
        found = {"base": base(**inputs()).logits}
        model = PeftModel.from_pretrained(base, job.consolidated_dir, adapter_name="consolidated")
        model.load_adapter(job.adapter_dir, adapter_name="original")
        model.eval()
        for name in ("consolidated", "original"):
            model.set_adapter(name)
            found[name] = model(**inputs()).logits
    return found
