"""NXS014 mask-option-guard on hand-written snippets; the analysis half (R021) on hand-written forwards."""

from __future__ import annotations

from textwrap import dedent

import libcst as cst

from scaffold.analysis.mask_options import unguardable_mask_options
from scaffold.blueprint import ClassKind
from scaffold.rules.mask_option_guard import MaskOptionGuard

from .toy import RuleTest, blueprint, klass

BEFORE = """
def _window_overlay(window):
    return lambda b, h, q, kv: abs(q - kv) < window


def _unrelated():
    return 1


class ToyModel(ToyPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.layers = nn.ModuleList([ToyLayer(config) for _ in range(config.num_hidden_layers)])

    def forward(self, inputs_embeds, attention_mask=None):
        mask_kwargs = {"config": self.config, "input_embeds": inputs_embeds}
        sliding_kwargs = mask_kwargs.copy()
        if self.config.bidirectional:
            mask_kwargs["or_mask_function"] = lambda *args: True
            sliding_kwargs["or_mask_function"] = _window_overlay(self.config.sliding_window)
        if self.config.causal_only:
            mask_kwargs["config"] = self.config
        return create_causal_mask(**mask_kwargs), create_sliding_window_causal_mask(**sliding_kwargs)
"""

AFTER = """
def _unrelated():
    return 1


class ToyModel(ToyPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        if self.config.bidirectional:
            raise NotImplementedError(
                "config.bidirectional sets or_mask_function: the training masks are causal; train with it off"
            )
        self.layers = nn.ModuleList([ToyLayer(config) for _ in range(config.num_hidden_layers)])

    def forward(self, inputs_embeds, attention_mask=None):
        mask_kwargs = {"config": self.config, "input_embeds": inputs_embeds}
        sliding_kwargs = mask_kwargs.copy()
        if self.config.causal_only:
            mask_kwargs["config"] = self.config
        return create_causal_mask(**mask_kwargs), create_sliding_window_causal_mask(**sliding_kwargs)
"""

TOY = blueprint(classes=[klass("ToyModel", ClassKind.BASE_MODEL)])


class TestMaskOptionGuard(RuleTest):
    TRANSFORM = MaskOptionGuard

    def test_a_config_switched_mask_option_becomes_a_construction_error(self) -> None:
        # The branch goes, __init__ raises for the same condition, and the helper only it used goes too.
        self.assertCodemod(BEFORE, AFTER, blueprint=TOY)

    def test_a_model_without_mask_options_is_left_alone(self) -> None:
        self.assertUnchanged(
            AFTER.replace("        if self.config.bidirectional:\n", "        if False:\n"), blueprint=TOY
        )

    def test_only_the_base_model_is_rewritten(self) -> None:
        other = blueprint(classes=[klass("ToyModel", ClassKind.BASE_MODEL)], base_model_class="OtherModel")
        self.assertUnchanged(BEFORE.replace("\ndef _window_overlay", "\ndef _kept_overlay"), blueprint=other)


def _forward(body: str) -> cst.FunctionDef:
    module = cst.parse_module(dedent(body).lstrip())
    function = module.body[0]
    assert isinstance(function, cst.FunctionDef)
    return function


def test_options_set_outside_a_config_branch_are_found():
    forward = _forward(
        """
        def forward(self, x, bidirectional=False):
            kwargs = {"config": self.config}
            if bidirectional:
                kwargs["or_mask_function"] = lambda *a: True
            create_causal_mask(**kwargs, and_mask_function=lambda *a: True)
            other = {"or_mask_function": None}
        """
    )
    assert unguardable_mask_options(forward) == ["or_mask_function", "and_mask_function"]


def test_a_config_branch_that_only_stores_options_is_guardable():
    forward = _forward(
        """
        def forward(self, x):
            kwargs = {"config": self.config}
            if not self.config.is_causal and self.config.window > 0:
                kwargs["and_mask_function"] = lambda *a: True
            return create_causal_mask(**kwargs)
        """
    )
    assert unguardable_mask_options(forward) == []


def test_a_branch_doing_more_than_storing_options_is_not_guardable():
    forward = _forward(
        """
        def forward(self, x):
            kwargs = {"config": self.config}
            if self.config.bidirectional:
                kwargs["or_mask_function"] = lambda *a: True
                x = x + 1
            return create_causal_mask(**kwargs)
        """
    )
    assert unguardable_mask_options(forward) == ["or_mask_function"]
