"""`python -m reference_models list|build`: show the catalogue, or build checkpoints into the cache.

python -m reference_models list [--arch llama]
python -m reference_models build [llama/gqa qwen3/mha ...] [--cache DIR]
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Sequence
from typing import Any

from .builder import build, cache_root
from .catalogue import ARCHITECTURES, CATALOGUE, Variant, dropout_fields, variant, variants_for

TP_SIZES = (1, 2, 4)
_COLUMNS = (
    "variant",
    "config",
    "vocab",
    "hidden",
    "heads/kv",
    "head_dim",
    "tied",
    "attention T=1,2,4",
    "what",
)


def _attention_cell(entry: Variant) -> str:
    """Per T: the variant without fuse_qkv, and with it when that changes the choice ("sep|fused")."""
    cells = []
    for tp in TP_SIZES:
        plain, fused = entry.attention(tp, False), entry.attention(tp, True)
        if plain is None or entry.unsupported_reason(tp):
            cells.append("rejected")
        else:
            cells.append(plain if plain == fused else f"{plain}|{fused}")
    return ", ".join(cells)


def catalogue_rows(entries: Sequence[Variant]) -> list[tuple[str, ...]]:
    """One row of key facts per variant, in `_COLUMNS` order."""
    rows = []
    for entry in entries:
        facts = entry.facts()
        rows.append(
            (
                entry.key,
                facts["config_class"],
                str(facts["vocab_size"]),
                str(facts["hidden_size"]),
                f"{facts['heads']}/{facts['kv_heads']}",
                str(facts["head_dim"]),
                "yes" if facts["tied"] else "no",
                _attention_cell(entry),
                facts["summary"],
            )
        )
    return rows


def format_table(rows: Sequence[tuple[str, ...]]) -> str:
    """A plain-text table with a header line."""
    table = [_COLUMNS, *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(_COLUMNS))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in table]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


_KEEP = "\u00a0"  # joins the words of one field's change, so that lines break between fields only


def _changes(changed: dict[str, tuple[Any, Any]]) -> str:
    return "; ".join(
        f"{name} {default!r} -> {value!r}".replace(" ", _KEEP) for name, (default, value) in changed.items()
    )


def traits_lines(entries: Sequence[Variant], width: int = 110) -> list[str]:
    """Per architecture: the fields every variant sets away from the config class's default, then what each
    variant changes beyond that, then the dropout fields (kept as the config class has them)."""
    lines = ["non-default config fields (config class default -> catalogue value):"]
    by_type: dict[str, list[Variant]] = {}
    for entry in entries:
        by_type.setdefault(entry.model_type, []).append(entry)
    for model_type, found in by_type.items():
        changed = [entry.nondefault() for entry in found]
        common = {
            name: pair for name, pair in changed[0].items() if all(c.get(name) == pair for c in changed)
        }
        text = [f"{model_type} (every variant): {_changes(common) or 'none'}"]
        for entry, own in zip(found, changed):
            extra = {name: pair for name, pair in own.items() if name not in common}
            if extra:
                text.append(f"{entry.key} also: {_changes(extra)}")
        dropout = dropout_fields(model_type)
        if dropout:
            text.append(
                f"{model_type} dropout fields, kept (compared runs set them to 0): {', '.join(dropout)}"
            )
        for line in text:
            wrapped = textwrap.wrap(line, width, initial_indent="  ", subsequent_indent="      ")
            lines.extend(part.replace(_KEEP, " ") for part in wrapped)
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m reference_models", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="print the catalogue with the key facts of each variant")
    listing.add_argument(
        "--arch", help=f"only this architecture (built in: {', '.join(ARCHITECTURES)}; others are derived)"
    )
    building = commands.add_parser("build", help="build checkpoints (all, or the named variants)")
    building.add_argument("variants", nargs="*", metavar="ARCH/VARIANT", help="default: the whole catalogue")
    building.add_argument("--cache", help="cache folder (default: $NXD_SCAFFOLD_CACHE/reference-models)")
    args = parser.parse_args(argv)

    if args.command == "list":
        try:
            entries = variants_for(args.arch) if args.arch else list(CATALOGUE.values())
        except KeyError as error:
            print(f"python -m reference_models list: error: {error.args[0]}", file=sys.stderr)
            return 2
        print(format_table(catalogue_rows(entries)))
        print(
            "\nattention: 'a|b' is a without fuse_qkv, b with it; 'rejected': the vocabulary does not divide by T"
        )
        print()
        print("\n".join(traits_lines(entries)))
        return 0

    try:
        entries = [variant(key) for key in args.variants] if args.variants else list(CATALOGUE.values())
    except KeyError as error:
        print(f"python -m reference_models build: error: {error.args[0]}", file=sys.stderr)
        return 2
    print(f"cache: {cache_root(args.cache)}")
    for entry in entries:
        print(f"{entry.key}: {build(entry, args.cache)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
