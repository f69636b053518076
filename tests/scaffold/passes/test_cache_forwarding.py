"""NXS002 across calls: the cache passed under another name, positionally, returned in a filtered list, or
taken by a method nothing calls. The analysis (`cache_forwarding`) is checked against hand-written facts,
the rule against hand-written code."""

from __future__ import annotations

from textwrap import dedent

import libcst as cst

from scaffold.analysis.cache_forwarding import cache_forwarding
from scaffold.blueprint import CacheCallee, CacheForwarding
from scaffold.rules.kv_cache import DropKVCache

from .toy import RuleTest, blueprint

RENAMED = """
class Attention:
    def forward(self, x, layer_past=None, cache_position=None):
        if layer_past is not None:
            x = layer_past.update(x, cache_position)
        return x


class Layer:
    def __init__(self, config):
        self.attn = Attention(config)

    def forward(self, x, layer_past=None, use_cache=False):
        return self.attn(x, layer_past=layer_past)


class Model:
    def __init__(self, config):
        self.h = nn.ModuleList([Layer(config) for _ in range(config.n)])

    def forward(self, x, past_key_values=None, use_cache=None):
        for i, block in enumerate(self.h):
            x = block(x, layer_past=past_key_values, use_cache=use_cache)
        return tuple(v for v in [x, past_key_values] if v is not None)
"""

POSITIONAL = """
class Block:
    def forward(self, x, past_key_values=None, cache_position=None, attention_mask=None, output_attentions=False):
        return x


class Model:
    def __init__(self, config):
        self.h = nn.ModuleList([Block(config) for _ in range(config.n)])

    def forward(self, x, mask, past_key_values=None, cache_position=None):
        if cache_position is None:
            cache_position = torch.arange(x.shape[1])
        for block in self.h:
            x = block(
                x,
                past_key_values if not (self.gradient_checkpointing and self.training) else None,
                cache_position,
                mask,
                output_attentions=False,
            )
        return x
"""

HELPER = """
class PreTrained:
    def _convert_cache(self, past_key_values):
        return past_key_values[0][0].shape  # uses the cache: left as is, the class drops the method

    def _used(self, past_key_values, x):
        return x


class Model(PreTrained):
    def forward(self, x, past_key_values=None):
        cache = past_key_values
        return self._used(cache, x)
"""


def test_a_cache_passed_under_another_name_reaches_the_callee_parameters_through_each_level():
    facts = cache_forwarding(cst.parse_module(dedent(RENAMED)))
    assert facts.aliases == (("Attention.forward", ("layer_past",)), ("Layer.forward", ("layer_past",)))
    assert facts.calls == (
        (
            "Layer.forward",
            "self.attn",
            CacheCallee(
                "Attention.forward", ("x", "layer_past", "cache_position"), ("layer_past", "cache_position")
            ),
        ),
        (
            "Model.forward",
            "block",
            CacheCallee("Layer.forward", ("x", "layer_past", "use_cache"), ("layer_past", "use_cache")),
        ),
    )
    assert facts.helpers == ()


def test_a_parameter_that_also_receives_something_else_is_no_alias():
    source = RENAMED.replace(
        "self.attn(x, layer_past=layer_past)",
        "self.attn(x, layer_past=layer_past) + self.attn(x, layer_past=x)",
    )
    facts = cache_forwarding(cst.parse_module(dedent(source)))
    assert facts.aliases == (("Layer.forward", ("layer_past",)),)


def test_positional_arguments_resolve_through_the_loop_over_the_module_list():
    facts = cache_forwarding(cst.parse_module(dedent(POSITIONAL)))
    assert facts.aliases == ()
    assert facts.calls == (
        (
            "Model.forward",
            "block",
            CacheCallee(
                "Block.forward",
                ("x", "past_key_values", "cache_position", "attention_mask", "output_attentions"),
                ("past_key_values", "cache_position"),
            ),
        ),
    )


