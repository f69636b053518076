"""NXS040 (moe-block) on hand-written snippets: a sparse block becomes NxD's MoE, the decoder layer returns
its router logits and the base model collects them; what the rule leaves alone."""

from __future__ import annotations

from scaffold.blueprint import Expr, MoEBlock, PackedExperts, Refusal
from scaffold.rules.moe_block import MoEBlocks

from .toy import ALLOWED, HERE, RuleTest, blueprint, expr

INIT_HELPER = '''
def _init_normal(std: float, tensor: torch.Tensor) -> torch.Tensor:
    """Fill `tensor` from N(0, std^2): the init method of every parallel layer (std = initializer_range)."""
    return nn.init.normal_(tensor, mean=0.0, std=std)
'''


def toy_block(**changes: object) -> MoEBlock:
    """The facts analysis reads from `BLOCK` below (written by hand)."""
    facts: dict[str, object] = {
        "owner": "ToyMoE",
        "router": "router",
        "experts": "experts",
        "expert_class": "ToyExpert",
        "gate": "w1",
        "up": "w3",
        "down": "w2",
        "num_experts": Expr("self.num_experts", "config.num_experts"),
        "top_k": Expr("self.top_k", "config.top_k"),
        "hidden_size": expr("config.hidden_size"),
        "intermediate_size": Expr("self.size", "config.expert_size"),
        "activation": expr("config.hidden_act"),
        "normalize": Expr("self.norm", "config.norm_topk_prob"),
        "jitter": None,
        "shared_expert": None,
        "shared_expert_gate": None,
        "layer_class": "ToyLayer",
        "layer_attribute": "moe",
        "dense_layers": False,
        "logits_plumbed": False,
        "location": HERE,
    }
    facts.update(changes)
    return MoEBlock(**facts)  # type: ignore[arg-type]


BLOCK = """
import torch
from torch import nn


class ToyExpert(nn.Module):
    def __init__(self, config, trn_config):
        super().__init__()
        self.w1 = nn.Linear(config.hidden_size, config.expert_size, bias=False)
        self.w3 = nn.Linear(config.hidden_size, config.expert_size, bias=False)
        self.w2 = nn.Linear(config.expert_size, config.hidden_size, bias=False)


# routes each token to its top-k experts
class ToyMoE(nn.Module):
    def __init__(self, config, trn_config):
        super().__init__()
        self.router = nn.Linear(config.hidden_size, config.num_experts, bias=False)
        self.experts = nn.ModuleList([ToyExpert(config, trn_config) for _ in range(config.num_experts)])

    def forward(self, x):
        logits = self.router(x)
        weights, chosen = torch.topk(logits.softmax(-1), self.top_k)
        return x, logits
"""

MOE_CLASS = '''
class ToyMoE(MoE, CustomModule):
    """The sparse block on NxD's `MoE`: a softmax top-k router and the expert MLPs as two 3-D tensors,
    their intermediate dimension sharded over TP and the experts over EP. Like the source's block it drops
    no token (`capacity_factor=None`). Returns `(hidden_states, router_logits)`, the logits `(batch *
    sequence, experts)` batch-major as transformers returns them, also under sequence parallelism.
    """

    def __init__(self, config: ToyConfig, trn_config: TrainingNeuronConfig):
        sequence_parallel = trn_config.sequence_parallel_enabled
        # NxD's MoE reads the sequence length from this dimension: (S/T, B, D) under SP, else (B, S, D).
        sequence_dimension = 0 if sequence_parallel else 1
        init_method = partial(_init_normal, config.initializer_range)
        router = RouterTopK(
            num_experts=config.num_experts,
            top_k=config.top_k,
            hidden_size=config.hidden_size,
            sequence_parallel_enabled=sequence_parallel,
            sequence_dimension=sequence_dimension,
            dtype=config.dtype,
            act_fn="softmax",{jitter}
        )
        expert_mlps = ExpertMLPs(
            num_experts=config.num_experts,
            top_k=config.top_k,
            hidden_size=config.hidden_size,
            intermediate_size=config.expert_size,
            hidden_act=config.hidden_act,
            glu_mlp=True,
            capacity_factor=None,
            sequence_parallel_enabled=sequence_parallel,
            normalize_top_k_affinities=config.norm_topk_prob,
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
        self.num_experts = config.num_experts{shared_init}
        self.specs = ModelWeightTransformationSpecs(
            specs=[
                RenamedParametersSpec({{"router.linear_router.weight": "router.weight"}}),
                ExpertMLPsSpec(
                    num_experts=config.num_experts,
                    gate_proj_name="w1",
                    up_proj_name="w3",
                    down_proj_name="w2",
                ),
            ]
        )

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        output, router_logits = super().forward(hidden_states){shared_forward}
        if self.sequence_parallel_enabled:
            # NxD flattens the sequence-first (S, B) tokens, and in evaluation keeps the rank's S/T of them.
            router_logits = router_logits.view(-1, output.shape[1], self.num_experts)
            if not self.training:
                router_logits = gather_from_sequence_parallel_region(router_logits, 0, to_model_parallel=False)
            router_logits = router_logits.transpose(0, 1).reshape(-1, self.num_experts)
        return output, router_logits
'''

