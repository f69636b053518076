"""The structural rules on hand-written snippets: what each writes, and what it leaves alone."""

from __future__ import annotations

import libcst as cst

from scaffold.blueprint import AttentionGeometry, Backbone, ClassKind, LayerKind, Refusal, Role
from scaffold.pipeline import apply_rules
from scaffold.rules.absolute_imports import AbsoluteTransformersImports
from scaffold.rules.kv_cache import DropKVCache
from scaffold.rules.neuron_model_classes import NeuronModelClasses
from scaffold.rules.parallel_bias_init import ParallelBiasInit
from scaffold.rules.prune_closure import PruneToTrainingClosure
from scaffold.rules.trn_config_threading import ThreadTrnConfig, config_can_be_added
from scaffold.rules.unused_imports import RemoveUnusedImports

from .toy import ALLOWED, HERE, RuleTest, blueprint, expr, klass, site


class TestPruneToTrainingClosure(RuleTest):
    TRANSFORM = PruneToTrainingClosure

    def test_only_the_closure_stays_without_generation_and_doc_decorators(self) -> None:
        before = '''
from transformers.generation import GenerationMixin

UNUSED_TABLE = {"a": 1}
KEPT_TABLE = {"b": 2}
__all__ = ["ToyModel", "ToyForCausalLM", "ToyForSequenceClassification"]


def helper():
    return KEPT_TABLE


@auto_docstring
class ToyModel:
    _can_record_outputs = {"hidden_states": "x"}

    def forward(self):
        return helper()


class ToyForCausalLM(ToyModel, GenerationMixin):
    def prepare_inputs_for_generation(self):
        pass

    def forward(self):
        """
        >>> model.generate()
        """
        return 1


class ToyForSequenceClassification(ToyModel):
    pass
'''
        after = """
from transformers.generation import GenerationMixin

KEPT_TABLE = {"b": 2}
__all__ = ["ToyModel", "ToyForCausalLM",]


def helper():
    return KEPT_TABLE


class ToyModel:

    def forward(self):
        return helper()


class ToyForCausalLM(ToyModel):
    def forward(self):
        return 1
"""
        bp = blueprint(classes=[klass("ToyModel"), klass("ToyForCausalLM")], functions=["helper"])
        self.assertCodemod(before, after, blueprint=bp)

    def test_a_type_test_of_a_dropped_class_goes_with_the_class(self) -> None:
        before = """
class AudioNorm:
    pass


class ToyModel:
    def _init_weights(self, module):
        if isinstance(module, AudioNorm):
            module.weight.data.fill_(1.0)
        elif isinstance(module, ToyModel):
            module.scale.data.zero_()
"""
        after = """
class ToyModel:
    def _init_weights(self, module):
        if isinstance(module, ToyModel):
            module.scale.data.zero_()
"""
        self.assertCodemod(before, after, blueprint=blueprint(classes=[klass("ToyModel")]))


class TestDropKVCache(RuleTest):
    TRANSFORM = DropKVCache
    CACHED = """
from ...masking_utils import create_causal_mask


class Model:
    def forward(self, x, past_key_values=None, use_cache=None, cache_position=None, **kwargs):
        use_cache = use_cache if use_cache is not None else self.config.use_cache
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache()
        if cache_position is None:
            seen = past_key_values.get_seq_length() if past_key_values is not None else 0
            cache_position = torch.arange(seen, seen + x.shape[1])
        mask = create_causal_mask(x, cache_position=cache_position, past_key_values=past_key_values)
        x = self.layer(x, mask, past_key_values=past_key_values, use_cache=use_cache, cache_position=cache_position)
        return Output(x, past_key_values=past_key_values if use_cache else None)
"""

    def test_cache_plumbing_is_evaluated_away_and_positions_kept(self) -> None:
        after = """
from ...masking_utils import create_causal_mask


class Model:
    def forward(self, x, **kwargs):
        cache_position = torch.arange(0, x.shape[1])
        mask = create_causal_mask(x, cache_position=cache_position, past_key_values=None)
        x = self.layer(x, mask)
        return Output(x)
"""
        self.assertCodemod(self.CACHED, after, blueprint=blueprint(mask_builders=["create_causal_mask"]))

    def test_a_function_without_cache_is_left_alone(self) -> None:
        self.assertUnchanged("def f(x, cache=None):\n    return x + 1\n", blueprint=blueprint())

    def test_a_refused_function_is_marked_and_kept(self) -> None:
        refusal = Refusal(
            "R019", "Model.forward still reads past_key_values", HERE, "Model.forward", ("NXS002",)
        )
        after = self.CACHED.replace(
            "    def forward", "    # TODO(R019): Model.forward still reads past_key_values\n    def forward"
        )
        bp = blueprint(mask_builders=["create_causal_mask"], refusals=[refusal])
        self.assertCodemod(self.CACHED, after, blueprint=bp, options=ALLOWED)


