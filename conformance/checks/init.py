"""Init: the package's model built from its config (no checkpoint) initialises every parameter as
transformers' `_init_weights` does.

At TP = T the package's `<X>ForCausalLM(config, trn_config)` is built `DRAWS` times, each under its own
seed (every rank seeded alike, as NxD's CPU init expects), and each build's parameters are consolidated to
transformers names by the host's consolidation (`consolidate_gradients`: the same sharding as the
weights). transformers' `AutoModelForCausalLM.from_config(config)` is built under the same seeds. Per
parameter, the draws are pooled and summarised (`init_statistics`: mean, std, kurtosis, kind — all zeros,
all ones, a constant, random — and a matrix's all-zero rows, such as the padding row); the model's must be
transformers' within bounds derived from the sampling distribution of each estimator (six standard errors:
see `init_statistics`). A wrong law (normal vs uniform vs zeros), a hard-coded std instead of
`config.initializer_range`, a norm weight not at one or a bias not at zero fails, naming the parameter and
both statistics.

Seeds give the same numbers only within one implementation; across the two models only the laws are
compared (the draws are independent samples).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any

import torch

from conformance.comparisons.gradient_consolidation import consolidate_gradients
from conformance.comparisons.init_statistics import InitStatistics, Z, compare_statistics, statistics
from conformance.harness.protocol import Check, CheckConfig, Exercised, Verdict, Workspace
from conformance.harness.rank_steps import is_rank_zero, rank_step
from conformance.model_runs.parallel_model import training_config
from conformance.model_runs.rank_gather import gather_to_rank_0
from reference_models import variant

if TYPE_CHECKING:
    from conformance.profiles import ModelCatalogue

DRAWS = 4
"""Seeded builds pooled per side: four times the values of one build, half the standard errors."""
FIRST_SEED = 1000
TOLERANCE = (
    f"Per parameter, the statistics of {DRAWS} seeded builds pooled: kind (all zeros, all ones, a constant, "
    "random) and a matrix's all-zero rows must match exactly; mean, std and kurtosis within "
    f"{Z:g} standard errors of their difference, from the sampling distribution of each estimator with n "
    "pooled values (mean: sqrt(s1^2/n1 + s2^2/n2); std: sqrt(s^2 (kurtosis - 1) / 4n) per side; kurtosis: "
    "sqrt(24/n) per side). A correct init fails a comparison with probability ~2e-9; on llama/gqa's "
    "smallest matrix (k_proj, 16 x 64, n = 4096) the std bound is 9% of the std and the kurtosis bound 0.65 "
    "(mqa's 8 x 64: 13% and 0.92), so a std off by 50%, a uniform instead of a normal (kurtosis 1.8 vs 3) or "
    "zeros instead of random fail."
)


@dataclass(frozen=True)
class InitConfig(CheckConfig):
    """A catalogue variant built from its config at a TP size."""

    tp_size: int

    def exercised(self) -> Exercised:
        return Exercised(tp_sizes=(self.tp_size,))


@dataclass(frozen=True)
class InitJob:
    config: InitConfig
    checkpoint: str
    """The catalogue checkpoint: its config and the class it names (its weights are not used)."""
    draws: int = DRAWS

    @property
    def tp_size(self) -> int:
        return self.config.tp_size


@dataclass
class InitMeasurement:
    model: dict[str, InitStatistics] = field(default_factory=dict)
    reference: dict[str, InitStatistics] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)


class Init(Check[InitConfig, InitJob, InitMeasurement | None]):
    name = "init"
    order = 45
    config_type = InitConfig
    tolerance = TOLERANCE
    key_figures = ("parameters_compared", "parameters_differing", "draws")

    def plan(self, profile: str, catalogue: ModelCatalogue) -> list[InitConfig]:
        cases = [InitConfig(catalogue.base, 2)]
        if profile == "quick":
            return cases
        gqa, gqa_tp = catalogue.smallest_gqa()
        cases.append(InitConfig(gqa, gqa_tp))
        for name in ("features", "tied"):
            if name in catalogue.variants:
                cases.append(InitConfig(catalogue.key(name), 2))
        return list(dict.fromkeys(cases))

    def prepare(self, config: InitConfig, workspace: Workspace, index: int) -> InitJob:
        return InitJob(config, workspace.checkpoint(variant(config.variant)))

    def on_rank(self, package: ModuleType, job: InitJob) -> InitMeasurement | None:
        return measure(package, job)

    def judge(self, job: InitJob, value: InitMeasurement | None) -> Verdict:
        assert value is not None
        return judge_measurement(job, value)


CHECK = Init()


# --- on the ranks -------------------------------------------------------------------------------------


def measure(package: ModuleType, job: InitJob) -> InitMeasurement | None:
    """Every rank builds the model `draws` times; rank 0 consolidates and builds transformers' as well."""
    from transformers import AutoConfig

    from conformance.backends import active
    from conformance.model_package import causal_lm_class

    config = AutoConfig.from_pretrained(job.checkpoint, attn_implementation="eager")
    model_cls = causal_lm_class(package, job.checkpoint)
    transformations = active().host_module("transformations_utils")
    draws: dict[str, list[torch.Tensor]] = {}
    for draw in range(job.draws):

        def build(seed: int = FIRST_SEED + draw) -> torch.nn.Module:
            from neuronx_distributed.parallel_layers import parallel_state

            parallel_state.destroy_kv_group()
            trn_config = training_config(job.tp_size)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                return model_cls(config, trn_config)

        model = rank_step(f"building from config at T={job.tp_size}", build, construction=True)
        gathered = gather_to_rank_0({name: p.detach() for name, p in model.named_parameters()})
        transformations.specialize_transformation_specs_for_model(model)  # what from_pretrained does
        metadata = transformations.create_parameter_metadata(model)
        if gathered is not None:
            consolidated = consolidate_gradients(gathered, metadata)[0]
            for name, tensor in consolidated.items():
                draws.setdefault(name, []).append(tensor.float())
        del model
    if not is_rank_zero():
        return None
    return InitMeasurement(
        model={name: statistics(tensors) for name, tensors in draws.items()},
        reference=reference_statistics(config, job.draws),
        config=config.to_dict(),
    )


def reference_statistics(config: Any, draws: int) -> dict[str, InitStatistics]:
    """transformers' model built from `config` under the same seeds: its per-parameter statistics."""
    from transformers import AutoModelForCausalLM

    found: dict[str, list[torch.Tensor]] = {}
    for draw in range(draws):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(FIRST_SEED + draw)
            model = AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=torch.float32)
        for name, param in model.named_parameters():
            found.setdefault(name, []).append(param.detach().float())
    return {name: statistics(tensors) for name, tensors in found.items()}


# --- the verdict ----------------------------------------------------------------------------------------


def judge_measurement(job: InitJob, found: InitMeasurement) -> Verdict:
    common = sorted(set(found.model) & set(found.reference))
    reasons: list[str] = []
    differing = []
    for name in common:
        why = compare_statistics(name, found.model[name], found.reference[name], found.config)
        if why:
            differing.append(name)
            reasons += why
    figures: dict[str, Any] = {
        "draws": job.draws,
        "parameters_compared": len(common),
        "parameters_differing": len(differing),
        "differing": differing,
        "only_in_model": sorted(set(found.model) - set(found.reference)),
        "only_in_transformers": sorted(set(found.reference) - set(found.model)),
        "statistics": {
            name: {
                "model": found.model[name].describe(),
                "transformers": found.reference[name].describe(),
            }
            for name in common
        },
    }
    return Verdict(figures=figures, reasons=reasons)
