"""Deterministic transformers checkpoints for the catalogue, written locally into a cache.

A checkpoint is `AutoModelForCausalLM.from_config(config)` (fp32, eager attention) initialised under a fixed
seed, saved by transformers' own `save_pretrained` (safetensors + config.json + generation_config.json).
transformers initialises norm weights to 1 and biases to 0; a parallel model that dropped or mis-sharded
them would then still match, so every 1-D parameter that is constant after initialisation is perturbed
from a seeded generator (non-zero constants scaled by U(0.5, 1.5), zeros replaced by N(0, 0.1)).

A mixture-of-experts checkpoint must have no routing near-tie on the checks' fixed batch
(`routing.MIN_ROUTER_MARGIN`): the builder tries the seeds `seed, seed + 1, ...` in order and keeps the first
whose transformers router logits clear the margin (the manifest records it as `model_seed`, and the margin
found as `router_margin`). Its padding row is drawn like the other embedding rows rather than left at
transformers' zeros: a zero hidden state ties every expert.

The folder is `<cache>/<model_type>-<variant>-<key>`, with `key` a hash of the config dict, the
transformers and torch versions, the seed and `BUILDER_VERSION`: building again returns the same folder,
and building in another cache gives byte-identical files. Builds write into a temporary folder beside the
target and rename it into place, so concurrent builders never see a half-written checkpoint.

Cache: `$NXD_SCAFFOLD_CACHE/reference-models` when that variable is set, else
`~/.cache/nxd-scaffold/reference-models`; every function also takes an explicit `cache_dir`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path

import torch
import transformers

from .catalogue import CATALOGUE, Variant, num_experts, variant
from .routing import MIN_ROUTER_MARGIN, checkpoint_margin

BUILDER_VERSION = 1
DEFAULT_SEED = 0
CACHE_ENV = "NXD_SCAFFOLD_CACHE"
MANIFEST = "reference_model.json"
MAX_ROUTING_SEEDS = 64
"""How many seeds a mixture-of-experts checkpoint may try before the builder gives up (in practice 1-3)."""

# Seeding sets torch's global generator: two threads building at once must not interleave there.
_SEEDING = threading.Lock()


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where checkpoints are kept: `cache_dir`, else `$NXD_SCAFFOLD_CACHE/reference-models`, else
    `~/.cache/nxd-scaffold/reference-models`."""
    if cache_dir is not None:
        return Path(cache_dir)
    base = os.environ.get(CACHE_ENV)
    if base:
        return Path(base) / "reference-models"
    return Path.home() / ".cache" / "nxd-scaffold" / "reference-models"


def checkpoint_key(entry: Variant, seed: int = DEFAULT_SEED) -> str:
    """Hash of everything the checkpoint's bytes depend on."""
    identity = {
        "config": entry.config().to_dict(),
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "seed": seed,
        "builder": BUILDER_VERSION,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def checkpoint_dir(
    entry: Variant, cache_dir: str | os.PathLike | None = None, seed: int = DEFAULT_SEED
) -> Path:
    """The folder `build` writes for `entry` (it may not exist yet)."""
    return cache_root(cache_dir) / f"{entry.model_type}-{entry.name}-{checkpoint_key(entry, seed)}"


def seeded_model(entry: Variant, seed: int = DEFAULT_SEED) -> transformers.PreTrainedModel:
    """The transformers causal LM of `entry`, fp32, eager attention, seeded, constants perturbed."""
    with _SEEDING, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.AutoModelForCausalLM.from_config(
            entry.config(), attn_implementation="eager", dtype=torch.float32
        )
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for _, param in model.named_parameters():
            if param.dim() != 1 or not bool((param == param[0]).all()):
                continue
            value = float(param[0])
            if value == 0.0:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
            else:
                param.mul_(torch.rand(param.shape, generator=generator) + 0.5)
    return model.eval()


def routed_model(entry: Variant, seed: int = DEFAULT_SEED) -> tuple[transformers.PreTrainedModel, int, float]:
    """`seeded_model` for the first seed from `seed` up whose router has no near-tie on the checks' fixed
    batch: (model, the seed used, its router margin). Dense models: the seed itself, margin inf."""
    config = entry.config()
    if num_experts(config) is None:
        return seeded_model(entry, seed), seed, float("inf")
    margins = []
    for candidate in range(seed, seed + MAX_ROUTING_SEEDS):
        model = seeded_model(entry, candidate)
        _draw_zero_embedding_rows(model, candidate)
        margin = checkpoint_margin(model, config)
        if margin >= MIN_ROUTER_MARGIN:
            return model, candidate, margin
        margins.append(margin)
    raise RuntimeError(
        f"{entry.key}: no seed in {seed}..{seed + MAX_ROUTING_SEEDS - 1} gives router margins of at least "
        f"{MIN_ROUTER_MARGIN:g} on the fixed batch (best {max(margins):.3g}): change the catalogue's MoE sizes"
    )


def _draw_zero_embedding_rows(model: transformers.PreTrainedModel, seed: int) -> None:
    """Draw the token embedding's all-zero rows (transformers zeroes the padding row at init) like the
    others: a padding token whose hidden state is zero gives every expert the same router logit, a tie no
    margin can remove (its expert outputs are zero too, but which experts it counts for is arbitrary)."""
    weight = model.get_input_embeddings().weight
    zero = (weight == 0).all(dim=1)
    if not bool(zero.any()):
        return
    generator = torch.Generator().manual_seed(seed + 2)
    with torch.no_grad():
        scale = float(weight[~zero].std())
        weight[zero] = (torch.randn((int(zero.sum()), weight.shape[1]), generator=generator) * scale).to(
            weight.dtype
        )


def _write(entry: Variant, seed: int, folder: Path, key: str) -> None:
    model, model_seed, margin = routed_model(entry, seed)
    model.save_pretrained(folder, safe_serialization=True)
    manifest = {
        "variant": entry.key,
        "seed": seed,
        "model_seed": model_seed,
        "router_margin": margin if margin != float("inf") else None,
        "key": key,
        "builder_version": BUILDER_VERSION,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "facts": entry.facts(),
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def build(entry: Variant | str, cache_dir: str | os.PathLike | None = None, seed: int = DEFAULT_SEED) -> Path:
    """The checkpoint folder of `entry` (a `Variant` or its `<model_type>/<name>`), built if not cached."""
    if isinstance(entry, str):
        entry = variant(entry)
    key = checkpoint_key(entry, seed)
    final = cache_root(cache_dir) / f"{entry.model_type}-{entry.name}-{key}"
    if (final / MANIFEST).is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        _write(entry, seed, staging, key)
        try:
            os.rename(staging, final)
        except OSError:
            # Another builder renamed its copy first: theirs is complete and identical.
            if not (final / MANIFEST).is_file():
                raise RuntimeError(
                    f"{final} exists but holds no {MANIFEST}: it is not a finished reference checkpoint. "
                    "Delete that folder and build again."
                ) from None
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return final


def build_all(
    keys: Iterable[str] | None = None, cache_dir: str | os.PathLike | None = None, seed: int = DEFAULT_SEED
) -> dict[str, Path]:
    """Build the named variants (default: the whole catalogue); `{key: folder}` in the given order."""
    return {key: build(key, cache_dir, seed) for key in (CATALOGUE if keys is None else keys)}
