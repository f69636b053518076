"""Two defects the full profile found in generated attention code, each shown fixed and shown to matter.

phi builds its per-head q/k LayerNorms only under `if config.qk_layernorm:`: replicated, while each TP rank
normalises its own heads, so their gradients must be summed over TP where the block builds them (the
`features` variant turns them on). olmo clamps q, k and v in place under `clip_qkv` (the catalogue sets it):
on the fused branch they are views of one `split`, which autograd refuses to let an in-place op modify, so
the generated code clamps out of place.

Oracle: the replicas check (every rank holds rank 0's bits after optimizer steps) and the parity check
(transformers' own model, same checkpoint). Each broken copy puts the source's form back and must FAIL
naming the cause.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from conformance.checks import RunSettings, parity, replicas
from conformance.results import Status

BrokenCopy = Callable[[str, list[tuple[str, str]]], Path]
NESTED_NORM_GRADIENT_SUM = (
    "            for parameter in (*self.q_layernorm.parameters(), *self.k_layernorm.parameters()):\n"
    "                parameter.register_hook(reduce_from_tensor_model_parallel_region)\n"
)


def test_per_head_norms_built_under_a_flag_stay_replicas(
    generated: Callable[[str], Path], broken_copy: BrokenCopy, checkpoint_cache: Path
) -> None:
    settings = RunSettings(cache_dir=checkpoint_cache)
    config = replicas.ReplicasConfig("phi/features", 2, sequence_parallel=True)
    assert NESTED_NORM_GRADIENT_SUM in generated("phi").joinpath("modeling_phi.py").read_text()
    (good,) = replicas.CHECK.run(generated("phi"), [config], settings)
    (bad,) = replicas.CHECK.run(broken_copy("phi", [(NESTED_NORM_GRADIENT_SUM, "")]), [config], settings)
    assert good.status is Status.PASS, good.reasons
    assert bad.status is Status.FAIL
    named = {reason.split(" ")[0] for reason in bad.reasons}
    assert {
        f"model.layers.0.self_attn.{norm}_layernorm.{p}" for norm in "qk" for p in ("weight", "bias")
    } <= named
    assert all("partial gradient never summed" in reason for reason in bad.reasons), bad.reasons


def test_in_place_clipping_of_fused_projections_is_out_of_place(
    generated: Callable[[str], Path], broken_copy: BrokenCopy, checkpoint_cache: Path
) -> None:
    settings = RunSettings(cache_dir=checkpoint_cache)
    config = parity.ParityConfig("olmo/mha", 1, fuse_qkv=True)
    clamp = "query_states = query_states.clamp(min=-self.config.clip_qkv, max=self.config.clip_qkv)"
    in_place = "query_states.clamp_(min=-self.config.clip_qkv, max=self.config.clip_qkv)"
    (good,) = parity.CHECK.run(generated("olmo"), [config], settings)
    (bad,) = parity.CHECK.run(broken_copy("olmo", [(clamp, in_place)]), [config], settings)
    assert good.status is Status.PASS, good.reasons
    assert good.figures["attention_layouts"] == ["fused"]
    assert bad.status is Status.FAIL
    assert any("Split is a view and is being modified inplace" in reason for reason in bad.reasons), (
        bad.reasons
    )