class TestAbsoluteImports(RuleTest):
    TRANSFORM = AbsoluteTransformersImports

    def test_relative_imports_become_the_transformers_imports_they_meant(self) -> None:
        before = "from ...activations import ACT2FN\nfrom .configuration_toy import ToyConfig\nfrom .. import utils\n"
        after = (
            "from transformers.activations import ACT2FN\n"
            "from transformers.models.toy.configuration_toy import ToyConfig\n"
            "from transformers.models import utils\n"
        )
        self.assertCodemod(before, after, blueprint=blueprint())

    def test_absolute_imports_are_left_alone(self) -> None:
        self.assertUnchanged("import torch\nfrom torch import nn\n", blueprint=blueprint())


class TestThreadTrnConfig(RuleTest):
    TRANSFORM = ThreadTrnConfig

    def test_constructors_take_store_and_pass_on_trn_config(self) -> None:
        before = """
class ToyMLP(nn.Module):
    def __init__(self, cfg: ToyConfig):
        super().__init__()
        self.up = nn.Linear(cfg.hidden_size, cfg.intermediate_size)


class ToyLayer(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.mlp = ToyMLP(config)
        self.other = ToyMLP(cfg=config)


class ToyRotary(nn.Module):
    def __init__(self, config):
        super().__init__()
"""
        after = """
from ..config import TrainingNeuronConfig


class ToyMLP(nn.Module):
    def __init__(self, cfg: ToyConfig, trn_config: TrainingNeuronConfig):
        super().__init__()
        self.trn_config = trn_config
        self.up = nn.Linear(cfg.hidden_size, cfg.intermediate_size)


class ToyLayer(nn.Module):
    def __init__(self, config, trn_config: TrainingNeuronConfig, layer_idx):
        super().__init__()
        self.trn_config = trn_config
        self.mlp = ToyMLP(config, trn_config)
        self.other = ToyMLP(cfg=config, trn_config=trn_config)


class ToyRotary(nn.Module):
    def __init__(self, config):
        super().__init__()
"""
        mlp = klass("ToyMLP")
        bp = blueprint(
            classes=[
                mlp.__class__(**{**mlp.__dict__, "config_parameter": "cfg"}),
                klass("ToyLayer", children=[("mlp", "ToyMLP"), ("other", "ToyMLP")]),
                klass("ToyRotary", ClassKind.ROTARY),
            ],
            sites=[site("ToyMLP", "up", Role.COLUMN)],
            base_model_class="ToyLayer",
            causal_lm_class="ToyLayer",
        )
        self.assertCodemod(before, after, blueprint=bp)


