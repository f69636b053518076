"""The parallel-layer rules on hand-written snippets: what each writes, and what it leaves alone."""

from __future__ import annotations

import dataclasses

from scaffold.blueprint import Backbone, ClassKind, MLPBlock, NormScope, Refusal, Role
from scaffold.rules.fused_gate_up import FusedGateUp
from scaffold.rules.parallel_embedding import ParallelEmbeddingRule
from scaffold.rules.parallel_linears import ParallelLinears
from scaffold.rules.sequence_parallel_norms import SequenceParallelNorms

from .toy import ALLOWED, HERE, RuleTest, blueprint, expr, klass, norm, site

INIT_HELPER = '''
def _init_normal(std: float, tensor: torch.Tensor) -> torch.Tensor:
    """Fill `tensor` from N(0, std^2): the init method of every parallel layer (std = initializer_range)."""
    return nn.init.normal_(tensor, mean=0.0, std=std)
'''

MLP = """
import torch
from torch import nn
from torch.nn import Linear as Dense


class ToyMLP(nn.Module):
    def __init__(self, config, trn_config):
        super().__init__()
        self.up = Dense(config.hidden_size, config.intermediate_size, bias=False)
        self.down = torch.nn.Linear(config.intermediate_size, config.hidden_size, bias=config.mlp_bias)
        self.score = nn.Linear(config.hidden_size, 1)
"""


class TestParallelLinears(RuleTest):
    TRANSFORM = ParallelLinears
    MLP_BLUEPRINT = blueprint(
        classes=[klass("ToyMLP")],
        sites=[
            site("ToyMLP", "up", Role.COLUMN),
            site("ToyMLP", "down", Role.ROW),
            site("ToyMLP", "score", Role.REPLICATED),
        ],
    )

    def test_column_and_row_linears_by_the_blueprints_roles_whatever_the_spelling(self) -> None:
        after = f"""
import torch
from torch import nn
from torch.nn import Linear as Dense
from functools import partial
from neuronx_distributed.parallel_layers.layers import ColumnParallelLinear, RowParallelLinear

{INIT_HELPER}

class ToyMLP(nn.Module):
    def __init__(self, config, trn_config):
        super().__init__()
        init_method = partial(_init_normal, config.initializer_range)
        self.up = ColumnParallelLinear(
            config.hidden_size,
            config.intermediate_size,
            bias=False,
            gather_output=False,
            init_method=init_method,
            sequence_parallel_enabled=trn_config.sequence_parallel_enabled,
            sequence_dimension=0,
            dtype=config.dtype,
        )
        self.down = RowParallelLinear(
            config.intermediate_size,
            config.hidden_size,
            bias=config.mlp_bias,
            input_is_parallel=True,
            init_method=init_method,
            sequence_parallel_enabled=trn_config.sequence_parallel_enabled,
            sequence_dimension=0,
            dtype=config.dtype,
        )
        self.score = nn.Linear(config.hidden_size, 1)
"""
        self.assertCodemod(MLP, after, blueprint=self.MLP_BLUEPRINT)

    def test_replicated_layers_and_other_constructors_are_left_alone(self) -> None:
        source = """
from torch import nn


class ToyHead(nn.Module):
    def __init__(self, config, trn_config):
        super().__init__()
        self.score = nn.Linear(config.hidden_size, 1)
        self.conv = nn.Conv1d(4, 4, 3)
"""
        bp = blueprint(classes=[klass("ToyHead")], sites=[site("ToyHead", "score", Role.REPLICATED)])
        self.assertUnchanged(source, blueprint=bp)

    def test_a_refused_class_is_marked_not_converted(self) -> None:
        refusal = Refusal(
            "R028", "ToyMLP.up has the roles column, row at different paths", HERE, "ToyMLP", ("NXS024",)
        )
        bp = blueprint(classes=[klass("ToyMLP")], sites=self.MLP_BLUEPRINT.sites, refusals=[refusal])
        after = MLP.replace(
            "\n\nclass ToyMLP",
            "\n\n# TODO(R028): ToyMLP.up has the roles column, row at different paths\nclass ToyMLP",
        )
        self.assertCodemod(MLP, after, blueprint=bp, options=ALLOWED)


