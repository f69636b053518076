"""A valid value, other than the config class's default, for every scalar config field a model reads.

A generated model that hard-codes a constant (an eps, a rope theta, an activation, a scale) matches
transformers whenever the config holds that constant's value, and a tiny config that keeps the defaults holds
exactly those. So the catalogue changes every scalar field the model reads (`config_reads.fields_read`),
deciding by the field's name and type, never by architecture. Each rule lists candidates; the first that is
not the default and that the config class accepts (it builds, and holds the value) is taken:

| rule | fields (by name and type) | candidates | seen in |
|---|---|---|---|
| norm eps | `*eps`, `*epsilon` | 3e-5, 7e-6: unlike any released model's | logits |
| rope theta | `*theta`, `*base_freq` | 1234.0, 4321.0 | logits |
| rope scaling | `rope_scaling` left None | YaRN factor 2 over half the context (it rescales the frequencies and cos/sin), else linear factor 2 | logits |
| activation | a string naming an `ACT2FN` entry | `gelu_pytorch_tanh`, `silu`: the first that differs numerically | logits |
| scale | floats named `*multiplier`, `*scale`, `*scaling`, `*scalar` | 2.0, 0.5, 4.0: never 1 | logits |
| attention scalar | ints named `*scalar` (scores are scaled by its inverse root) | 24, 25...: no head size of the catalogue | logits |
| partial rotary | `partial_rotary_factor` | 0.75, 0.5, 1.0: rotary dims even at every head size | logits |
| softcap | `*softcap*` | 1.0 on attention scores, 10.0 on final logits: they bite at tiny sizes | logits |
| clipping | `clip_*` | 0.5, 1.0: it bites on the tails of q/k/v | logits |
| sliding window | `sliding_window` | 5, 7: shorter than the checks' sequences | logits |
| init range | `initializer_range`, `init_std` | 0.04, 0.03 | initialisation |
| token ids | `*_token_id` (int or None) | distinct ids from 3 up, never 0 (NxD drops padding index 0: NXD-05) | the padding row |
| cache | `use_cache` | the other boolean | nothing in training |
| loss coefficient | floats named `*_coef`, `*_coefficient` (`router_aux_loss_coef`) | 0.02, 0.05: the auxiliary loss shows in the loss | the loss |
| sparse layer step | ints named `*sparse_step` (`decoder_sparse_step`) | 2: with 2 layers one dense MLP and one sparse block | the layers built |
| window layers | `max_window_layers` | 1: acts only where a sliding window is on | nothing unless a window bites |

Mixture-of-experts configs (a config class taking `num_experts_per_tok`) take their activation from
`MOE_ACTIVATIONS`: NxD's `ExpertMLPs` accepts only the activations of its own table (gelu, relu, silu...),
so `gelu_pytorch_tanh` would build a config no NxD MoE model can train.

Kept at their defaults, with the reason recorded: dropout fields (compared runs switch dropout off; the
check that dropout is live needs them as the config has them), router jitter (`*jitter*`: training noise,
which NxD's and the checks' runs keep off, and phimoe's `router_jitter_noise` is a routing threshold that
no NxD router has), other booleans (architecture options: the
catalogue's `features` variant flips them), fields that are not scalars, and a read field no rule covers
(the catalogue tests require there to be none for the architectures that scaffold today).

Only the fields "seen in logits" can make a forward comparison fail; the catalogue tests check, for each
such field of each built-in architecture, that putting the default back moves transformers' logits by
more than the parity tolerance.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from transformers.activations import ACT2FN

SLIDING_WINDOW = 5
FIRST_TOKEN_ID = 3
ACTIVATIONS = ("gelu_pytorch_tanh", "silu")
MOE_ACTIVATIONS = ("gelu", "silu")
"""Candidates for MoE configs: activations NxD's `ExpertMLPs` table holds (`modules/moe/model_utils.py`)."""
# An activation counts as different when it moves some input in [-4, 4] by more than this.
_ACTIVATION_GAP = 0.05

LOGITS = "logits"
INITIALISATION = "initialisation"
PADDING_ROW = "the padding row"
LOSS = "the loss"
STRUCTURE = "the layers built"
NOTHING = "nothing in training"
NO_RULE = "no rule for this field: kept"
LEARNABLE_ACTIVATION_KEPT = (
    "activation with parameters: kept (another activation would drop or rename its parameters, which the "
    "model must sum over TP)"
)
JITTER_KEPT = "jitter: kept (training noise the compared runs keep off; no NxD router has phimoe's threshold)"