class TestNeuronModelClasses(RuleTest):
    TRANSFORM = NeuronModelClasses

    def test_models_mix_in_neuron_model_mixin_and_declare_neuron_attributes(self) -> None:
        before = '''
class ToyPreTrainedModel(PreTrainedModel):
    """Doc."""

    config: ToyConfig
    _supports_sdpa = True


class ToyModel(ToyPreTrainedModel):
    pass


class ToyForCausalLM(ToyPreTrainedModel):
    _tp_plan = {"lm_head": "colwise_rep"}

    def forward(self):
        pass
'''
        after = '''
from ..modeling_utils import NeuronModelMixin


class ToyPreTrainedModel(PreTrainedModel):
    """Doc."""

    # transformers reads `config_class`; optimum-neuron's `from_pretrained` reads `config`.
    config_class = ToyConfig
    config = ToyConfig
    _supports_sdpa = False
    _supports_flash_attn = True
    _supports_flex_attn = False
    _can_compile_fullgraph = False


class ToyModel(NeuronModelMixin, ToyPreTrainedModel):
    pass


class ToyForCausalLM(NeuronModelMixin, ToyPreTrainedModel):
    _tied_weights_keys = ["lm_head.weight"]

    SUPPORTS_PIPELINE_PARALLELISM = True
    PIPELINE_TRANSFORMER_LAYER_CLS = ToyLayer
    PIPELINE_INPUT_NAMES = ["input_ids", "attention_mask", "labels"]
    PIPELINE_LEAF_MODULE_CLASSE_NAMES = ["ToyNorm"]

    def forward(self):
        pass
'''
        features = blueprint().features.__class__(
            **{**blueprint().features.__dict__, "tied_weights_keys": ("lm_head.weight",)}
        )
        bp = blueprint(
            classes=[
                klass("ToyPreTrainedModel", ClassKind.PRETRAINED),
                klass("ToyModel", ClassKind.BASE_MODEL),
                klass("ToyForCausalLM", ClassKind.CAUSAL_LM),
                klass("ToyNorm", ClassKind.NORM),
            ],
            features=features,
            backbone=Backbone("model", None, "model.layers.*", "ToyLayer", None, None, None),
        )
        self.assertCodemod(before, after, blueprint=bp)

    def test_other_classes_are_left_alone(self) -> None:
        self.assertUnchanged(
            "class ToyMLP(nn.Module):\n    pass\n", blueprint=blueprint(classes=[klass("ToyMLP")])
        )


class TestParallelBiasInit(RuleTest):
    TRANSFORM = ParallelBiasInit
    PRETRAINED = """
class ToyPreTrainedModel(PreTrainedModel):
    base_model_prefix = "model"
"""
    ZEROING = """        if isinstance(module, (ColumnParallelLinear, GQAQKVColumnParallelLinear)):
            for name, parameter in module.named_parameters(recurse=False):
                if name.startswith("bias"):
                    parameter.data.zero_()
"""
    COMMENT = """
        # transformers starts every nn.Linear bias at zero; NxD's parallel linears draw theirs as
        # nn.Linear.reset_parameters does (their weights come from `init_method`): zero them here.
"""
    IMPORTS = """
from neuronx_distributed.modules.qkv_linear import GQAQKVColumnParallelLinear
from neuronx_distributed.parallel_layers.layers import ColumnParallelLinear
"""

    def _blueprint(self, *, q_bias: str = "config.attention_bias", refusals: tuple[Refusal, ...] = ()):
        sites = [
            site("ToyAttention", "q_proj", Role.COLUMN, bias=q_bias, path="layers.*.attn.q_proj"),
            site("ToyAttention", "o_proj", Role.ROW, bias="False", path="layers.*.attn.o_proj"),
            site("ToyModel", "embed", Role.EMBEDDING, bias="False", kind=LayerKind.EMBEDDING),
        ]
        geometry = AttentionGeometry(
            "ToyAttention", "layers.*.attn", "q_proj", "k_proj", "v_proj", "o_proj", expr("config.h"),
            expr("config.kv"), expr("config.d"), None, None, None, None, None, HERE,
        )  # fmt: skip
        classes = [klass("ToyPreTrainedModel", ClassKind.PRETRAINED), klass("ToyModel", ClassKind.BASE_MODEL)]
        return blueprint(classes=classes, sites=sites, attention=[geometry], refusals=refusals)

    def test_a_pretrained_class_without_its_own_init_gets_one_that_zeroes_parallel_biases(self) -> None:
        after = (
            self.IMPORTS
            + self.PRETRAINED
            + "\n    def _init_weights(self, module):\n        super()._init_weights(module)"
            + self.COMMENT
            + self.ZEROING
        )
        self.assertCodemod(self.PRETRAINED, after, blueprint=self._blueprint())

    def test_the_sources_own_init_keeps_its_code_and_gets_the_branch_last(self) -> None:
        before = """
class ToyPreTrainedModel(PreTrainedModel):
    def _init_weights(self, layer):
        if isinstance(layer, nn.Linear):
            layer.weight.data.normal_(mean=0.0, std=self.config.initializer_range)


class ToyModel(ToyPreTrainedModel):
    def _init_weights(self, layer):
        pass
"""
        zeroing = "\n" + self.ZEROING.replace("module", "layer")
        after = before.replace(
            "std=self.config.initializer_range)\n",
            "std=self.config.initializer_range)\n\n" + self.COMMENT.lstrip("\n") + zeroing.lstrip("\n"),
        )
        self.assertCodemod(before, self.IMPORTS + after, blueprint=self._blueprint())

    def test_no_gqa_layer_where_the_attention_is_refused(self) -> None:
        refusal = Refusal("R025", "no", HERE, "ToyAttention", ("NXS021",))
        out = self.IMPORTS.replace(
            "from neuronx_distributed.modules.qkv_linear import GQAQKVColumnParallelLinear\n", ""
        )
        after = (
            out
            + self.PRETRAINED
            + "\n    def _init_weights(self, module):\n        super()._init_weights(module)"
            + self.COMMENT
            + self.ZEROING.replace(
                "(ColumnParallelLinear, GQAQKVColumnParallelLinear)", "ColumnParallelLinear"
            )
        )
        self.assertCodemod(self.PRETRAINED, after, blueprint=self._blueprint(refusals=(refusal,)))

    def test_no_linear_with_a_bias_no_change(self) -> None:
        self.assertUnchanged(self.PRETRAINED, blueprint=self._blueprint(q_bias="False"))