class TestParallelEmbedding(RuleTest):
    TRANSFORM = ParallelEmbeddingRule

    def test_token_embedding_keeps_its_arguments_and_gets_the_shared_ones(self) -> None:
        before = """
import torch
from torch import nn


class ToyModel(nn.Module):
    def __init__(self, config, trn_config):
        super().__init__()
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.positions = nn.Embedding(config.max_position_embeddings, config.hidden_size)
"""
        after = f"""
import torch
from torch import nn
from functools import partial
from neuronx_distributed.parallel_layers.layers import ParallelEmbedding

{INIT_HELPER}

class ToyModel(nn.Module):
    def __init__(self, config, trn_config):
        super().__init__()
        init_method = partial(_init_normal, config.initializer_range)
        self.embed = ParallelEmbedding(
            config.vocab_size,
            config.hidden_size,
            self.padding_idx,
            init_method=init_method,
            sequence_parallel_enabled=trn_config.sequence_parallel_enabled,
            dtype=config.dtype,
        )
        self.positions = nn.Embedding(config.max_position_embeddings, config.hidden_size)
"""
        bp = blueprint(
            classes=[klass("ToyModel", ClassKind.BASE_MODEL)],
            sites=[site("ToyModel", "embed", Role.EMBEDDING), site("ToyModel", "positions", Role.REPLICATED)],
        )
        self.assertCodemod(before, after, blueprint=bp)

    def test_a_scaled_lookup_subclass_derives_from_the_parallel_embedding(self) -> None:
        before = """
import torch
from torch import nn


class ScaledEmbedding(nn.Embedding):
    def __init__(self, rows: int, width: int, padding_idx: int, scale: float = 1.0):
        super().__init__(rows, width, padding_idx)
        self.register_buffer("scale", torch.tensor(scale), persistent=False)

    def forward(self, ids):
        return super().forward(ids) * self.scale.to(self.weight.dtype)


class ToyModel(nn.Module):
    def __init__(self, config, trn_config):
        super().__init__()
        self.embed = ScaledEmbedding(config.vocab_size, config.hidden_size, 0, scale=8.0)
"""
        after = f"""
import torch
from torch import nn
from functools import partial
from neuronx_distributed.parallel_layers.layers import ParallelEmbedding

{INIT_HELPER}

class ScaledEmbedding(ParallelEmbedding):
    def __init__(self, rows: int, width: int, padding_idx: int, scale: float = 1.0, **parallel_kwargs):
        super().__init__(rows, width, padding_idx, **parallel_kwargs)
        self.register_buffer("scale", torch.tensor(scale), persistent=False)

    def forward(self, ids):
        return super().forward(ids) * self.scale.to(self.weight.dtype)


class ToyModel(nn.Module):
    def __init__(self, config, trn_config):
        super().__init__()
        init_method = partial(_init_normal, config.initializer_range)
        self.embed = ScaledEmbedding(
            config.vocab_size,
            config.hidden_size,
            0,
            scale=8.0,
            init_method=init_method,
            sequence_parallel_enabled=trn_config.sequence_parallel_enabled,
            dtype=config.dtype,
        )
"""
        embedding = dataclasses.replace(
            site("ToyModel", "embed", Role.EMBEDDING), constructor="ScaledEmbedding"
        )
        bp = blueprint(
            classes=[klass("ToyModel", ClassKind.BASE_MODEL), klass("ScaledEmbedding")], sites=[embedding]
        )
        self.assertCodemod(before, after, blueprint=bp)

    def test_no_embedding_site_no_change(self) -> None:
        self.assertUnchanged(
            "class ToyModel:\n    def __init__(self, config):\n        self.embed = make()\n",
            blueprint=blueprint(),
        )


