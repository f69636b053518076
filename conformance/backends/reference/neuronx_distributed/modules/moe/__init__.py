"""Mixture-of-experts modules (`neuronx_distributed.modules.moe`), as NxD's training models use them.

`MoE` combines a router (`RouterTopK`, `RouterSinkhorn`) with `ExpertMLPs` (expert-fused, tensor- and
expert-parallel weights) and optionally `SharedExperts` (`modules.moe.shared_experts`);
`load_balancing_loss_func` is the auxiliary loss on the router logits. Differences from NxD 0.18 are
NXD-20 to NXD-23 in docs/backend-deviations.md.
"""

from .expert_mlps import ExpertMLPs
from .loss_function import load_balancing_loss_func
from .model import MoE
from .model_utils import ACT2FN
from .routing import RouterSinkhorn, RouterTopK

__all__ = ["ACT2FN", "ExpertMLPs", "MoE", "RouterSinkhorn", "RouterTopK", "load_balancing_loss_func"]