class TestRemoveUnusedImports(RuleTest):
    TRANSFORM = RemoveUnusedImports

    def test_imports_nothing_reads_go(self) -> None:
        before = (
            "import math\nfrom typing import Callable, Optional\nfrom torch import nn\nfrom ..config import Host\n\n"
            "def f(x: Optional[int]) -> nn.Module:\n    return x\n"
        )
        after = (
            "from typing import Optional\nfrom torch import nn\nfrom ..config import Host\n\n"
            "def f(x: Optional[int]) -> nn.Module:\n    return x\n"
        )
        self.assertCodemod(before, after, blueprint=blueprint())

    def test_used_imports_stay(self) -> None:
        self.assertUnchanged("import torch\n\nx = torch.ones(1)\n", blueprint=blueprint())

    def test_a_guard_emptied_of_its_imports_goes_with_its_predicate_in_the_pipeline(self) -> None:
        before = (
            "from transformers.utils import is_flash_attn_available, is_torch_available, logging\n\n"
            "if is_flash_attn_available():\n    from flash_attn import flash_attn_func\n\n"
            "if is_torch_available():\n    import torch\n\n"
            "logger = logging.get_logger(__name__)\n\n"
            "def f():\n    return torch.ones(1)\n"
        )
        after = (
            "from transformers.utils import is_torch_available, logging\n\n"
            "if is_torch_available():\n    import torch\n\n"
            "logger = logging.get_logger(__name__)\n\n"
            "def f():\n    return torch.ones(1)\n"
        )
        module = apply_rules(blueprint(), cst.parse_module(before), rules=[RemoveUnusedImports])
        assert module.code == after

    def test_a_guard_whose_names_nothing_reads_goes_in_the_rules_own_pass(self) -> None:
        before = (
            "from transformers.utils import is_flash_attn_available\n\n"
            "if is_flash_attn_available():\n    from flash_attn import flash_attn_func\n\n"
            "def f(x):\n    return x\n"
        )
        self.assertCodemod(before, "def f(x):\n    return x\n", blueprint=blueprint())

    def test_a_guarded_name_read_in_a_string_annotation_keeps_its_guard(self) -> None:
        before = (
            "from transformers.utils import is_torch_flex_attn_available\n\n"
            "if is_torch_flex_attn_available():\n    from torch.nn.attention.flex_attention import BlockMask\n\n"
            'def f(mask: "BlockMask"):\n    return mask\n'
        )
        self.assertUnchanged(before, blueprint=blueprint())

    def test_a_guarded_name_only_shadowed_goes_in_the_pipelines_second_pass(self) -> None:
        before = (
            "from transformers.utils import is_flash_attn_available\n\n"
            "if is_flash_attn_available():\n    from flash_attn import flash_attn_func\n\n"
            "def f(flash_attn_func):\n    return flash_attn_func\n"
        )
        module = apply_rules(blueprint(), cst.parse_module(before), rules=[RemoveUnusedImports])
        # (the blank lines left where the guard was are ruff's to format)
        assert module.code.lstrip("\n") == "def f(flash_attn_func):\n    return flash_attn_func\n"

    def test_a_guard_the_source_left_empty_on_purpose_has_an_else_and_stays(self) -> None:
        source = "if flag():\n    pass\nelse:\n    x = 1\n"
        module = apply_rules(blueprint(), cst.parse_module(source), rules=[RemoveUnusedImports])
        assert module.code == source