def test_a_method_that_takes_the_cache_and_that_nothing_calls_is_a_helper():
    facts = cache_forwarding(cst.parse_module(dedent(HELPER)))
    assert facts.helpers == ("PreTrained._convert_cache",)
    assert [
        (caller, written, callee.function, callee.removed) for caller, written, callee in facts.calls
    ] == [("Model.forward", "self._used", "PreTrained._used", ("past_key_values",))]


class TestDropKVCacheAcrossCalls(RuleTest):
    TRANSFORM = DropKVCache

    def test_the_renamed_cache_goes_at_every_level_and_the_returned_tuple_loses_it(self) -> None:
        after = """
class Attention:
    def forward(self, x):
        return x


class Layer:
    def __init__(self, config):
        self.attn = Attention(config)

    def forward(self, x):
        return self.attn(x)


class Model:
    def __init__(self, config):
        self.h = nn.ModuleList([Layer(config) for _ in range(config.n)])

    def forward(self, x):
        for i, block in enumerate(self.h):
            x = block(x)
        return tuple(v for v in [x] if v is not None)
"""
        forwarding = CacheForwarding(
            aliases=(("Attention.forward", ("layer_past",)), ("Layer.forward", ("layer_past",))),
            calls=(
                (
                    "Layer.forward",
                    "self.attn",
                    CacheCallee(
                        "Attention.forward",
                        ("x", "layer_past", "cache_position"),
                        ("layer_past", "cache_position"),
                    ),
                ),
                (
                    "Model.forward",
                    "block",
                    CacheCallee(
                        "Layer.forward", ("x", "layer_past", "use_cache"), ("layer_past", "use_cache")
                    ),
                ),
            ),
        )
        self.assertCodemod(RENAMED, after, blueprint=blueprint(cache=forwarding))

    def test_a_condition_that_guarded_only_cache_code_goes_and_one_with_a_call_stays(self) -> None:
        before = """
def forward(self, x, use_cache=None):
    if self.gradient_checkpointing and self.training:
        if use_cache:
            use_cache = False
    if torch.jit.is_tracing():
        use_cache = False
    return x
"""
        after = """
def forward(self, x):
    if torch.jit.is_tracing():
        pass
    return x
"""
        self.assertCodemod(before, after, blueprint=blueprint())

    def test_without_the_callee_known_the_renamed_cache_is_passed_as_none(self) -> None:
        before = """
def forward(x, past_key_values=None):
    return layer(x, layer_past=past_key_values, extra=past_key_values if x else None)
"""
        after = """
def forward(x):
    return layer(x, layer_past=None, extra=None)
"""
        self.assertCodemod(before, after, blueprint=blueprint())

    def test_positional_arguments_into_removed_parameters_go_with_them(self) -> None:
        after = """
class Block:
    def forward(self, x, attention_mask=None, output_attentions=False):
        return x


class Model:
    def __init__(self, config):
        self.h = nn.ModuleList([Block(config) for _ in range(config.n)])

    def forward(self, x, mask):
        cache_position = torch.arange(x.shape[1])
        for block in self.h:
            x = block(
                x,
                mask,
                output_attentions=False,
            )
        return x
"""
        callee = CacheCallee(
            "Block.forward",
            ("x", "past_key_values", "cache_position", "attention_mask", "output_attentions"),
            ("past_key_values", "cache_position"),
        )
        forwarding = CacheForwarding(calls=(("Model.forward", "block", callee),))
        self.assertCodemod(POSITIONAL, after, blueprint=blueprint(cache=forwarding))

    def test_a_cache_only_helper_goes_and_a_local_name_for_the_cache_is_no_cache_either(self) -> None:
        after = """
class PreTrained:
    def _used(self, x):
        return x


class Model(PreTrained):
    def forward(self, x):
        return self._used(x)
"""
        forwarding = CacheForwarding(
            calls=(
                (
                    "Model.forward",
                    "self._used",
                    CacheCallee("PreTrained._used", ("past_key_values", "x"), ("past_key_values",)),
                ),
            ),
            helpers=("PreTrained._convert_cache",),
        )
        self.assertCodemod(HELPER, after, blueprint=blueprint(cache=forwarding))