class TestFusedGateUp(RuleTest):
    TRANSFORM = FusedGateUp
    BEFORE = """
from torch import nn


class ToyMLP(nn.Module):
    def __init__(self, config, trn_config):
        super().__init__()
        self.gate = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x):
        return self.down(nn.functional.silu(self.gate(x)) * self.up(x))
"""

    def _blueprint(self, intermediate_up: str = "config.intermediate_size"):
        gate = site("ToyMLP", "gate", Role.COLUMN, out_features="config.intermediate_size", path="mlp.gate")
        up = site("ToyMLP", "up", Role.COLUMN, out_features=intermediate_up, path="mlp.up")
        block = MLPBlock("ToyMLP", "mlp", "gate", "up", "down", None, expr("config.intermediate_size"), HERE)
        return blueprint(classes=[klass("ToyMLP")], sites=[gate, up], mlps=[block])

    def test_gate_and_up_become_one_stride_2_layer_split_in_the_forward(self) -> None:
        after = f"""
from torch import nn
from functools import partial
from neuronx_distributed.parallel_layers.layers import ColumnParallelLinear
from neuronx_distributed.parallel_layers.parallel_state import get_tensor_model_parallel_size
from neuronx_distributed.parallel_layers.utils import divide
import torch

from ..transformations_utils import CustomModule, FusedLinearsSpec, ModelWeightTransformationSpecs

{INIT_HELPER}

class ToyMLP(nn.Module, CustomModule):
    def __init__(self, config, trn_config):
        super().__init__()
        init_method = partial(_init_normal, config.initializer_range)
        # The gate and up projections fused along the output features; with stride 2 each rank holds its
        # shard of both, so the local output splits into (gate, up) by the per-rank sizes.
        self.gate_up_proj = ColumnParallelLinear(
            config.hidden_size,
            2 * config.intermediate_size,
            stride=2,
            bias=False,
            gather_output=False,
            init_method=init_method,
            sequence_parallel_enabled=trn_config.sequence_parallel_enabled,
            sequence_dimension=0,
            dtype=config.dtype,
        )
        self.split_size = divide(config.intermediate_size, get_tensor_model_parallel_size())
        self.specs = ModelWeightTransformationSpecs()
        self.specs.add_spec(
            FusedLinearsSpec(
                fused_linear_name="gate_up_proj",
                linear_names=["gate", "up"],
                bias=False,
                fuse_axis="column",
                original_dims=[config.intermediate_size, config.intermediate_size],
            )
        )
        self.down = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x):
        gate, up = self.gate_up_proj(x).split(self.split_size, dim=-1)
        return self.down(nn.functional.silu(gate) * up)
"""
        self.assertCodemod(self.BEFORE, after, blueprint=self._blueprint())

    def test_unequal_halves_split_by_their_own_sizes(self) -> None:
        rule = FusedGateUp
        import libcst as cst
        from libcst.codemod import CodemodContext

        out = (
            rule(CodemodContext(), self._blueprint("config.up_size"))
            .transform_module(cst.parse_module(self.BEFORE))
            .code
        )
        assert "config.intermediate_size + config.up_size," in out
        assert (
            "[divide(size, get_tensor_model_parallel_size()) for size in (config.intermediate_size, config.up_size)]"
            in out
        )

    def test_the_split_size_takes_a_name_the_class_does_not_use(self) -> None:
        import libcst as cst
        from libcst.codemod import CodemodContext

        # an MLP with a `self.split_size` of its own (read elsewhere) keeps it
        source = self.BEFORE.replace(
            "        super().__init__()\n", "        super().__init__()\n        self.split_size = 3\n"
        ).replace("        return self.down(", "        print(self.split_size)\n        return self.down(")
        out = FusedGateUp(CodemodContext(), self._blueprint()).transform_module(cst.parse_module(source)).code
        init, forward = out.split("def forward")
        assert "        self.split_size = 3\n" in init
        assert (
            "        self.split_size_2 = divide(config.intermediate_size, get_tensor_model_parallel_size())\n"
            in init
        )
        assert "        gate, up = self.gate_up_proj(x).split(self.split_size_2, dim=-1)\n" in forward
        assert "        print(self.split_size)\n" in forward

    def test_plain_mlp_is_left_alone(self) -> None:
        block = MLPBlock("ToyMLP", "mlp", None, "up", "down", None, expr("config.intermediate_size"), HERE)
        self.assertUnchanged(self.BEFORE, blueprint=blueprint(classes=[klass("ToyMLP")], mlps=[block]))


