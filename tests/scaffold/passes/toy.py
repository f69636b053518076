"""Hand-written Blueprints for the rules' minimal examples, and the CodemodTest the examples run in.

A Blueprint here holds only the facts one rule reads, written out by hand for a few lines of source: the
oracle is the hand-written `after`, never the analysis. Comparisons are of code as ruff formats it, as
the generated file is (a rule may lay new code out on one line; ruff writes it as a person would).
"""

from __future__ import annotations

from collections.abc import Sequence
from textwrap import dedent

import libcst as cst
from libcst.codemod import CodemodContext, CodemodTest

from scaffold.blueprint import (
    AttentionGeometry,
    Backbone,
    Blueprint,
    CacheForwarding,
    ClassKind,
    ClassPlan,
    CodeStyle,
    Expr,
    Features,
    LayerKind,
    LayerSite,
    Location,
    MLPBlock,
    MoEBlock,
    NormScope,
    NormSite,
    Refusal,
    Role,
)
from scaffold.emit import format_python
from scaffold.rules import RuleOptions

HERE = Location("toy.py", 1)
PLAIN_STYLE = CodeStyle(optional=False, nn_alias=True)


def expr(text: str) -> Expr:
    return Expr(text, text)


def site(
    owner: str,
    attribute: str,
    role: Role,
    *,
    in_features: str = "config.hidden_size",
    out_features: str = "config.hidden_size",
    bias: str = "False",
    kind: LayerKind = LayerKind.LINEAR,
    path: str | None = None,
    conditional: bool = False,
) -> LayerSite:
    return LayerSite(
        path=path or f"{owner.lower()}.{attribute}",
        owner=owner,
        attribute=attribute,
        kind=kind,
        constructor="torch.nn.Linear" if kind is LayerKind.LINEAR else "torch.nn.Embedding",
        source=f"nn.Linear({in_features}, {out_features}, bias={bias})",
        in_features=expr(in_features),
        out_features=expr(out_features),
        bias=expr(bias),
        padding_idx=None,
        role=role,
        evidence="hand-written",
        plan_key=None,
        conditional=conditional,
        location=HERE,
    )


def klass(
    name: str, kind: ClassKind = ClassKind.MODULE, *, children: Sequence[tuple[str, str]] = ()
) -> ClassPlan:
    return ClassPlan(name, kind, (), tuple(children), (name.lower(),), HERE, config_parameter="config")


def norm(owner: str, attribute: str, norm_class: str, scope: NormScope = NormScope.HIDDEN) -> NormSite:
    return NormSite(
        f"{owner.lower()}.{attribute}",
        owner,
        attribute,
        norm_class,
        "rms",
        expr("config.hidden_size"),
        None,
        scope,
        (),
        HERE,
    )


FEATURES = Features(
    qkv_bias=None,
    o_bias=None,
    mlp_bias=None,
    qk_norm="none",
    sliding_window=None,
    attention_softcap=None,
    final_logit_softcap=None,
    attention_scaling=None,
    partial_rotary=None,
    embedding_scale=None,
    residual_scales=(),
    logits_scale=None,
    tie_word_embeddings=False,
    tied_weights_keys=(),
    explicit_head_dim=False,
    norm_kinds=(),
    activation=None,
    rotary=False,
    mlp="none",
)


def blueprint(
    *,
    classes: Sequence[ClassPlan] = (),
    sites: Sequence[LayerSite] = (),
    norms: Sequence[NormSite] = (),
    attention: Sequence[AttentionGeometry] = (),
    mlps: Sequence[MLPBlock] = (),
    moe: Sequence[MoEBlock] = (),
    refusals: Sequence[Refusal] = (),
    functions: Sequence[str] = (),
    features: Features = FEATURES,
    backbone: Backbone | None = None,
    mask_builders: Sequence[str] = (),
    style: CodeStyle = PLAIN_STYLE,
    base_model_class: str = "ToyModel",
    causal_lm_class: str = "ToyForCausalLM",
    config_class: str = "ToyConfig",
    cache: CacheForwarding | None = None,
) -> Blueprint:
    """A Blueprint holding the given facts (and empty or neutral ones elsewhere)."""
    return Blueprint(
        model_type="toy",
        transformers_version="0",
        source_file="transformers/models/toy/modeling_toy.py",
        config_class=config_class,
        base_model_class=base_model_class,
        causal_lm_class=causal_lm_class,
        tp_plan=(),
        backbone=backbone or Backbone("model", None, None, None, None, None, None),
        classes=tuple(classes),
        functions=tuple(functions),
        sites=tuple(sites),
        norms=tuple(norms),
        parameters=(),
        attention=tuple(attention),
        mlps=tuple(mlps),
        features=features,
        config_fields=(),
        refusals=tuple(refusals),
        source_package="transformers.models.toy",
        mask_builders=tuple(mask_builders),
        style=style,
        cache=cache or CacheForwarding(),
        moe=tuple(moe),
    )


class RuleTest(CodemodTest):
    """bump-pydantic's `assertCodemod(before, after)` for one rule on a hand-written snippet, comparing the
    code as ruff formats it. `assertUnchanged(code)` is the no-op case: the rule must leave it alone."""

    maxDiff = None

    def assertCodemod(self, before: str, after: str, *args: object, **kwargs: object) -> None:
        context = CodemodContext()
        rule = self.TRANSFORM(context, *args, **kwargs)  # type: ignore[call-arg]
        output = rule.transform_module(cst.parse_module(dedent(before).strip("\n") + "\n"))
        self.assertEqual(format_python(dedent(after).strip("\n") + "\n"), format_python(output.code))

    def assertUnchanged(self, code: str, *args: object, **kwargs: object) -> None:
        context = CodemodContext()
        source = dedent(code).strip("\n") + "\n"
        rule = self.TRANSFORM(context, *args, **kwargs)  # type: ignore[call-arg]
        self.assertEqual(source, rule.transform_module(cst.parse_module(source)).code)


ALLOWED = RuleOptions(allow_unsupported=True)