@dataclass(frozen=True)
class FieldChoice:
    """What the catalogue does with one config field the model reads."""

    name: str
    default: Any
    """The config class's `__init__` default."""
    value: Any
    """What the catalogue passes (equal to `default` when kept)."""
    rule: str
    """Why: the rule that chose the value, or why the default is kept."""
    seen_in: str = ""
    """Where a changed value shows: `LOGITS`, `INITIALISATION`, `PADDING_ROW`, `NOTHING` ("" when kept)."""

    @property
    def changed(self) -> bool:
        return self.value != self.default


@dataclass(frozen=True)
class Sizes:
    """What the catalogue's sizes allow: head sizes across variants, the smallest vocabulary, the context."""

    head_dims: tuple[int, ...]
    min_vocab_size: int
    max_position_embeddings: int
    activations: tuple[str, ...] = ACTIVATIONS
    """The activations to try, in order (`MOE_ACTIVATIONS` for mixture-of-experts configs)."""


Accepts = Callable[[str, Any], bool]
"""(field, value) -> whether the config class builds with that value and holds it."""


def is_dropout_field(name: str) -> bool:
    """`attention_dropout`, `resid_pdrop`, `classifier_dropout`...: probabilities of dropping activations."""
    return "dropout" in name or name.endswith("pdrop")


def choose(
    defaults: Mapping[str, Any], built: Mapping[str, Any], sizes: Sizes, accepts: Accepts
) -> tuple[FieldChoice, ...]:
    """A `FieldChoice` for each field of `defaults` (the config class's defaults of the fields the model
    reads), in name order. `built` holds what a default-built config holds for each (it tells a None default
    that becomes a list from a scalar one). Token ids are handed out in name order so that they differ."""
    taken_ids: set[int] = set()
    choices = []
    for name in sorted(defaults):
        default = defaults[name]
        if name.endswith("_token_id") and (default is None or _is_int(default)):
            value = next(
                i for i in range(FIRST_TOKEN_ID, sizes.min_vocab_size) if i not in taken_ids | {default}
            )
            taken_ids.add(value)
            rule = "token id: inside the vocabulary, not 0, distinct"
            choices.append(FieldChoice(name, default, value, rule, PADDING_ROW if "pad" in name else NOTHING))
            continue
        choices.append(_choice(name, default, built.get(name, default), sizes, accepts))
    return tuple(choices)


@functools.cache
def _learnable_activation(name: str) -> bool:
    """Whether the `ACT2FN` entry `name` builds a module with parameters (xIELU's alpha_p and alpha_n)."""
    return any(True for _ in ACT2FN[name].parameters())


def _choice(name: str, default: Any, built: Any, sizes: Sizes, accepts: Accepts) -> FieldChoice:
    if isinstance(default, str) and default in ACT2FN and _learnable_activation(default):
        return FieldChoice(name, default, default, LEARNABLE_ACTIVATION_KEPT)
    if is_dropout_field(name):
        return FieldChoice(name, default, default, "dropout: kept (compared runs switch it off)")
    if "jitter" in name and (default is None or _is_real(default)):
        return FieldChoice(name, default, default, JITTER_KEPT)
    for rule in _RULES:
        if not rule.applies(name, default):
            continue
        for value in rule.candidates(name, default, sizes):
            if value != default and accepts(name, value):
                return FieldChoice(name, default, value, rule.name, rule.seen_in)
        return FieldChoice(
            name, default, default, f"{rule.name}: the config class accepts no candidate, kept"
        )
    if isinstance(default, bool):
        return FieldChoice(name, default, default, "option: kept here (the `features` variant flips options)")
    if not all(value is None or isinstance(value, int | float | str) for value in (default, built)):
        return FieldChoice(name, default, default, "not a scalar: kept")
    return FieldChoice(name, default, default, NO_RULE)


@dataclass(frozen=True)
class _Rule:
    name: str
    applies: Callable[[str, Any], bool]
    """(field name, default) -> whether the rule covers the field."""
    candidates: Callable[[str, Any, Sizes], Iterator[Any]]
    """(field name, default, sizes) -> values to try, in order."""
    seen_in: str = LOGITS


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _fixed(*values: Any) -> Callable[[str, Any, Sizes], Iterator[Any]]:
    return lambda name, default, sizes: iter(values)