class TestSequenceParallelNorms(RuleTest):
    TRANSFORM = SequenceParallelNorms

    def test_hidden_norms_take_and_mark_the_flag_per_head_norms_do_not(self) -> None:
        before = """
import torch
from torch import nn


class ToyNorm(nn.Module):
    def __init__(self, width, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))


class ToyLayer(nn.Module):
    def __init__(self, config, trn_config):
        super().__init__()
        self.norm = ToyNorm(config.hidden_size, eps=config.eps)
        self.q_norm = ToyNorm(config.head_dim)
        self.final = nn.LayerNorm(config.hidden_size)
"""
        after = """
import torch
from torch import nn
from neuronx_distributed.parallel_layers.layer_norm import LayerNorm


class ToyNorm(nn.Module):
    def __init__(self, width, eps=1e-6, sequence_parallel_enabled: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.weight.sequence_parallel_enabled = sequence_parallel_enabled


class ToyLayer(nn.Module):
    def __init__(self, config, trn_config):
        super().__init__()
        self.norm = ToyNorm(
            config.hidden_size,
            eps=config.eps,
            sequence_parallel_enabled=trn_config.sequence_parallel_enabled,
        )
        self.q_norm = ToyNorm(config.head_dim)
        self.final = LayerNorm(
            config.hidden_size,
            sequence_parallel_enabled=trn_config.sequence_parallel_enabled,
        )
"""
        bp = blueprint(
            classes=[
                klass("ToyNorm", ClassKind.NORM, children=[("weight", "torch.nn.Parameter")]),
                klass("ToyLayer"),
            ],
            norms=[
                norm("ToyLayer", "norm", "ToyNorm"),
                norm("ToyLayer", "q_norm", "ToyNorm", NormScope.PER_HEAD),
                norm("ToyLayer", "final", "torch.nn.LayerNorm"),
            ],
        )
        self.assertCodemod(before, after, blueprint=bp)

    def test_a_torch_norm_subclass_marks_the_parameters_its_base_creates(self) -> None:
        """A `nn.LayerNorm` subclass with its own forward (weight + 1) creates no parameter itself: after its
        base's `__init__` every parameter the base made (weight, and bias where there is one) is marked."""
        before = """
from torch import nn


class OnePlusNorm(nn.LayerNorm):
    def __init__(self, width, eps=1e-5, bias=True):
        super().__init__(width, eps, bias=bias)

    def forward(self, x):
        return nn.functional.layer_norm(x, self.normalized_shape, self.weight + 1, self.bias, self.eps)


class ToyLayer(nn.Module):
    def __init__(self, config, trn_config):
        super().__init__()
        self.norm = OnePlusNorm(config.hidden_size, eps=config.eps)
"""
        after = """
from torch import nn


class OnePlusNorm(nn.LayerNorm):
    def __init__(self, width, eps=1e-5, bias=True, sequence_parallel_enabled: bool = False):
        super().__init__(width, eps, bias=bias)
        for parameter in self.parameters(recurse=False):
            parameter.sequence_parallel_enabled = sequence_parallel_enabled

    def forward(self, x):
        return nn.functional.layer_norm(x, self.normalized_shape, self.weight + 1, self.bias, self.eps)


class ToyLayer(nn.Module):
    def __init__(self, config, trn_config):
        super().__init__()
        self.norm = OnePlusNorm(
            config.hidden_size,
            eps=config.eps,
            sequence_parallel_enabled=trn_config.sequence_parallel_enabled,
        )
"""
        norm_class = dataclasses.replace(
            klass("OnePlusNorm", ClassKind.NORM), torch_norm_base="torch.nn.LayerNorm"
        )
        bp = blueprint(
            classes=[norm_class, klass("ToyLayer")], norms=[norm("ToyLayer", "norm", "OnePlusNorm")]
        )
        self.assertCodemod(before, after, blueprint=bp)

    def test_a_norm_without_parameters_or_torch_base_is_left_alone(self) -> None:
        source = """
from torch import nn


class ScaleFreeNorm(nn.Module):
    def forward(self, x):
        return x * x.pow(2).mean(-1, keepdim=True).rsqrt()


class ToyLayer(nn.Module):
    def __init__(self, config, trn_config):
        super().__init__()
        self.norm = ScaleFreeNorm()
"""
        bp = blueprint(
            classes=[klass("ScaleFreeNorm", ClassKind.NORM), klass("ToyLayer")],
            norms=[norm("ToyLayer", "norm", "ScaleFreeNorm")],
        )
        self.assertUnchanged(source, blueprint=bp)

    def test_optional_linears_of_the_layer_loop_class_mark_their_parameters(self) -> None:
        """OPT's `project_in`/`project_out` (built when the embedding width differs from the hidden size)
        stay replicated on the sequence-sharded stream: their parameters carry the flag, so that their
        partial gradients are summed over the TP group; the `None` arm and other classes stay as written."""
        before = """
from torch import nn


class ToyDecoder(nn.Module):
    def __init__(self, config, trn_config):
        super().__init__()
        if config.embed_dim != config.hidden_size:
            self.project_in = nn.Linear(config.embed_dim, config.hidden_size, bias=False)
        else:
            self.project_in = None


class ToyAttention(nn.Module):
    def __init__(self, config, trn_config):
        super().__init__()
        if config.extra:
            self.extra = nn.Linear(config.hidden_size, config.hidden_size)
        else:
            self.extra = None
"""
        after = """
from torch import nn


class ToyDecoder(nn.Module):
    def __init__(self, config, trn_config):
        super().__init__()
        if config.embed_dim != config.hidden_size:
            self.project_in = nn.Linear(config.embed_dim, config.hidden_size, bias=False)
            for parameter in self.project_in.parameters():
                parameter.sequence_parallel_enabled = trn_config.sequence_parallel_enabled
        else:
            self.project_in = None


class ToyAttention(nn.Module):
    def __init__(self, config, trn_config):
        super().__init__()
        if config.extra:
            self.extra = nn.Linear(config.hidden_size, config.hidden_size)
        else:
            self.extra = None
"""
        decoder = dataclasses.replace(klass("ToyDecoder"), optional_linears=("project_in",))
        attention = dataclasses.replace(klass("ToyAttention"), optional_linears=("extra",))
        backbone = Backbone("model", None, "model.layers.*", None, None, None, None, stack_class="ToyDecoder")
        bp = blueprint(classes=[decoder, attention], backbone=backbone)
        self.assertCodemod(before, after, blueprint=bp)

    def test_no_hidden_norm_no_change(self) -> None:
        source = "class ToyNorm:\n    def __init__(self, width):\n        self.weight = make(width)\n"
        bp = blueprint(norms=[norm("ToyAttention", "q_norm", "ToyNorm", NormScope.PER_HEAD)])
        self.assertUnchanged(source, blueprint=bp)
