"""Deterministic transformers checkpoints for the catalogue, written locally into a cache.

A checkpoint is `AutoModelForCausalLM.from_config(config)` (fp32, eager attention) initialised under a fixed
seed, saved by transformers' own `save_pretrained` (safetensors + config.json + generation_config.json).
transformers initialises norm weights to 1 and biases to 0; a parallel model that dropped or mis-sharded
them would then still match, so every 1-D parameter that is constant after initialisation is perturbed
from a seeded generator (non-zero constants scaled by U(0.5, 1.5), zeros replaced by N(0, 0.1)).

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

from .catalogue import CATALOGUE, Variant, variant

BUILDER_VERSION = 1
DEFAULT_SEED = 0
CACHE_ENV = "NXD_SCAFFOLD_CACHE"
MANIFEST = "reference_model.json"

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


def _write(entry: Variant, seed: int, folder: Path, key: str) -> None:
    seeded_model(entry, seed).save_pretrained(folder, safe_serialization=True)
    manifest = {
        "variant": entry.key,
        "seed": seed,
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