class TestConfigFromCallers(RuleTest):
    """R018 retired where it can be: a constructor that takes sizes instead of the config gets the config
    (and trn_config) first, from callers that hold one."""

    TRANSFORM = ThreadTrnConfig

    def test_a_constructor_without_config_takes_the_one_its_callers_hold(self) -> None:
        before = """
class ToyAttention(nn.Module):
    def __init__(self, embed_dim, num_heads, layer_idx=None):
        super().__init__()
        self.q = nn.Linear(embed_dim, embed_dim)


class ToyLayer(nn.Module):
    def __init__(self, embed_dim, num_heads):
        super().__init__()
        self.attn = ToyAttention(embed_dim, num_heads, layer_idx=0)


class ToyModel(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.layers = nn.ModuleList([ToyLayer(cfg.hidden_size, cfg.heads) for _ in range(cfg.n)])
"""
        after = """
from ..config import TrainingNeuronConfig


class ToyAttention(nn.Module):
    def __init__(self, config, trn_config: TrainingNeuronConfig, embed_dim, num_heads, layer_idx=None):
        super().__init__()
        self.trn_config = trn_config
        self.q = nn.Linear(embed_dim, embed_dim)


class ToyLayer(nn.Module):
    def __init__(self, config, trn_config: TrainingNeuronConfig, embed_dim, num_heads):
        super().__init__()
        self.trn_config = trn_config
        self.attn = ToyAttention(config, trn_config, embed_dim, num_heads, layer_idx=0)


class ToyModel(nn.Module):
    def __init__(self, cfg, trn_config: TrainingNeuronConfig):
        super().__init__()
        self.trn_config = trn_config
        self.layers = nn.ModuleList([ToyLayer(cfg, trn_config, cfg.hidden_size, cfg.heads) for _ in range(cfg.n)])
"""
        model = klass("ToyModel", children=[("layers", "ToyLayer")])
        bp = blueprint(
            classes=[
                klass("ToyAttention").__class__(
                    **{**klass("ToyAttention").__dict__, "config_parameter": None}
                ),
                klass("ToyLayer", children=[("attn", "ToyAttention")]).__class__(
                    **{
                        **klass("ToyLayer", children=[("attn", "ToyAttention")]).__dict__,
                        "config_parameter": None,
                    }
                ),
                model.__class__(**{**model.__dict__, "config_parameter": "cfg"}),
            ],
            sites=[site("ToyAttention", "q", Role.COLUMN)],
            base_model_class="ToyModel",
            causal_lm_class="ToyModel",
        )
        self.assertCodemod(before, after, blueprint=bp)

    def test_a_constructor_built_outside_a_constructor_cannot_take_the_config(self) -> None:
        module = cst.parse_module(
            "class A:\n    def __init__(self, n):\n        pass\n\n\ndef build(n):\n    return A(n)\n"
        )
        assert not config_can_be_added(module, "A", frozenset({"A"}))
