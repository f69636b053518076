"""The rewrite rules (one libcst codemod pass each), in their declared pipeline order.

`RULES` is the order the pipeline runs them in; it is declared here, not derived from the codes (a code
is a rule's identity only). A rule's `REQUIRES` names the rules whose rewrites it builds on: each must
come before it, which importing this package checks. `--disable` takes only rules that no enabled rule
requires (`check_disabled`). `scaffold rules` prints the table.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..errors import ScaffoldError
from .absolute_imports import AbsoluteTransformersImports
from .attention_bias_by_head import AttentionBiasByHead
from .attention_norms import AttentionNorms
from .attention_sequence_parallel import AttentionSequenceParallel
from .attention_variants import AttentionVariants
from .base import Rule, RuleExample, RuleOptions
from .base_model_forward import BaseModelForward
from .cross_attention_guard import CrossAttentionGuardRule
from .fused_gate_up import FusedGateUp
from .kv_cache import DropKVCache
from .learnable_activations import LearnableActivationGradients
from .mask_option_guard import MaskOptionGuard
from .moe_block import MoEBlocks
from .neuron_flash_attention import NeuronFlashAttention
from .neuron_model_classes import NeuronModelClasses
from .optional_input_guard import OptionalInputGuard
from .parallel_bias_init import ParallelBiasInit
from .parallel_embedding import ParallelEmbeddingRule
from .parallel_init_redraws import ParallelInitRedraws
from .parallel_linears import ParallelLinears
from .prune_closure import PruneToTrainingClosure
from .sequence_parallel_norms import SequenceParallelNorms
from .source_fused_checkpoint import SourceFusedCheckpoint
from .trn_config_threading import ThreadTrnConfig
from .unused_imports import RemoveUnusedImports
from .vocab_parallel_lm_head import VocabParallelLMHead

RULES: tuple[type[Rule], ...] = (
    PruneToTrainingClosure,  # NXS001
    DropKVCache,  # NXS002
    CrossAttentionGuardRule,  # NXS017
    AbsoluteTransformersImports,  # NXS003
    ThreadTrnConfig,  # NXS004
    NeuronModelClasses,  # NXS005
    ParallelBiasInit,  # NXS006
    ParallelEmbeddingRule,  # NXS010
    SequenceParallelNorms,  # NXS011
    BaseModelForward,  # NXS012
    MaskOptionGuard,  # NXS014
    OptionalInputGuard,  # NXS028
    VocabParallelLMHead,  # NXS013
    FusedGateUp,  # NXS020
    AttentionVariants,  # NXS021
    AttentionNorms,  # NXS026
    AttentionSequenceParallel,  # NXS022
    NeuronFlashAttention,  # NXS023
    AttentionBiasByHead,  # NXS031
    SourceFusedCheckpoint,  # NXS027
    ParallelLinears,  # NXS024
    ParallelInitRedraws,  # NXS015 (after the rules that build parallel layers and split source linears)
    LearnableActivationGradients,  # NXS025
    MoEBlocks,  # NXS040
    RemoveUnusedImports,  # NXS030
)


def _check_order(rules: tuple[type[Rule], ...]) -> None:
    """Codes are unique and every rule comes after the rules it requires."""
    seen: set[str] = set()
    for rule in rules:
        if rule.CODE in seen:
            raise RuntimeError(f"rule code {rule.CODE} is declared twice")
        missing = [code for code in rule.REQUIRES if code not in seen]
        if missing:
            raise RuntimeError(
                f"{rule.CODE} requires {', '.join(missing)}, which must come before it in RULES"
            )
        seen.add(rule.CODE)


_check_order(RULES)


def rule_by_key(key: str) -> type[Rule]:
    """The rule whose code or name is `key` (KeyError listing the known ones)."""
    for rule in RULES:
        if key in (rule.CODE, rule.NAME):
            return rule
    known = ", ".join(f"{rule.CODE} ({rule.NAME})" for rule in RULES)
    raise KeyError(f"unknown rule {key!r}; known rules: {known}")


def dependents(code: str) -> tuple[type[Rule], ...]:
    """The rules that require the rule `code`, directly or through another rule."""
    found: list[type[Rule]] = []
    needed = {code}
    for rule in RULES:
        if needed & set(rule.REQUIRES):
            found.append(rule)
            needed.add(rule.CODE)
    return tuple(found)


def check_disabled(disabled: Iterable[str]) -> None:
    """ScaffoldError when an enabled rule requires a disabled one (naming both, and what to do)."""
    off = set(disabled)
    for code in sorted(off, key=[rule.CODE for rule in RULES].index):
        enabled = [rule for rule in dependents(code) if rule.CODE not in off]
        if enabled:
            rule = rule_by_key(code)
            names = ", ".join(f"{other.CODE} ({other.NAME})" for other in enabled)
            raise ScaffoldError(
                f"--disable {rule.CODE} ({rule.NAME}): {names} build{'s' if len(enabled) == 1 else ''} on it",
                hint=f"disable {'it' if len(enabled) == 1 else 'them'} too, or keep {rule.CODE}",
            )


__all__ = ["RULES", "Rule", "RuleExample", "RuleOptions", "check_disabled", "dependents", "rule_by_key"]