PICK = """

def pick(scores, noise, training):
    return torch.topk(scores, 2)
"""

FUNCTION_ROUTER = '''
class ToyMoERouter(RouterBase):
    """NxD's linear router (replicated, its logits gathered under sequence parallelism in training), then
    the source's routing function on its logits: the chosen experts and their weights, which the affinities
    hold at the chosen experts (zero elsewhere, so that `ExpertMLPs` reads them without renormalising).
    """

    def __init__(self, config: ToyConfig, sequence_parallel: bool, sequence_dimension: int):
        # `act_fn` is NxD's to check, and unused: the routing function computes the weights.
        super().__init__(
            num_experts=config.num_experts,
            top_k=2,
            hidden_size=config.hidden_size,
            act_fn="softmax",
            sequence_parallel_enabled=sequence_parallel,
            sequence_dimension=sequence_dimension,
            dtype=config.dtype,
            device=torch.device("cpu"),
        )
        self.config = config

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        router_logits = self.get_router_logits(hidden_states)
        expert_weights, expert_index = pick(router_logits, self.config.noise, self.training)
        expert_affinities = torch.zeros_like(router_logits).scatter(1, expert_index, expert_weights)
        return (
            router_logits,
            expert_affinities.to(dtype=hidden_states.dtype),
            expert_index.detach().to(dtype=torch.long),
        )
'''

MOE_IMPORTS = """
import torch
from torch import nn
from functools import partial
from neuronx_distributed.modules.moe import ExpertMLPs, MoE, RouterTopK
from neuronx_distributed.parallel_layers.mappings import gather_from_sequence_parallel_region

from ..config import TrainingNeuronConfig
from ..transformations_utils import CustomModule, ModelWeightTransformationSpecs
from .moe_expert_weights import ExpertMLPsSpec, RenamedParametersSpec
"""


