"""Templates of NXS040 (moe-block), filled by `scaffold.rules.templates`.

`SparseMoeBlock` stands for the source block's class name (the rule renames it); `_init_normal` is the
file's init helper (NXS024 and NXS040 define it once). A keyword argument whose placeholder is filled with
`OMITTED` is dropped by the rule (the router's jitter when the source has none, the expert projections'
names when they are ExpertMLPsSpec's defaults).
"""

from functools import partial

import torch
from neuronx_distributed.modules.moe import ExpertMLPs, MoE, RouterTopK
from neuronx_distributed.modules.moe.routing import RouterBase
from neuronx_distributed.parallel_layers.mappings import gather_from_sequence_parallel_region

from ..config import TrainingNeuronConfig
from ..transformations_utils import CustomModule, ModelWeightTransformationSpecs
from .moe_expert_weights import ExpertMLPsSpec, RenamedParametersSpec


def sparse_block(
    _init_normal,
    config_class,
    num_experts,
    top_k,
    hidden_size,
    intermediate_size,
    hidden_act,
    normalize,
    jitter,
    renamed,
    experts,
    gate,
    up,
    down,
    layout,
    gate_up,
    transposed,
):
    """The sparse block as NxD's `MoE`, with the specs that map the source's per-expert weights."""

    class SparseMoeBlock(MoE, CustomModule):
        """The sparse block on NxD's `MoE`: a softmax top-k router and the expert MLPs as two 3-D tensors,
        their intermediate dimension sharded over TP and the experts over EP. Like the source's block it drops
        no token (`capacity_factor=None`). Returns `(hidden_states, router_logits)`, the logits `(batch *
        sequence, experts)` batch-major as transformers returns them, also under sequence parallelism.
        """

        def __init__(self, config: {config_class}, trn_config: TrainingNeuronConfig):
            sequence_parallel = trn_config.sequence_parallel_enabled
            # NxD's MoE reads the sequence length from this dimension: (S/T, B, D) under SP, else (B, S, D).
            sequence_dimension = 0 if sequence_parallel else 1
            init_method = partial(_init_normal, config.initializer_range)
            router = RouterTopK(
                num_experts={num_experts},
                top_k={top_k},
                hidden_size={hidden_size},
                sequence_parallel_enabled=sequence_parallel,
                sequence_dimension=sequence_dimension,
                dtype=config.dtype,
                act_fn="softmax",
                jitter_eps={jitter},
            )
            expert_mlps = ExpertMLPs(
                num_experts={num_experts},
                top_k={top_k},
                hidden_size={hidden_size},
                intermediate_size={intermediate_size},
                hidden_act={hidden_act},
                glu_mlp=True,
                capacity_factor=None,
                sequence_parallel_enabled=sequence_parallel,
                normalize_top_k_affinities={normalize},
                init_method=init_method,
                output_layer_init_method=init_method,
                dtype=config.dtype,
            )
            super().__init__(
                router,
                expert_mlps,
                sequence_parallel_enabled=sequence_parallel,
                sequence_dimension=sequence_dimension,
                return_router_logits=True,
            )
            # The source's router is drawn like its other linears; NxD's router keeps nn.Linear's init.
            init_method(self.router.linear_router.weight.data)
            self.num_experts = {num_experts}
            self.specs = ModelWeightTransformationSpecs(
                specs=[
                    RenamedParametersSpec({renamed}),
                    ExpertMLPsSpec(
                        num_experts={num_experts},
                        experts_name={experts},
                        layout={layout},
                        gate_up_proj_name={gate_up},
                        gate_proj_name={gate},
                        up_proj_name={up},
                        down_proj_name={down},
                        transposed={transposed},
                    ),
                ]
            )

        def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            output, router_logits = super().forward(hidden_states)
            if self.sequence_parallel_enabled:
                # NxD flattens the sequence-first (S, B) tokens, and in evaluation keeps the rank's S/T of them.
                router_logits = router_logits.view(-1, output.shape[1], self.num_experts)
                if not self.training:
                    router_logits = gather_from_sequence_parallel_region(
                        router_logits, 0, to_model_parallel=False
                    )
                router_logits = router_logits.transpose(0, 1).reshape(-1, self.num_experts)
            return output, router_logits


def function_router(config_class, num_experts, top_k, hidden_size, jitter, routing):
    """A router that routes as the source does, with its routing function (`routing` stands for the
    source's call, its logits written `router_logits`)."""

    class SourceRouter(RouterBase):
        """NxD's linear router (replicated, its logits gathered under sequence parallelism in training), then
        the source's routing function on its logits: the chosen experts and their weights, which the affinities
        hold at the chosen experts (zero elsewhere, so that `ExpertMLPs` reads them without renormalising).
        """

        def __init__(self, config: {config_class}, sequence_parallel: bool, sequence_dimension: int):
            # `act_fn` is NxD's to check, and unused: the routing function computes the weights.
            super().__init__(
                num_experts={num_experts},
                top_k={top_k},
                hidden_size={hidden_size},
                act_fn="softmax",
                sequence_parallel_enabled=sequence_parallel,
                sequence_dimension=sequence_dimension,
                dtype=config.dtype,
                device=torch.device("cpu"),
                jitter_eps={jitter},
            )
            self.config = config

        def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            router_logits = self.get_router_logits(hidden_states)
            expert_weights, expert_index = {routing}
            expert_affinities = torch.zeros_like(router_logits).scatter(1, expert_index, expert_weights)
            return (
                router_logits,
                expert_affinities.to(dtype=hidden_states.dtype),
                expert_index.detach().to(dtype=torch.long),
            )


def function_router_instance(router_class, config, sequence_parallel, sequence_dimension):
    """The block's router when the source routes with a function of its own (`router_class` renamed to
    the generated router class: a placeholder called directly would read as a set literal called)."""
    router = router_class(config, sequence_parallel, sequence_dimension)
    return router


def shared_expert_output(self, output, hidden_states):
    """The shared expert's output, scaled by the sigmoid of its gate, added to the routed experts'
    (`shared_expert` and `shared_expert_gate` stand for the source's attributes)."""
    output = output + torch.sigmoid(self.shared_expert_gate(hidden_states)) * self.shared_expert(
        hidden_states
    )
    return output


def unscaled_shared_expert_output(self, output, hidden_states):
    """The shared expert's output added to the routed experts' (no gate in the source)."""
    output = output + self.shared_expert(hidden_states)
    return output


def router_logits_in_decoder_layer():
    """Before a sparse block's call when the layer may hold a dense MLP instead (it returns no logits)."""
    router_logits = None
    return router_logits


def output_router_logits_parameter(output_router_logits: bool | None = None):
    """The base model forward's parameter (transformers' MoE models take it)."""


def output_router_logits_default(self, output_router_logits):
    """First statement of the base model forward: the config's choice unless the caller's."""
    output_router_logits = (
        output_router_logits if output_router_logits is not None else self.config.output_router_logits
    )
    return output_router_logits


def all_router_logits():
    """Before the decoder-layer loop."""
    all_router_logits = ()
    return all_router_logits


def collect_router_logits(output_router_logits, all_router_logits, router_logits):
    """In the decoder-layer loop, after the layer's call."""
    if output_router_logits:
        all_router_logits += (router_logits,)


def collect_sparse_router_logits(output_router_logits, all_router_logits, router_logits):
    """In the loop when some layers hold a dense MLP (their router logits are None)."""
    if output_router_logits and router_logits is not None:
        all_router_logits += (router_logits,)


def returned_router_logits(output_router_logits, all_router_logits):
    """The base model output's `router_logits` keyword."""
    return all_router_logits if output_router_logits else None