def _activations(name: str, default: str, sizes: Sizes) -> Iterator[str]:
    points = torch.linspace(-4.0, 4.0, 161, device="cpu")
    reference = ACT2FN[default](points)
    for candidate in sizes.activations:
        if float((ACT2FN[candidate](points) - reference).abs().max()) > _ACTIVATION_GAP:
            yield candidate


def _partial_rotary(name: str, default: Any, sizes: Sizes) -> Iterator[float]:
    for factor in (0.75, 0.5, 1.0):
        dims = [int(head_dim * factor) for head_dim in sizes.head_dims]
        if all(dim > 0 and dim % 2 == 0 for dim in dims):
            yield factor


def _rope_scalings(name: str, default: Any, sizes: Sizes) -> Iterator[dict[str, Any]]:
    if default is not None:
        return  # the architecture brings its own scaling: keep it
    factor = 2.0
    original = int(sizes.max_position_embeddings / factor)
    yield {"rope_type": "yarn", "factor": factor, "original_max_position_embeddings": original}
    # Older config classes validate the legacy form themselves (olmo: `type` in linear/dynamic, two keys).
    yield {"type": "linear", "factor": factor}


def _softcaps(name: str, default: Any, sizes: Sizes) -> Iterator[float]:
    # Attention scores of the tiny models are ~0.1 and their logits ~1: caps this low change the result
    # measurably, while the final logits can still reach the margin that overfitting needs (> ~3 at V=256).
    cap = 1.0 if "attn" in name or "attention" in name else 10.0
    yield from (cap, 2 * cap)


def _attention_scalars(name: str, default: Any, sizes: Sizes) -> Iterator[int]:
    yield from (n for n in range(24, 1024) if n not in sizes.head_dims)


def _is_scale(name: str) -> bool:
    return name.endswith(("multiplier", "scale", "scaling", "scalar")) and name != "rope_scaling"


_RULES: tuple[_Rule, ...] = (
    _Rule("norm eps", lambda n, d: n.endswith(("eps", "epsilon")) and _is_real(d), _fixed(3e-5, 7e-6)),
    _Rule(
        "rope theta", lambda n, d: n.endswith(("theta", "base_freq")) and _is_real(d), _fixed(1234.0, 4321.0)
    ),
    _Rule("rope scaling", lambda n, d: n == "rope_scaling", _rope_scalings),
    _Rule("activation: another ACT2FN entry", lambda n, d: isinstance(d, str) and d in ACT2FN, _activations),
    _Rule(
        "partial rotary factor: rotary dims stay even",
        lambda n, d: n == "partial_rotary_factor" and (d is None or _is_real(d)),
        _partial_rotary,
    ),
    _Rule(
        "softcap: bites at tiny sizes", lambda n, d: "softcap" in n and (d is None or _is_real(d)), _softcaps
    ),
    _Rule(
        "attention scalar: equal to no head size",
        lambda n, d: n.endswith("scalar") and _is_int(d),
        _attention_scalars,
    ),
    _Rule("scale: never 1", lambda n, d: _is_scale(n) and isinstance(d, float), _fixed(2.0, 0.5, 4.0)),
    _Rule(
        "clipping: bites on the tails",
        lambda n, d: n.startswith("clip_") and (d is None or _is_real(d)),
        _fixed(0.5, 1.0),
    ),
    _Rule(
        "sliding window: shorter than the checks' sequences",
        lambda n, d: n == "sliding_window" and (d is None or _is_int(d)),
        _fixed(SLIDING_WINDOW, SLIDING_WINDOW + 2),
    ),
    _Rule(
        "init range",
        lambda n, d: n in ("initializer_range", "init_std") and _is_real(d),
        _fixed(0.04, 0.03),
        INITIALISATION,
    ),
    _Rule("cache: off", lambda n, d: n == "use_cache" and isinstance(d, bool), _fixed(False, True), NOTHING),
    _Rule(
        "loss coefficient: the auxiliary loss shows in the loss",
        lambda n, d: n.endswith(("_coef", "_coefficient")) and isinstance(d, float),
        _fixed(0.02, 0.05),
        LOSS,
    ),
    _Rule(
        "sparse layer step: a dense and a sparse layer",
        lambda n, d: n.endswith("sparse_step") and _is_int(d),
        _fixed(2, 3),
        STRUCTURE,
    ),
    _Rule(
        "window layers: acts only where a sliding window bites",
        lambda n, d: n == "max_window_layers" and _is_int(d),
        _fixed(1, 0),
        NOTHING,
    ),
)