class TestMoEBlock(RuleTest):
    TRANSFORM = MoEBlocks

    def test_the_block_becomes_nxd_moe_and_the_unused_expert_class_goes(self) -> None:
        after = (
            MOE_IMPORTS
            + INIT_HELPER
            + "\n# routes each token to its top-k experts"
            + MOE_CLASS.format(jitter="", shared_init="", shared_forward="")
        )
        self.assertCodemod(BLOCK, after, blueprint(moe=[toy_block()]))

    def test_jitter_and_a_gated_shared_expert_are_kept(self) -> None:
        before = BLOCK.replace(
            "        self.experts =",
            "        self.shared = ToyExpert(config, trn_config)\n"
            "        self.shared_gate = nn.Linear(config.hidden_size, 1, bias=False)\n        self.experts =",
        )
        shared_init = """
        self.shared = ToyExpert(config, trn_config)
        self.shared_gate = nn.Linear(config.hidden_size, 1, bias=False)
        self.shared_gate.weight.sequence_parallel_enabled = sequence_parallel"""
        shared_forward = """
        output = output + torch.sigmoid(self.shared_gate(hidden_states)) * self.shared(hidden_states)"""
        block = toy_block(
            jitter=Expr("self.noise", "config.noise"),
            shared_expert="shared",
            shared_expert_gate="shared_gate",
        )
        expert = BLOCK[BLOCK.index("class ToyExpert") : BLOCK.index("# routes")]
        after = (
            MOE_IMPORTS
            + INIT_HELPER
            + "\n"
            + expert
            + "\n# routes each token to its top-k experts"
            + MOE_CLASS.format(
                jitter="\n            jitter_eps=config.noise,",
                shared_init=shared_init,
                shared_forward=shared_forward,
            )
        )
        self.assertCodemod(before, after, blueprint(moe=[block]))

    def test_a_block_that_routes_with_its_function_gets_a_router_that_calls_it(self) -> None:
        before = BLOCK.replace(
            "        weights, chosen = torch.topk(logits.softmax(-1), self.top_k)",
            "        weights, chosen = pick(logits, self.noise, self.training)",
        ).replace("\n\n# routes", PICK + "\n\n# routes")
        block = toy_block(
            top_k=Expr("2", "2"),
            normalize=Expr("False", "False"),
            routing="pick(router_logits, self.config.noise, self.training)",
            routing_function="pick",
        )
        moe_class = (
            MOE_CLASS.format(jitter="", shared_init="", shared_forward="")
            .replace("a softmax top-k router", "a `pick` router")
            .replace("top_k=config.top_k", "top_k=2")
            .replace("normalize_top_k_affinities=config.norm_topk_prob", "normalize_top_k_affinities=False")
        )
        router_call = moe_class[
            moe_class.index("        router = RouterTopK(") : moe_class.index("        expert_mlps")
        ]
        moe_class = moe_class.replace(
            router_call, "        router = ToyMoERouter(config, sequence_parallel, sequence_dimension)\n"
        )
        after = (
            MOE_IMPORTS.replace(
                ", MoE, RouterTopK\n",
                ", MoE\nfrom neuronx_distributed.modules.moe.routing import RouterBase\n",
            )
            + INIT_HELPER
            + PICK
            + "\n\n# routes each token to its top-k experts"
            + FUNCTION_ROUTER
            + "\n"
            + moe_class
        )
        self.assertCodemod(before, after, blueprint(moe=[block]))

    def test_packed_experts_map_their_parameters_and_their_classes_go(self) -> None:
        block = toy_block(
            router="chooser.score",
            experts="first",
            expert_class="Bank",
            gate="first.table",
            up="first.table",
            down="second.table",
            normalize=Expr("True", "True"),
            packed=PackedExperts("first.table", "second.table", True, ("Bank", "Chooser")),
        )
        after = (
            MOE_IMPORTS
            + INIT_HELPER
            + "\n# routes each token to its top-k experts"
            + MOE_CLASS.format(jitter="", shared_init="", shared_forward="")
            .replace("normalize_top_k_affinities=config.norm_topk_prob", "normalize_top_k_affinities=True")
            .replace('"router.weight"', '"chooser.score.weight"')
            .replace(
                """                    gate_proj_name="w1",
                    up_proj_name="w3",
                    down_proj_name="w2",
""",
                """                    experts_name="",
                    layout="packed_concatenated",
                    gate_up_proj_name="first.table",
                    down_proj_name="second.table",
                    transposed=True,
""",
            )
        )
        init = """

class ToyPreTrainedModel(nn.Module):
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, Bank):
            module.table.data.normal_(mean=0.0, std=self.config.initializer_range)
"""
        kept = init.replace(
            """        if isinstance(module, Bank):
            module.table.data.normal_(mean=0.0, std=self.config.initializer_range)
""",
            "",
        )
        # The packed-expert class was only initialised there: its branch goes, and then the class.
        self.assertCodemod(PACKED_BLOCK + init, after + kept, blueprint(moe=[block]))

    def test_a_refused_block_is_marked_and_kept(self) -> None:
        refusal = Refusal(
            "R029", "ToyMoE: its forward picks the experts without `topk`", HERE, "ToyMoE", ("NXS040",)
        )
        after = BLOCK.replace(
            "# routes each token to its top-k experts\n",
            "# routes each token to its top-k experts\n# TODO(R029): ToyMoE: its forward picks the experts without `topk`\n",
        )
        self.assertCodemod(BLOCK, after, blueprint(moe=[toy_block()], refusals=[refusal]), ALLOWED)

    def test_no_block_no_change(self) -> None:
        self.assertUnchanged(BLOCK + LAYER + MODEL, blueprint())


PACKED_BLOCK = """
import torch
from torch import nn


class Bank(nn.Module):
    def __init__(self, count, fan_in, fan_out):
        super().__init__()
        self.table = nn.Parameter(torch.empty(count, fan_out, fan_in))

    def forward(self, x, sizes):
        parts = x.split(sizes, dim=0)
        return torch.cat([nn.functional.linear(parts[i], self.table[i]) for i in range(len(parts))], dim=0)


class Chooser(nn.Module):
    def __init__(self, width, count, k):
        super().__init__()
        self.k = k
        self.score = nn.Linear(width, count, bias=False)


# routes each token to its top-k experts
class ToyMoE(nn.Module):
    def __init__(self, config, trn_config):
        super().__init__()
        self.chooser = Chooser(config.hidden_size, config.num_experts, config.top_k)
        self.first = Bank(config.num_experts, config.hidden_size, 2 * config.expert_size)
        self.second = Bank(config.num_experts, config.expert_size, config.hidden_size)
"""

LAYER = """

class ToyLayer(nn.Module):
    def __init__(self, config, trn_config):
        super().__init__()
        self.attn = ToyAttention(config, trn_config)
        self.moe = ToyMoE(config, trn_config)

    def forward(self, hidden_states) -> torch.Tensor:
        hidden_states, _ = self.attn(hidden_states)
        hidden_states, _ = self.moe(hidden_states)
        return hidden_states
"""

MODEL = """

class ToyModel(nn.Module):
    def forward(self, input_ids, **kwargs):
        hidden_states = self.embed_tokens(input_ids)
        for decoder_layer in self.layers:
            if self.gradient_checkpointing and self.training:
                hidden_states = checkpoint_with_kwargs(decoder_layer, hidden_states, **kwargs)
            else:
                hidden_states = decoder_layer(hidden_states, **kwargs)
        return ToyOutput(last_hidden_state=hidden_states)
"""


class TestRouterLogits(RuleTest):
    TRANSFORM = MoEBlocks
    BEFORE = "import torch\nfrom torch import nn\n" + LAYER + MODEL

    def test_the_layer_returns_its_router_logits_and_the_model_collects_them(self) -> None:
        after = """
import torch
from torch import nn


class ToyLayer(nn.Module):
    def __init__(self, config, trn_config):
        super().__init__()
        self.attn = ToyAttention(config, trn_config)
        self.moe = ToyMoE(config, trn_config)

    def forward(self, hidden_states) -> tuple[torch.Tensor, torch.Tensor]:
        hidden_states, _ = self.attn(hidden_states)
        hidden_states, router_logits = self.moe(hidden_states)
        return hidden_states, router_logits


class ToyModel(nn.Module):
    def forward(self, input_ids, output_router_logits: bool | None = None, **kwargs):
        output_router_logits = (
            output_router_logits if output_router_logits is not None else self.config.output_router_logits
        )
        hidden_states = self.embed_tokens(input_ids)
        all_router_logits = ()
        for decoder_layer in self.layers:
            if self.gradient_checkpointing and self.training:
                hidden_states, router_logits = checkpoint_with_kwargs(decoder_layer, hidden_states, **kwargs)
            else:
                hidden_states, router_logits = decoder_layer(hidden_states, **kwargs)
            if output_router_logits:
                all_router_logits += (router_logits,)
        return ToyOutput(
            last_hidden_state=hidden_states,
            router_logits=all_router_logits if output_router_logits else None,
        )
"""
        self.assertCodemod(self.BEFORE, after, blueprint(moe=[toy_block()]))

    def test_layers_that_may_hold_a_dense_mlp_return_none_logits(self) -> None:
        before = self.BEFORE.replace(
            "        hidden_states, _ = self.moe(hidden_states)\n",
            "        hidden_states = self.moe(hidden_states)\n"
            "        if isinstance(hidden_states, tuple):\n"
            "            hidden_states, _ = hidden_states\n",
        )
        layer = """
    def forward(self, hidden_states) -> tuple[torch.Tensor, torch.Tensor | None]:
        hidden_states, _ = self.attn(hidden_states)
        # The sparse layers return their router logits too (None from a dense MLP layer).
        router_logits = None
        hidden_states = self.moe(hidden_states)
        if isinstance(hidden_states, tuple):
            hidden_states, router_logits = hidden_states
        return hidden_states, router_logits
"""
        output = self._run(before, blueprint(moe=[toy_block(dense_layers=True)]))
        self.assertIn(layer.strip("\n"), output)
        self.assertIn(
            "            if output_router_logits and router_logits is not None:\n"
            "                all_router_logits += (router_logits,)\n",
            output,
        )

    def test_layers_that_return_their_logits_already_are_left_alone(self) -> None:
        self.assertUnchanged(self.BEFORE, blueprint(moe=[toy_block(logits_plumbed=True)]))

    def _run(self, before: str, plan) -> str:  # type: ignore[no-untyped-def]
        import libcst as cst
        from libcst.codemod import CodemodContext

        from scaffold.emit import format_python

        rule = MoEBlocks(CodemodContext(), plan)
        return format_python(rule.transform_module(cst.parse_module(before)).code)
